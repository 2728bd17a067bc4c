# -*- test-case-name: tests.smtp.test_policy -*-
"""
The answer to one C{RCPT TO}: what a receive policy (L{mdtwist.interfaces.IReceivePolicy})
decides and the SMTP glue carries out. Pure: attrs and the pure SMTP core only.
"""

from __future__ import annotations

import attrs

from mdtwist.route import Route
from mdtwist.smtp.core.replies import Reply

RECIPIENT_OK = Reply(250, "2.1.5", ("Recipient ok",))


@attrs.frozen
class RecipientDecision:
    """
    The answer to one C{RCPT TO}.

    @ivar reply: the reply to send.
    @ivar route: where the recipient goes; set exactly when the reply accepts it (2xx).
    @raise ValueError: when the route does not fit the reply.
    """

    reply: Reply
    route: Route | None = None

    def __attrs_post_init__(self) -> None:
        if self.reply.is_positive != (self.route is not None):
            raise ValueError("a recipient decision has a route exactly when it accepts")

    @classmethod
    def refuse(cls, reply: Reply) -> RecipientDecision:
        """
        @param reply: a 4xx or 5xx reply.
        @return: the decision that refuses the recipient with it.
        """
        return cls(reply)

    @classmethod
    def accept(cls, route: Route) -> RecipientDecision:
        """
        @param route: where the recipient goes.
        @return: the decision that accepts it with C{250 2.1.5}.
        """
        return cls(RECIPIENT_OK, route)
