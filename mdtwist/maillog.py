# -*- test-case-name: tests.test_maillog -*-
"""
The mail log: one line per event in the life of a session or a message, in the manner of
Postfix's maillog, so that an administrator can follow a message with C{grep}.

Every event here is logged under the one namespace C{mdtwist.maillog} (L{log}), with a format
string that never changes (it is the event's identity, and C{docs/mail-log.md} lists them) and
the same values as fields, so the text log and the JSON log say the same thing. A session is
named by its session id (C{session}), a message by its queue id (C{queue_id}); the line that
accepts a message carries both, which ties a session to its queue ids. Lines start with the id
they are about, followed by a colon (C{1f2e-3: connect from ...}, C{000000000007: to=<...>}).

Values the client chose (an EHLO name, a login, an address, a Message-ID) are escaped here with
L{escape_text}, whatever the caller passes, so no control character of theirs reaches a line.
An absent value is written C{-}. Passwords, SASL payloads, digests and message bodies are never
arguments of these functions.

The functions are the event points: code that wants to count an event (metrics) hooks in at the
same call as its log line. Every caller passes keyword arguments only.
"""

from __future__ import annotations

import datetime
import functools
import platform
import re
from collections.abc import Iterable

from twisted.copyright import version as twisted_version
from twisted.logger import Logger, LogLevel

import mdtwist
from mdtwist.logging import escape_text

#: The logger of every mail-log event; its namespace is C{mdtwist.maillog}.
log = Logger(namespace="mdtwist.maillog")

#: What the log says for a value that is absent.
NONE = "-"

#: The longest Message-ID kept for the log; a longer one is cut and marked with C{...}.
MESSAGE_ID_MAX = 200

#: How far into a message a Message-ID is looked for (the header section is usually shorter).
_HEADER_SCAN = 64 * 1024

_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)")
_FOLD = re.compile(r"\r?\n[ \t]+")


def _text(value: str | None) -> str:
    # Escaped client text, or the mark of an absent value.
    return escape_text(value) if value else NONE


def client_label(address: str, name: str | None = None) -> str:
    """
    The text that names a client: C{name[address]}, as Postfix writes it.

    @param address: the client's IP address.
    @param name: its name, when known (the reverse name); the address otherwise.
    @return: the label.
    """
    return f"{escape_text(name or address)}[{escape_text(address)}]"


def message_id(message: bytes) -> str:
    """
    Find the Message-ID of a message, for the log.

    @param message: the message (header section first), CRLF or LF line ends.
    @return: the value of its first C{Message-ID:} header, unfolded, escaped and cut to
        L{MESSAGE_ID_MAX} characters; C{-} when there is none.
    """
    head = message[:_HEADER_SCAN]
    end = re.search(rb"\r?\n\r?\n", head)
    if end is not None:
        head = head[: end.start() + 1]
    found = _MESSAGE_ID.search(head)
    if found is None:
        return NONE
    value = _FOLD.sub(" ", found.group(1).decode("utf-8", "replace")).strip()
    if len(value) > MESSAGE_ID_MAX:
        value = value[:MESSAGE_ID_MAX] + "..."
    return _text(value)


def timestamp(when: float | None) -> str:
    """
    A point in time as the log writes it: RFC 3339 in UTC, whole seconds.

    @param when: seconds since the epoch, or L{None}.
    @return: such as C{2026-12-05T14:02:31Z}; C{-} for L{None}.
    """
    if when is None:
        return NONE
    return _timestamp(int(when))


@functools.lru_cache(maxsize=64)
def _timestamp(second: int) -> str:
    # Most lines of a busy second name the same few seconds (now, the next retry).
    moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the server --


def started() -> None:
    """
    The first line of a starting server: the mdtwist version (with Python's and Twisted's).
    """
    log.info(
        "mdtwist {version} starting (Python {python}, Twisted {twisted})",
        version=mdtwist.__version__,
        python=platform.python_version(),
        twisted=twisted_version,
    )


# -- SMTP sessions --


def connected(*, session: str, peer: str, client_name: str | None, listener: str) -> None:
    """
    A client connected.

    @param session: the session id.
    @param peer: the client's IP address.
    @param client_name: its name when known, else L{None} (the address stands in).
    @param listener: the listener's mode (C{mx}, C{submission}, C{smtps}).
    """
    log.info(
        "{session}: connect from {client} listener={listener}",
        session=session,
        peer=peer,
        client_name=client_name or peer,
        client=client_label(peer, client_name),
        listener=listener,
    )


