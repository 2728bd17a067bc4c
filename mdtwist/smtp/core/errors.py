# -*- test-case-name: tests.smtp.core.test_replies -*-
"""
The exceptions of the SMTP core, split by who broke the protocol.

Pure: standard library only.
"""

from __future__ import annotations


class LocalProtocolError(Exception):
    """
    Our own code used the core wrongly.

    For example a reply sent when none was due, or a reply that does not fit the command it
    answers. This is a bug in the glue, never the peer's fault.
    """


class RemoteProtocolError(Exception):
    """
    The peer broke the protocol in a way the core cannot answer with a reply.

    In the client role: a malformed server reply.
    """
