"""
Micro-benchmark of the pure sans-IO SMTP core, without sockets, Twisted or disk.

Usage (from the repository root)::

    .venv/bin/python bench/core.py [--conversations 2000] [--runs 3] [--profile]

Three cases, each driven the way the glue drives the core (C{mdtwist/smtp/server.py} and
C{mdtwist/smtp/client.py}):

 - C{server-helo}: a L{ServerCore} through one smtp-source conversation per iteration: the
   greeting, C{HELO}, C{MAIL FROM}, C{RCPT TO}, C{DATA}, a 1 KiB message of 20 lines with the
   end marker, C{QUIT}. Each command line is fed as it would arrive (one C{receive_data} per
   line, since smtp-source waits for every reply); the message and its end marker arrive in
   one piece. Every event is answered at once with the reply the glue would send.
 - C{server-ehlo}: the same with C{EHLO} and C{MAIL FROM:<...> SIZE=...} (a multi-line EHLO
   reply is built every time).
 - C{client}: a L{ClientCore} through one session per iteration against canned replies of a
   PIPELINING server (smtp-sink): greeting, EHLO, C{MAIL}/C{RCPT}/C{DATA} in one write and
   their three replies in one read, the message, the final reply, C{QUIT}.

Printed: conversations per second and microseconds per conversation, for every run and the
median. Numbers are printed, never asserted. C{--profile} runs each case once more under
cProfile and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mdtwist.envelope import Recipient
from mdtwist.smtp.core.client import (
    ClientCore,
    ClientSettings,
    ClientState,
    Idle,
    SessionEnded,
    Transaction,
    TransactionDone,
)
from mdtwist.smtp.core.events import (
    MailFrom,
    MessageReceived,
    Quit,
    RcptTo,
    Sentinel,
)
from mdtwist.smtp.core.replies import Reply, reply
from mdtwist.smtp.core.server import ServerCore, ServerSettings, SessionState

# -- what the peers say --

#: 20 lines, 1 KiB with their CRLFs, like smtp-source -l 1024.
BODY = b"".join(
    [
        b"From: <sender@client.test>\r\n",
        b"To: <rcpt@example.test>\r\n",
        b"Subject: benchmark message\r\n",
        b"\r\n",
        *[(b"%02d " % n) + b"x" * 54 + b"\r\n" for n in range(15)],
        b"end of the message body, padded to 1 KiB with its CRLF" + b"." * 3 + b"\r\n",
    ]
)

HELO_LINES = [b"HELO client.test\r\n"]
EHLO_LINES = [b"EHLO client.test\r\n"]
MAIL_LINE = b"MAIL FROM:<sender@client.test>\r\n"
MAIL_SIZE_LINE = b"MAIL FROM:<sender@client.test> SIZE=%d\r\n" % len(BODY)
RCPT_LINE = b"RCPT TO:<rcpt@example.test>\r\n"

# The replies the inbound glue sends (mdtwist/smtp/policy.py, decision.py and server.py).
SENDER_OK = Reply(250, "2.1.0", ("Sender ok",))
RECIPIENT_OK = Reply(250, "2.1.5", ("Recipient ok",))
BYE = reply(221, "2.0.0", "Bye")

# What smtp-sink says to the client role.
SINK_GREETING = b"220 sink.test ESMTP\r\n"
SINK_EHLO = (
    b"250-sink.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n"
)
SINK_PIPELINED = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
SINK_QUEUED = b"250 2.0.0 Ok: queued as 1234\r\n"
SINK_BYE = b"221 2.0.0 Bye\r\n"


# -- the server role --


def _answer(event: object, serial: int) -> Reply:
    if isinstance(event, MailFrom):
        return SENDER_OK
    if isinstance(event, RcptTo):
        return RECIPIENT_OK
    if isinstance(event, MessageReceived):
        return reply(250, "2.0.0", f"Ok: queued as {serial:012X}")
    assert isinstance(event, Quit), event
    return BYE


def _server_process(core: ServerCore, serial: int, out: list[bytes]) -> bool:
    """
    Run the glue's event loop once (C{SMTPServerProtocol._process} with instant answers).

    @return: whether the session closed.
    """
    while True:
        event = core.next_event()
        out.append(core.data_to_send())
        if event is Sentinel.CLOSE:
            return True
        if event is Sentinel.NEED_DATA or event is Sentinel.PAUSED:
            break
        core.send(_answer(event, serial))
        out.append(core.data_to_send())
    # The glue's flow control and timeout scheduling read these after every call.
    _ = core.buffered
    _ = core.state is SessionState.CLOSED or core.state is SessionState.DATA
    return False


def server_conversations(count: int, *, extended: bool) -> int:
    """
    Drive C{count} inbound conversations.

    @return: the number of bytes the server wrote (checked, so the work is not optimised out).
    """
    settings = ServerSettings("mx.example.test")
    hello = EHLO_LINES if extended else HELO_LINES
    mail = MAIL_SIZE_LINE if extended else MAIL_LINE
    pieces = [*hello, mail, RCPT_LINE, b"DATA\r\n", BODY + b".\r\n", b"QUIT\r\n"]
    written = 0
    for serial in range(count):
        core = ServerCore(settings)
        out: list[bytes] = []
        core.start()
        closed = _server_process(core, serial, out)
        for piece in pieces:
            core.receive_data(piece)
            closed = _server_process(core, serial, out)
        if not closed:
            raise RuntimeError("the server session did not close")
        written += sum(len(chunk) for chunk in out)
    return written


# -- the client role --


def _client_process(core: ClientCore, out: list[bytes]) -> None:
    """Run the glue's event loop once (C{SMTPClientProtocol._process})."""
    while True:
        event = core.next_event()
        out.append(core.data_to_send())
        if not isinstance(event, Sentinel):
            if isinstance(event, Idle):
                core.quit()
            elif isinstance(event, TransactionDone | SessionEnded):
                out.append(b"")
            continue
        if core.sending_body:
            while core.sending_body:
                out.append(core.body_to_send(65536))
            continue
        break
    # The glue's timeout scheduling reads these after every call.
    if core.state is not ClientState.CLOSED and not core.sending_body:
        _ = core.waiting_for