def tls_established(
    *, session: str, peer: str, client_name: str | None, tls_version: str, tls_cipher: str
) -> None:
    """
    The TLS handshake with a client completed (implicit TLS or after STARTTLS).

    @param session: the session id.
    @param peer: the client's IP address.
    @param client_name: its name, or L{None}.
    @param tls_version: the protocol version (C{TLSv1.3}).
    @param tls_cipher: the cipher suite.
    """
    log.info(
        "{session}: TLS from {client} tls={tls_version} cipher={tls_cipher}",
        session=session,
        peer=peer,
        client_name=client_name or peer,
        client=client_label(peer, client_name),
        tls_version=tls_version or NONE,
        tls_cipher=tls_cipher or NONE,
    )


def logged_in(*, session: str, peer: str, client_name: str | None, user: str, method: str) -> None:
    """
    A client authenticated (SMTP AUTH).

    @param session: the session id.
    @param peer: the client's IP address.
    @param client_name: its name, or L{None}.
    @param user: the account's login.
    @param method: the SASL mechanism.
    """
    log.info(
        "{session}: login from {client} user={user} method={method}",
        session=session,
        peer=peer,
        client_name=client_name or peer,
        client=client_label(peer, client_name),
        user=_text(user),
        method=_text(method),
    )


def refused(
    *,
    session: str,
    peer: str,
    client_name: str | None,
    command: str,
    code: int,
    enhanced: str | None,
    reason: str,
    mail_from: str | None = None,
    rcpt: str | None = None,
    helo: str | None = None,
) -> None:
    """
    A command (or a recipient, or a message at the end of DATA) was refused with a 4xx or 5xx.

    @param session: the session id.
    @param peer: the client's IP address.
    @param client_name: its name, or L{None}.
    @param command: the command's verb (C{MAIL}, C{RCPT}, C{DATA}, C{AUTH} ...).
    @param code: the reply code.
    @param enhanced: the enhanced status code, or L{None}.
    @param reason: the reply's text.
    @param mail_from: the transaction's sender, when there is one.
    @param rcpt: the refused recipient, for C{RCPT}.
    @param helo: the client's EHLO or HELO name, when it gave one.
    """
    level = LogLevel.warn if code >= 500 else LogLevel.info
    log.emit(
        level,
        "{session}: reject {command} from {client}: {code} {enhanced} {reason};"
        " from=<{mail_from}> to=<{rcpt}> helo={helo}",
        session=session,
        peer=peer,
        client_name=client_name or peer,
        client=client_label(peer, client_name),
        command=_text(command),
        code=code,
        enhanced=enhanced or NONE,
        reason=escape_text(reason),
        mail_from=escape_text(mail_from or ""),
        rcpt=escape_text(rcpt or ""),
        helo=_text(helo),
    )


def accepted(
    *,
    queue_id: str,
    session: str,
    peer: str,
    client_name: str | None,
    mail_from: str,
    msg_size: int,
    nrcpt: int,
    message_id: str,
    user: str | None = None,
) -> None:
    """
    A message was accepted and is in the queue.

    @param queue_id: its queue id.
    @param session: the session it came in.
    @param peer: the client's IP address.
    @param client_name: its name, or L{None}.
    @param mail_from: the envelope sender (C{""} for C{<>}).
    @param msg_size: its size in bytes as the client sent it (without our trace header).
    @param nrcpt: how many recipients it has.
    @param message_id: its Message-ID as L{message_id} found it.
    @param user: the login of the authenticated sender, or L{None}.
    """
    log.info(
        "{queue_id}: accepted session={session} client={client} from=<{mail_from}>"
        " size={msg_size} nrcpt={nrcpt} message_id={message_id} user={user}",
        queue_id=queue_id,
        session=session,
        peer=peer,
        client_name=client_name or peer,
        client=client_label(peer, client_name),
        mail_from=escape_text(mail_from),
        msg_size=msg_size,
        nrcpt=nrcpt,
        message_id=message_id,
        user=_text(user),
    )


def timed_out(*, session: str, peer: str, client_name: str | None, state: str) -> None:
    """
    A client said nothing for too long; the session ends with C{421 4.4.2}.

    @param session: the session id.
    @param peer: the client's IP address.
    @param client_name: its name, or L{None}.
    @param state: where the session was (C{COMMAND}, C{DATA}, C{AUTH} ...).
    """
    log.info(
        "{session}: timeout in {state} from {client}",
        session=session,
        peer=peer,
        client_name=client_name or peer,
        client=client_label(peer, client_name),
        state=state,
    )


