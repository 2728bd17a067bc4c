# -*- test-case-name: tests.test_logging -*-
"""
Log output choices: text (twistd's default format, or our cheaper observer of the same lines) or
JSON, one object per line.

For text, written by L{text_observer} (what C{make run} uses)::

    twistd --logger mdtwist.logging.text_observer -n mdtwist --config etc/mdtwist.toml

For JSON::

    twistd --logger mdtwist.logging.json_observer -n mdtwist --config etc/mdtwist.toml

Event fields use a fixed vocabulary: C{session}, C{peer}, C{listener}, C{helo}, C{tls}, C{user},
C{mail_from}, C{rcpt}, C{code}, C{enhanced}, C{queue_id}, C{msg_size}, C{mx}, C{attempt},
C{dn}, C{elapsed_ms}, C{status}, C{detail}; the mail log (L{mdtwist.maillog}, whose lines
C{docs/mail-log.md} lists) adds C{client}, C{client_name}, C{tls_version}, C{tls_cipher},
C{command}, C{reason}, C{nrcpt}, C{message_id}, C{mailbox}, C{relay}, C{relay_address},
C{delay}, C{next_attempt}. Passwords, SASL payloads and message bodies never
appear in any field. A value the client chose (a login, an EHLO name, an address) goes into a
field through L{escape_text}, so that no CR, LF or other control character of the client's can
start a forged line or hide text in the log.

Theory of operation of L{TextObserver}: it writes exactly the lines of Twisted's
C{textFileLogObserver} (C{formatEventAsClassicLogText}), but takes two shortcuts for the common
event. The timestamp has a resolution of one second, so the text of the last second is kept and
reused. An event whose C{log_format} only names fields (C{"{queue_id} to {rcpt}"}: no
conversion, format spec, attribute, index or call) is formatted by C{str.format_map} on the event,
which gives the same text as Twisted's formatter for such a format; whether a format qualifies is
decided once per format string. Everything else (failures, flattened events, other format
syntax, missing fields, values that fail to format) goes through Twisted's own formatter.

With C{server.processes} above 1 the child processes log to the same output as the first. Each
child has its shard number in the environment (L{SHARD_VARIABLE}, set by the first process),
and both observers mark its events with it: text lines as C{[shard-2 namespace#info]}, JSON
events with a C{shard} field. The first process's lines are unchanged.

Both observers leave out Twisted's chatter about the short-lived UDP ports of DNS and Minger
queries (C{DNSDatagramProtocol starting on 40123}, C{(UDP Port 40123 Closed)}: two lines per
query that say nothing to an administrator) and AMP's "connection established" and
"connection lost" for every control connection (each C{mdtwistctl} command); see
L{is_chatter}. The mail log of a message is in L{mdtwist.maillog}.
"""

from __future__ import annotations

import atexit
import os
import re
import string
import sys
from collections.abc import Sequence
from typing import Any, TextIO, TypeVar, cast

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)
from zope.interface import implementer

#: How many format strings L{TextObserver} remembers a verdict for; when full it starts afresh.
_PLANS_MAX = 1024

#: Fractions of a second from which C{datetime} may round a timestamp up to the next second
#: (it rounds to microseconds); such timestamps are formatted without the cache.
_ROUNDING_EDGE = 0.999999

#: Timestamps from here on are formatted without the cache (C{int()} of a float stays exact).
_TIME_MAX = float(2**52)

_parse = string.Formatter().parse

#: C0 controls, DEL and C1 controls, each mapped to its C{\xNN} escape (L{escape_text}).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}

#: The environment variable in which a child process finds its spool shard (internal).
SHARD_VARIABLE = "MDTWIST_SHARD"

#: The text of the legacy lines L{is_chatter} recognises: Twisted's UDP port opened and
#: closed for each DNS query (C{DNSDatagramProtocol}) or Minger lookup (C{_Exchange}).
_CHATTER = re.compile(r"(?:DNSDatagramProtocol|_Exchange) starting on \d+|\(UDP Port \d+ Closed\)")


#: The formats of the events L{is_chatter} may leave out, and the namespace each comes from.
CHATTER_FORMATS = {
    "{log_text}": "log_legacy",
    "{cls} connection established (HOST:{host} PEER:{peer})": "twisted.protocols.amp",
    "{cls} connection lost (HOST:{host} PEER:{peer})": "twisted.protocols.amp",
}


def is_chatter(event: LogEvent) -> bool:
    """
    Whether an event is library chatter the observers leave out: Twisted's unconditional
    lines about the UDP port each DNS query or Minger lookup opens and closes, and AMP's
    line for each connection made and lost (the control channel's).

    @param event: the event.
    @return: C{True} for such a line.
    """
    log_format = event.get("log_format")
    namespace = CHATTER_FORMATS.get(log_format) if isinstance(log_format, str) else None
    if namespace is None or event.get("log_namespace") != namespace:
        return False
    if namespace != "log_legacy":
        return True
    text = event.get("log_text")
    return isinstance(text, str) and _CHATTER.fullmatch(text) is not None