def client_conversations(count: int) -> int:
    """
    Drive C{count} outbound sessions of one pipelined transaction each.

    @return: the number of bytes the client wrote.
    """
    settings = ClientSettings("client.test")
    transaction = Transaction("sender@client.test", (Recipient("rcpt@example.test"),), BODY)
    replies = [SINK_GREETING, SINK_EHLO, SINK_PIPELINED, SINK_QUEUED, SINK_BYE]
    written = 0
    for _ in range(count):
        core = ClientCore(settings)
        out: list[bytes] = []
        core.add_transaction(transaction)
        _client_process(core, out)
        for data in replies:
            core.receive_data(data)
            _client_process(core, out)
        if core.state is not ClientState.CLOSED:
            raise RuntimeError("the client session did not close")
        written += sum(len(chunk) for chunk in out)
    return written


# -- running --

CASES: dict[str, Callable[[int], int]] = {
    "server-helo": lambda n: server_conversations(n, extended=False),
    "server-ehlo": lambda n: server_conversations(n, extended=True),
    "client": client_conversations,
}


def run_case(run: Callable[[int], int], count: int) -> float:
    """
    Time one run.

    @return: seconds.
    """
    start = time.perf_counter()
    run(count)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark and print the numbers.

    @param argv: the command line arguments.
    @return: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=2000, help="per run and case")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile top 25")
    args = parser.parse_args(argv)
    cases = args.case or list(CASES)
    print(f"Python {sys.version.split()[0]}, {args.conversations} conversations per run")
    print(f"{'case':<12} {'conv/s per run':<30} {'median conv/s':>14} {'median us/conv':>15}")
    for name in cases:
        run = CASES[name]
        run(min(200, args.conversations))  # warm up
        seconds = [run_case(run, args.conversations) for _ in range(args.runs)]
        rates = [args.conversations / s for s in seconds]
        median = statistics.median(seconds)
        per_run = "/".join(f"{r:.0f}" for r in rates)
        print(
            f"{name:<12} {per_run:<30} {args.conversations / median:>14.0f}"
            f" {median / args.conversations * 1e6:>15.1f}"
        )
    if args.profile:
        for name in cases:
            print(f"\n== {name}: cProfile, {args.conversations} conversations, by own time")
            profiler = cProfile.Profile()
            profiler.runcall(CASES[name], args.conversations)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
