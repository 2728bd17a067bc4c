# -*- test-case-name: tests.test_config,tests.test_layers -*-
"""
The modes of SMTP listeners and of outbound connections, as plain values.

The configuration reads these and the SMTP glue acts on them; they live here, in a module
that imports neither Twisted nor any glue, so that L{mdtwist.config} stays a leaf.
"""

from __future__ import annotations

import enum


class ListenerMode(enum.Enum):
    """
    The role of an SMTP listener.

    @cvar MX: mail from other servers on port 25.
    @cvar SUBMISSION: mail from our users on port 587, authentication required.
    @cvar SMTPS: submission over implicit TLS on port 465.
    """

    MX = "mx"
    SUBMISSION = "submission"
    SMTPS = "smtps"


class TLSMode(enum.Enum):
    """
    How a destination is protected.

    @cvar NONE: plaintext, STARTTLS never used.
    @cvar OPPORTUNISTIC: STARTTLS when offered, certificate not checked; plaintext otherwise.
    @cvar VERIFIED: STARTTLS required, the certificate checked for the host name.
    """

    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    VERIFIED = "verified"