def escape_text(value: str) -> str:
    r"""
    Make client-supplied text safe for a log line: C0 and C1 control characters and DEL
    become C{\xNN}; everything else is left as it is.

    @param value: the text, as the client sent it.
    @return: the text with every control character escaped.
    """
    return value.translate(_CONTROLS)


_F = TypeVar("_F", bound="Factory[Any]")


def quiet(factory: _F) -> _F:
    """
    Make a factory quiet: no "Starting factory" and "Stopping factory" lines, which Twisted
    writes for every outbound connection a plain factory makes.

    @param factory: the factory, such as C{Factory.forProtocol(...)}.
    @return: the same factory.
    """
    factory.noisy = False
    return factory


def child_shard() -> int | None:
    """
    @return: the shard of this process when it is a child of C{server.processes}, from
        L{SHARD_VARIABLE}; L{None} in the first process (or when the value is not a number).
    """
    value = os.environ.get(SHARD_VARIABLE, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def twistd_log_path(argv: Sequence[str]) -> str | None:
    """
    Where a twistd command line sends the log, as twistd's own text logger would: the
    C{--logfile} (C{-l}) given before the plugin's name, or C{twistd.log} when twistd runs in
    the background without one.

    @param argv: the command line (C{sys.argv}).
    @return: the path, or L{None} for standard output (C{--logfile -}, or in the foreground
        without C{--logfile}).
    """
    logfile: str | None = None
    foreground = not argv or os.path.basename(argv[0]) != "twistd"
    i = 1
    while i < len(argv) and argv[i] != "mdtwist":
        arg = argv[i]
        if arg in ("-n", "--nodaemon"):
            foreground = True
        elif arg.startswith("--logfile="):
            logfile = arg.partition("=")[2]
        elif arg in ("--logfile", "-l") and i + 1 < len(argv):
            i += 1
            logfile = argv[i]
        elif arg.startswith("-l") and not arg.startswith("--"):
            logfile = arg[2:]
        i += 1
    if logfile is None:
        return None if foreground else "twistd.log"
    return None if logfile == "-" else logfile


def flush_once_per_turn(reactor: IReactorTime) -> None:
    """
    Make the log observers created from now on (twistd creates C{--logger}'s observer after
    C{makeService}) write their lines once per reactor turn instead of once per line.

    A busy SMTP server logs several lines per message; each C{write} to the log file costs the
    reactor thread tens of microseconds of kernel time, and one write for all the lines of a
    turn costs about as much as one of them. A line waits at most until the end of the turn
    that logged it (so C{kill -9} can lose the lines of one turn, never more); once the reactor
    has stopped, and at exit, every line is written at once.

    @param reactor: the reactor whose turns pace the writes (C{IReactorTime}, and
        C{IReactorCore} for the flush at shutdown when it provides it).
    """
    # Module state: twistd calls the observer factories without arguments.
    global _turn_clock
    _turn_clock = reactor


#: The reactor of L{flush_once_per_turn}, or L{None}: every line is written at once.
_turn_clock: IReactorTime | None = None


class TurnFlushedStream:
    """
    A text stream that holds what is written until C{flush}, and puts the flush off to the end
    of the reactor turn, so that the lines written during one turn leave in one C{write}
    (whatever the buffering of the stream below, C{PYTHONUNBUFFERED} included).
    """

    def __init__(self, stream: TextIO, clock: IReactorTime) -> None:
        """
        @param stream: the stream written to.
        @param clock: the reactor whose turn ends the wait.
        """
        self._stream = stream
        self._clock = clock
        self._held: list[str] = []
        self._due = False
        trigger = getattr(clock, "addSystemEventTrigger", None)
        if trigger is not None:
            trigger("after", "shutdown", self.flush_now)
        atexit.register(self.flush_now)

    def write(self, text: str) -> None:
        """
        Hold C{text} until the next flush.

        @param text: what to write.
        """
        self._held.append(text)

    def flush(self) -> None:
        """
        Write what is held at the end of this reactor turn (at once when the reactor does not
        run).
        """
        if self._due:
            return
        if not getattr(self._clock, "running", True):
            self.flush_now()
            return
        self._due = True
        self._clock.callLater(0, self.flush_now)

    def flush_now(self) -> None:
        """
        Write what is held now, in one write.
        """
        self._due = False
        held, self._held = self._held, []
        if held and not self._stream.closed:
            self._stream.write("".join(held))
            self._stream.flush()


def _append(path: str) -> TextIO:
    # The log file, open for the life of the process.
    return open(os.path.abspath(path), "a", encoding="utf-8")


def _log_stream() -> TextIO:
    # What the observer factories write to when given no stream: the file twistd's command
    # line names (appended to, never rotated here: use logrotate's copytruncate), or stdout.
    # The observers flush after every event; with flush_once_per_turn that flush is put off
    # to the end of the reactor turn.
    path = twistd_log_path(sys.argv)
    stream = sys.stdout if path is None else _append(path)
    if _turn_clock is None:
        return stream
    return cast(TextIO, TurnFlushedStream(stream, _turn_clock))


def json_observer(stream: TextIO | None = None) -> ILogObserver:
    """
    The observer factory for C{twistd --logger}: JSON events, one per line; a child process's
    events carry its C{shard}.

    @param stream: where to write; by default the file of twistd's C{--logfile} (see
        L{twistd_log_path}), else standard output.
    @return: the observer.
    """
    observer = jsonFileLogObserver(
        stream if stream is not None else _log_stream(), recordSeparator=""
    )
    shard = child_shard()
    return _Quiet(observer if shard is None else _ShardTagged(observer, shard))


@implementer(ILogObserver)
class _Quiet:
    # Passes each event on, except library chatter (is_chatter).

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: LogEvent) -> None:
        if not is_chatter(event):
            self._observer(event)


