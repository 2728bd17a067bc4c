"""
Read delivery status notifications (RFC 3464) with the standard library, for assertions.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message


def parse(data: bytes) -> EmailMessage:
    """
    @return: the message parsed by the standard library.
    """
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: Message) -> list[EmailMessage]:
    """
    @return: the parts of a multipart message (or the blocks of a delivery-status part).
    """
    payload = message.get_payload()
    assert isinstance(payload, list)
    found: list[EmailMessage] = []
    for part in payload:
        assert isinstance(part, EmailMessage)
        found.append(part)
    return found


def recipient_blocks(message: Message) -> list[EmailMessage]:
    """
    @return: the per-recipient blocks of a delivery-status report.
    """
    return parts(parts(message)[1])[1:]
