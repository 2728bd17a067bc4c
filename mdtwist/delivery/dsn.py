# -*- test-case-name: tests.delivery.test_dsn -*-
"""
Delivery status notifications: when to send one, and the message itself.

A DSN (RFC 3464) is a C{multipart/report; report-type=delivery-status} message (RFC 6522) in
three parts: a text for people, a C{message/delivery-status} part for programs, and the
original message (C{message/rfc822}) or only its header section (C{text/rfc822-headers}). It
is sent with the null reverse-path to the original sender, and carries C{Auto-Submitted:
auto-replied} (RFC 3834).

The rules (RFC 5321 sections 4.5.5 and 6.1, RFC 3461):
  - never a notice about a message whose sender is the null reverse-path C{<>} (never bounce
    a bounce);
  - C{NOTIFY=NEVER}: no notice at all; a failure notice only when C{NOTIFY} was not given or
    holds C{FAILURE}; a delay notice only when not given or holding C{DELAY}; a success notice
    only when it holds C{SUCCESS};
  - one notice covers every recipient reported by one delivery attempt;
  - the original is returned whole only up to L{DEFAULT_MAX_ORIGINAL} bytes (Postfix's
    C{bounce_size_limit}, 50 000); beyond it only its header section is, itself cut to that
    size at a line end, so a notice can never carry more than that much of the client's text.

Reflection: a client that forges the sender can ask for C{NOTIFY=SUCCESS} and C{RET=FULL} and
have the server mail its text to any address. L{restrict_requests} applies the C{smtp.dsn}
setting to the messages of clients that neither authenticated nor are in a trusted network:
C{honour} keeps their requests (Postfix's default), C{limited} (our default) drops
C{SUCCESS} and returns headers only, C{ignore} drops every DSN parameter, as Postfix does
when C{smtpd_discard_ehlo_keywords} removes C{dsn} for a client.

Pure: standard library and attrs only. There is no clock and no randomness here: the time and
the Message-ID are parameters.
"""

from __future__ import annotations

import email.utils
import enum
import hashlib
import re
from collections.abc import Sequence

import attrs

from mdtwist.envelope import BodyType, ClientInfo, Envelope, Recipient

#: Originals larger than this many bytes are returned as their header section only (Postfix's
#: C{bounce_size_limit} default).
DEFAULT_MAX_ORIGINAL = 50_000

_CRLF = b"\r\n"
_SMTP_REPLY = re.compile(r"[2-5][0-9][0-9](?:[ -]|$)")
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


class Action(enum.Enum):
    """
    The C{Action} of one recipient in a DSN (RFC 3464 section 2.3.3).
    """

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


#: The C{NOTIFY=} keyword that asks for each action.
_NOTIFY_KEYWORD = {
    Action.FAILED: "FAILURE",
    Action.DELAYED: "DELAY",
    Action.DELIVERED: "SUCCESS",
    Action.RELAYED: "SUCCESS",
}

#: The status reported when a recipient has none, per action.
_DEFAULT_STATUS = {
    Action.FAILED: "5.0.0",
    Action.DELAYED: "4.0.0",
    Action.DELIVERED: "2.0.0",
    Action.RELAYED: "2.0.0",
}


class DSNRequests(enum.Enum):
    """
    How the DSN requests (C{NOTIFY}, C{RET}, C{ENVID}, C{ORCPT}) of an unauthenticated client
    outside the trusted networks are honoured.

    @cvar HONOUR: as given (Postfix's default).
    @cvar LIMITED: C{NOTIFY=SUCCESS} is dropped (a C{NOTIFY} left empty becomes C{NEVER})
        and notices return the header section only (C{RET=HDRS}); C{ENVID}, C{ORCPT} and the
        other C{NOTIFY} values are kept.
    @cvar IGNORE: every DSN parameter is dropped, as if none had been given.
    """

    HONOUR = "honour"
    LIMITED = "limited"
    IGNORE = "ignore"


def restrict_requests(envelope: Envelope, requests: DSNRequests) -> Envelope:
    """
    Apply a L{DSNRequests} choice to the envelope of a message.

    @param envelope: the envelope as the client made it.
    @param requests: how far its DSN requests are honoured.
    @return: the envelope to store.
    """
    if requests is DSNRequests.HONOUR:
        return envelope
    if requests is DSNRequests.IGNORE:
        return attrs.evolve(
            envelope,
            recipients=tuple(
                attrs.evolve(r, notify=None, orcpt=None) for r in envelope.recipients
            ),
            ret=None,
            envid=None,
        )
    recipients = []
    for recipient in envelope.recipients:
        notify = recipient.notify
        if notify is not None and "SUCCESS" in notify:
            notify = (notify - {"SUCCESS"}) or frozenset({"NEVER"})
            recipient = attrs.evolve(recipient, notify=notify)
        recipients.append(recipient)
    return attrs.evolve(envelope, recipients=tuple(recipients), ret="HDRS")