@implementer(ILogObserver)
class _ShardTagged:
    # Passes each event on with a shard field added (the event itself is left as it is).

    def __init__(self, observer: ILogObserver, shard: int) -> None:
        self._observer = observer
        self._shard = shard

    def __call__(self, event: LogEvent) -> None:
        self._observer({**event, "shard": self._shard})


def text_observer(stream: TextIO | None = None) -> ILogObserver:
    """
    The observer factory for C{twistd --logger}: twistd's default text lines
    (C{2026-11-21T16:33:02+0000 [namespace#info] message}), written at less cost; a child
    process's lines read C{[shard-2 namespace#info]}.

    @param stream: where to write; by default the file of twistd's C{--logfile} (or
        C{twistd.log} in the background, as twistd's own text logger does; see
        L{twistd_log_path}), else standard output.
    @return: the observer.
    """
    shard = child_shard()
    return TextObserver(
        stream if stream is not None else _log_stream(),
        tag="" if shard is None else f"shard-{shard}",
    )


def _names_only(log_format: str) -> bool:
    # Whether every replacement field of the format is a plain name: {name}, nothing more.
    try:
        return all(
            name is None or (name.isidentifier() and conversion is None and not spec)
            for _, name, spec, conversion in _parse(log_format)
        )
    except ValueError:  # not a valid format string: Twisted reports it
        return False


def _system(event: LogEvent) -> str:
    # The bracketed part of a line, as Twisted's formatEventAsClassicLogText makes it.
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        return f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


@implementer(ILogObserver)
class TextObserver:
    """
    Writes each event as Twisted's C{textFileLogObserver} would, one C{write} (and C{flush}) per
    event, nothing held back between events.

    @ivar _plans: for each format string seen, whether C{str.format_map} can format it.
    @ivar _second: the whole second whose timestamp text is in C{_second_text}, or C{-1}.
    @ivar _second_text: the formatted timestamp of C{_second}.
    @ivar _tag: put before the system in the brackets (a child process's shard), or empty.
    """

    def __init__(self, stream: TextIO, tag: str = "") -> None:
        """
        @param stream: where to write the lines.
        @param tag: a word put before the system in every line (C{[tag system]}), or empty.
        """
        self._tag = f"{tag} " if tag else ""
        self._write = stream.write
        self._flush = stream.flush
        self._plans: dict[str, bool] = {}
        self._second = -1
        self._second_text = ""

    def __call__(self, event: LogEvent) -> None:
        """
        Write one event.

        @param event: the event.
        """
        text = None
        log_format = event.get("log_format")
        if log_format.__class__ is str and log_format in CHATTER_FORMATS and is_chatter(event):
            return
        if (
            log_format.__class__ is str
            and "log_failure" not in event
            and "log_flattened" not in event
        ):
            plan = self._plans.get(log_format)
            if plan is None:
                plan = self._learn(log_format)
            if plan:
                try:
                    text = log_format.format_map(event)
                except Exception:  # Twisted's formatter tells what went wrong
                    text = None
        if text is None:
            if self._tag:
                event = {**event, "log_system": self._tag + _system(event)}
            line = formatEventAsClassicLogText(event, formatTime=self.format_time)
            if not line:
                return
        elif not text:
            return  # Twisted writes nothing for an empty message
        else:
            system = self._tag + _system(event)
            line = f"{self.format_time(event.get('log_time'))} [{system}] {text}".replace(
                "\n", "\n\t"
            )
            line += "\n"
        self._write(line)
        self._flush()

    def _learn(self, log_format: str) -> bool:
        # Decide, and remember, whether str.format_map can format log_format.
        if len(self._plans) >= _PLANS_MAX:
            self._plans.clear()
        plan = self._plans[log_format] = _names_only(log_format)
        return plan

    def format_time(self, when: float | None) -> str:
        """
        The timestamp text of Twisted's L{formatTime} (RFC 3339, local time zone, whole
        seconds), computed once per second.

        @param when: the event's C{log_time}.
        @return: its text; C{"-"} when there is none.
        """
        if when.__class__ is float and 0.0 <= when < _TIME_MAX:
            second = int(when)
            if when - second < _ROUNDING_EDGE:
                if second != self._second:
                    self._second_text = formatTime(when)
                    self._second = second
                return self._second_text
        return formatTime(when)