def disconnected(
    *,
    session: str,
    peer: str,
    client_name: str | None,
    tls_version: str | None,
    tls_cipher: str | None,
    user: str | None,
    messages: int,
    rejects: int,
) -> None:
    """
    A session ended.

    @param session: the session id.
    @param peer: the client's IP address.
    @param client_name: its name, or L{None}.
    @param tls_version: the TLS version when the session was encrypted, else L{None}.
    @param tls_cipher: the cipher suite, or L{None}.
    @param user: the login when the client authenticated, else L{None}.
    @param messages: how many messages it handed over.
    @param rejects: how many of its commands were refused.
    """
    log.info(
        "{session}: disconnect from {client} tls={tls_version} cipher={tls_cipher}"
        " user={user} messages={messages} rejects={rejects}",
        session=session,
        peer=peer,
        client_name=client_name or peer,
        client=client_label(peer, client_name),
        tls_version=tls_version or NONE,
        tls_cipher=tls_cipher or NONE,
        user=_text(user),
        messages=messages,
        rejects=rejects,
    )


# -- the queue --


class Status:
    """
    The outcome words of a delivery line (C{status=...}).
    """

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"


def delivery(
    *,
    queue_id: str,
    rcpt: str,
    mailbox: str | None,
    relay: str,
    relay_address: str | None,
    delay: float,
    attempt: int,
    enhanced: str,
    status: str,
    reason: str,
    next_attempt: float | None,
) -> None:
    """
    One delivery attempt for one recipient, with its outcome.

    @param queue_id: the message's queue id.
    @param rcpt: the recipient address.
    @param mailbox: the mailbox an alias or forwarding led to, when it is not C{rcpt}.
    @param relay: where the copy went: a host name, C{local} (a Maildir), C{lmtp:...}; C{none}
        when it went nowhere (unknown mailbox, no connection).
    @param relay_address: the relay's IP address, when there was a connection.
    @param delay: seconds since the message arrived.
    @param attempt: the number of this attempt for the recipient (1 for the first).
    @param enhanced: the DSN code (C{2.0.0}, C{4.4.1}, C{5.1.1}).
    @param status: one of L{Status}.
    @param reason: the remote server's reply, or the local reason.
    @param next_attempt: for C{deferred}, when the next attempt is due.
    """
    level = LogLevel.info if status == Status.SENT else LogLevel.warn
    log.emit(
        level,
        "{queue_id}: to=<{rcpt}> mailbox=<{mailbox}> relay={relay}[{relay_address}]"
        " delay={delay} attempt={attempt} dsn={enhanced} status={status} ({reason})"
        " next={next_attempt}",
        queue_id=queue_id,
        rcpt=escape_text(rcpt),
        mailbox=escape_text(mailbox or rcpt),
        relay=escape_text(relay),
        relay_address=relay_address or NONE,
        delay=f"{max(delay, 0.0):.2f}",
        attempt=attempt,
        enhanced=enhanced or NONE,
        status=status,
        reason=escape_text(reason) or NONE,
        next_attempt=timestamp(next_attempt if status == Status.DEFERRED else None),
    )


def notice(*, queue_id: str, mail_from: str, actions: Iterable[str], nrcpt: int) -> None:
    """
    A delivery status notification about a message is being queued to its sender: a bounce
    (C{failed}), a delay notice (C{delayed}), a success report (C{delivered}), or a mix.

    @param queue_id: the queue id of the message it is about.
    @param mail_from: the sender it goes to.
    @param actions: the actions it reports, one per recipient (repeats are fine).
    @param nrcpt: how many recipients it reports on.
    """
    log.info(
        "{queue_id}: notice to=<{mail_from}> actions={actions} nrcpt={nrcpt}",
        queue_id=queue_id,
        mail_from=escape_text(mail_from),
        actions=",".join(sorted(set(actions))) or NONE,
        nrcpt=nrcpt,
    )


def notices_queued(*, queue_id: str, ids: Iterable[str]) -> None:
    """
    The notices about a message are in the queue, each with its own queue id.

    @param queue_id: the queue id of the message they are about.
    @param ids: the queue ids of the notices.
    """
    log.info(
        "{queue_id}: notice queued as {notice_ids}",
        queue_id=queue_id,
        notice_ids=" ".join(ids),
    )


def parked(*, queue_id: str, reason: str) -> None:
    """
    A message was moved to the bad queue, for a person to look at.

    @param queue_id: its queue id.
    @param reason: why.
    """
    log.warn("{queue_id}: parked ({reason})", queue_id=queue_id, reason=escape_text(reason))


def removed(*, queue_id: str) -> None:
    """
    A message left the queue: every recipient is final.

    @param queue_id: its queue id.
    """
    log.info("{queue_id}: removed", queue_id=queue_id)