@attrs.frozen
class DSNTexts:
    """
    The texts of the notices, one subject and one opening paragraph per kind.

    A notice that reports several kinds takes the subject of the most serious one (failed,
    then delayed, then delivered) and has the paragraph of each kind it reports.

    @ivar failure_subject: the subject of a failure notice.
    @ivar delay_subject: the subject of a delay notice.
    @ivar success_subject: the subject of a success notice.
    @ivar failure_text: the paragraph above the recipients that failed.
    @ivar delay_text: the paragraph above the delayed recipients; C{{until}} is replaced by
        the time the server gives up.
    @ivar success_text: the paragraph above the delivered recipients.
    """

    failure_subject: str = "Undelivered Mail Returned to Sender"
    delay_subject: str = "Delayed Mail (still being retried)"
    success_subject: str = "Successful Mail Delivery Report"
    failure_text: str = (
        "Your message could not be delivered to the recipients below. This is a permanent"
        " error; the server has given up."
    )
    delay_text: str = (
        "Your message has not been delivered yet to the recipients below. The server keeps"
        " trying until {until}; you need not send it again."
    )
    success_text: str = "Your message has been delivered to the recipients below."


@attrs.frozen
class RecipientReport:
    """
    What a notice says about one recipient.

    @ivar recipient: the recipient, with its C{NOTIFY} and C{ORCPT} parameters.
    @ivar action: what happened.
    @ivar status: the enhanced status code (RFC 3463); a default for the action when empty or
        malformed.
    @ivar diagnostic: the remote server's reply (C{550 5.1.1 no such user}), reported as
        C{Diagnostic-Code: smtp; ...}, or our own reason, reported as C{x-mdtwist; ...};
        C{""} for none.
    @ivar remote_mta: the host name of the server that answered, or L{None}.
    @ivar last_attempt: when delivery to this recipient was last tried, or L{None}.
    @ivar will_retry_until: for delayed recipients, when the server gives up; else L{None}.
    """

    recipient: Recipient
    action: Action
    status: str = ""
    diagnostic: str = ""
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None


def wants_notice(sender: str, recipient: Recipient, action: Action) -> bool:
    """
    Tell whether a notice about one recipient may be sent (RFC 3461, RFC 5321 section 6.1).

    @param sender: the reverse-path of the original message; C{""} is the null sender.
    @param recipient: the recipient, with its C{NOTIFY} values.
    @param action: what the notice would report.
    @return: C{False} for the null sender and for C{NOTIFY=NEVER}; when C{NOTIFY} was not
        given, C{True} for failures and delays only; otherwise whether C{NOTIFY} asks for it.
    """
    if not sender:
        return False
    notify = {value.upper() for value in recipient.notify or ()}
    if recipient.notify is None:
        return action in (Action.FAILED, Action.DELAYED)
    if "NEVER" in notify:
        return False
    return _NOTIFY_KEYWORD[action] in notify


def notice_recipient(sender: str) -> str:
    """
    The address a notice about a message goes to.

    @param sender: the reverse-path of the original message.
    @return: the sender, with a source route (C{@a,@b:u@d}) reduced to its mailbox
        (RFC 5321 section 6.1).
    """
    if sender.startswith("@") and ":" in sender:
        return sender.rsplit(":", 1)[1]
    return sender


def decode_xtext(text: str) -> str:
    """
    Decode xtext (RFC 3461 section 4): C{+XX} stands for the byte with hex value C{XX}.

    @param text: the xtext.
    @return: the decoded text; a malformed escape is kept as it is.
    """
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        hex_digits = text[index + 1 : index + 3]
        if char == "+" and len(hex_digits) == 2 and _is_hex(hex_digits):
            out.append(chr(int(hex_digits, 16)))
            index += 3
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789ABCDEFabcdef" for c in text)


def notice_envelope(original: Envelope, reporting_mta: str, now: float, body: bytes) -> Envelope:
    """
    The envelope of a notice about a message.

    @param original: the envelope of the message the notice is about; its sender must not be
        the null sender.
    @param reporting_mta: our host name.
    @param now: the current time, seconds since the epoch: the notice's arrival time.
    @param body: the notice as made by L{build_dsn}, to choose its C{BODY=} type.
    @return: an envelope from the null sender C{<>} to the original sender.
    @raise ValueError: when the original sender is the null sender.
    """
    if not original.sender:
        raise ValueError("no notice about a message from the null sender")
    return Envelope(
        sender="",
        recipients=(Recipient(notice_recipient(original.sender)),),
        client=ClientInfo(address="", helo=reporting_mta),
        arrival=now,
        body_type=BodyType.EIGHT_BIT_MIME if _has_8bit(body) else BodyType.SEVEN_BIT,
        smtputf8=original.smtputf8,
    )


def build_dsn(
    reporting_mta: str,
    envelope: Envelope,
    reports: Sequence[RecipientReport],
    original: bytes,
    now: float,
    message_id: str,
    *,
    texts: DSNTexts | None = None,
    max_original: int = DEFAULT_MAX_ORIGINAL,
) -> bytes:
    """
    Make a delivery status notification.

    The original is returned whole (C{message/rfc822}) when the notice reports a failure or a
    delivery, C{RET=HDRS} was not given, it is not larger than C{max_original} and it is not
    C{BINARYMIME}; otherwise only its header section is (C{text/rfc822-headers}), as for every
    notice that only reports delays, cut at a line end to at most C{max_original} bytes.

    @param reporting_mta: our host name, for C{Reporting-MTA} and the C{From} address.
    @param envelope: the envelope of the original message.
    @param reports: the recipients to report, at least one.
    @param original: the original message, CRLF line ends.
    @param now: the current time, seconds since the epoch (the C{Date}).
    @param message_id: the C{Message-ID} of the notice, with angle brackets.
    @param texts: the subjects and texts; the defaults of L{DSNTexts} when L{None}.
    @param max_original: the largest original returned whole, in bytes, and the most bytes of
        a header section returned alone.
    @return: the notice, CRLF line ends.
    @raise ValueError: when there is nothing to report.
    """
    if not reports:
        raise ValueError("a notice must report at least one recipient")
    texts = DSNTexts() if texts is None else texts
    actions = {report.action for report in reports}
    headers, _ = split_header_section(original)
    whole = (
        actions != {Action.DELAYED}
        and (envelope.ret or "").upper() != "HDRS"
        and len(original) <= max_original
        and envelope.body_type is not BodyType.BINARY_MIME
    )
    human = _human_part(reporting_mta, envelope, reports, texts)
    status = _status_part(reporting_mta, envelope, reports)
    if whole:
        third_type, third = b"message/rfc822", original
    else:
        third_type, third = b"text/rfc822-headers", _cut(headers, max_original)
    boundary = _boundary(reporting_mta, now, human + status + third)
    if envelope.smtputf8 and _has_8bit(third):
        # RFC 6532/6533: an internationalised original travels as message/global.
        third_type = b"message/global" if whole else b"message/global-headers"
    status_type = (
        b"message/global-delivery-status" if _has_8bit(status) else (b"message/delivery-status")
    )
    parts = [
        (b"text/plain; charset=utf-8", human),
        (status_type, status),
        (third_type, third),
    ]
    top = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"),
        ("To", f"<{notice_recipient(envelope.sender)}>"),
        ("Subject", _subject(actions, texts)),
        ("Date", email.utils.formatdate(now, usegmt=True)),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
    ]
    original_id = _original_message_id(headers)
    if original_id is not None:
        top.insert(5, ("In-Reply-To", original_id))
        top.insert(6, ("References", original_id))
    out = bytearray()
    for name, value in top:
        out += _header(name, value)
    out += _CRLF
    out += b"This is a MIME-formatted delivery status notification." + _CRLF
    marker = boundary.encode("ascii")
    for content_type, content in parts:
        out += _CRLF + b"--" + marker + _CRLF
        out += b"Content-Type: " + content_type + _CRLF
        if _has_8bit(content):
            out += b"Content-Transfer-Encoding: 8bit" + _CRLF
        out += _CRLF
        out += content
        if not content.endswith(_CRLF):
            out += _CRLF
    out += _CRLF + b"--" + marker + b"--" + _CRLF
    return bytes(out)


def _cut(headers: bytes, limit: int) -> bytes:
    # The header section cut to at most limit bytes, at the end of a line.
    if len(headers) <= limit:
        return headers
    end = headers.rfind(_CRLF, 0, limit)
    return headers[: end + 2] if end >= 0 else b""


def split_header_section(message: bytes) -> tuple[bytes, bytes]:
    """
    Split a message into its header section and its body.

    @param message: the message, CRLF line ends.
    @return: the header section (each line ending in CRLF, without the empty line) and the
        body; a message without an empty line is all header section.
    """
    if message.startswith(_CRLF):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return (message if message.endswith(_CRLF) or not message else message + _CRLF), b""
    return message[: end + 2], message[end + 4 :]


def _subject(actions: set[Action], texts: DSNTexts) -> str:
    if Action.FAILED in actions:
        return texts.failure_subject
    if Action.DELAYED in actions:
        return texts.delay_subject
    return texts.success_subject


def _human_part(
    reporting_mta: str,
    envelope: Envelope,
    reports: Sequence[RecipientReport],
    texts: DSNTexts,
) -> bytes:
    lines = [f"This is the mail system at {reporting_mta}.", ""]
    groups = [
        (Action.FAILED, texts.failure_text),
        (Action.DELAYED, texts.delay_text),
        (Action.DELIVERED, texts.success_text),
        (Action.RELAYED, texts.success_text),
    ]
    for action, text in groups:
        chosen = [report for report in reports if report.action is action]
        if not chosen:
            continue
        until = min(
            (r.will_retry_until for r in chosen if r.will_retry_until is not None),
            default=None,
        )
        lines.append(
            text.replace("{until}", "later" if until is None else _date(until)),
        )
        lines.append("")
        for report in chosen:
            detail = report.diagnostic or _status(report)
            lines.append(f"  <{report.recipient.address}>: {_one_line(detail)}")
        lines.append("")
    return ("\r\n".join(lines)).encode("utf-8")


def _status_part(
    reporting_mta: str, envelope: Envelope, reports: Sequence[RecipientReport]
) -> bytes:
    fields = [("Reporting-MTA", f"dns; {reporting_mta}")]
    if envelope.envid:
        fields.append(("Original-Envelope-Id", _one_line(decode_xtext(envelope.envid))))
    if envelope.client.address:
        helo = envelope.client.helo or envelope.client.address
        literal = envelope.client.address
        fields.append(("Received-From-MTA", f"dns; {_one_line(helo)} ([{literal}])"))
    fields.append(("Arrival-Date", _date(envelope.arrival)))
    blocks = [_fields(fields)]
    for report in reports:
        recipient = report.recipient
        per: list[tuple[str, str]] = []
        if recipient.orcpt:
            kind, _, address = recipient.orcpt.partition(";")
            per.append(("Original-Recipient", f"{kind.strip()}; {decode_xtext(address)}"))
        per.append(("Final-Recipient", f"{_address_type(recipient.address)}; {recipient.address}"))
        per.append(("Action", report.action.value))
        per.append(("Status", _status(report)))
        if report.remote_mta:
            per.append(("Remote-MTA", f"dns; {_one_line(report.remote_mta)}"))
        if report.diagnostic:
            kind = "smtp" if _SMTP_REPLY.match(report.diagnostic) else "x-mdtwist"
            per.append(("Diagnostic-Code", f"{kind}; {_one_line(report.diagnostic)}"))
        if report.last_attempt is not None:
            per.append(("Last-Attempt-Date", _date(report.last_attempt)))
        if report.action is Action.DELAYED and report.will_retry_until is not None:
            per.append(("Will-Retry-Until", _date(report.will_retry_until)))
        blocks.append(_fields(per))
    return _CRLF.join(blocks)


def _fields(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(_header(name, value) for name, value in fields)


def _header(name: str, value: str) -> bytes:
    # One header field, folded at spaces so no line is longer than 78 characters when it can
    # be helped; the value is already a single line.
    words = _one_line(value).split(" ")
    lines: list[str] = [f"{name}:"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) > 78 and lines[-1].strip() and len(lines) < 50:
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return "\r\n".join(lines).encode("utf-8") + _CRLF


def _status(report: RecipientReport) -> str:
    status = report.status
    if _STATUS.fullmatch(status) and status[0] == _DEFAULT_STATUS[report.action][0]:
        return status
    if _STATUS.fullmatch(status) and report.action is Action.FAILED and status[0] == "4":
        # A temporary error that outlived the queue lifetime is reported as it was seen.
        return status
    return _DEFAULT_STATUS[report.action]


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def _has_8bit(data: bytes) -> bool:
    return not data.isascii()


def _boundary(reporting_mta: str, now: float, content: bytes) -> str:
    # A boundary that does not occur in the content: derived from the content itself, so the
    # builder stays deterministic.
    digest = hashlib.sha256(content + repr((reporting_mta, now)).encode()).hexdigest()
    salt = 0
    while True:
        boundary = f"=_mdtwist_{digest[:24]}_{salt}"
        if boundary.encode("ascii") not in content:
            return boundary
        salt += 1


def _original_message_id(headers: bytes) -> str | None:
    # The Message-ID of the original, when its header section has a well-formed one.
    lines = headers.split(_CRLF)
    for index, line in enumerate(lines):
        if line[:11].lower() == b"message-id:":
            value = line[11:]
            for more in lines[index + 1 :]:
                if more[:1] not in (b" ", b"\t"):
                    break
                value += more
            match = _MESSAGE_ID.search(value.decode("ascii", "replace"))
            return None if match is None else match.group()
    return None
