"""
Tests for L{mdtwist.envelope}.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.envelope import BodyType, ClientInfo, Envelope, Recipient, RecipientState
from mdtwist.secret import Secret


class EnvelopeTests(SynchronousTestCase):
    """
    Envelopes are frozen values that start undelivered.
    """

    def test_recipient_starts_pending(self) -> None:
        """
        A new recipient is pending, with no attempt and no status yet.
        """
        recipient = Recipient("a@example.test")
        self.assertEqual(
            (recipient.state, recipient.attempts, recipient.status, recipient.notify),
            (RecipientState.PENDING, 0, "", None),
        )

    def test_frozen(self) -> None:
        """
        Changing a recipient means making a new one.
        """
        recipient = Recipient("a@example.test")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, recipient, "attempts", 1)
        later = attrs.evolve(recipient, attempts=1, state=RecipientState.DELIVERED)
        self.assertEqual((later.attempts, recipient.attempts), (1, 0))

    def test_body_type_keywords(self) -> None:
        """
        The body types carry the keywords of C{MAIL FROM}'s C{BODY=} parameter.
        """
        self.assertEqual([t.value for t in BodyType], ["7BIT", "8BITMIME", "BINARYMIME"])

    def test_repr_hides_password(self) -> None:
        """
        An envelope that keeps the client's password never shows it in its repr.
        """
        client = ClientInfo("192.0.2.1", "client.test", user="alice", password=Secret("pw-123"))
        envelope = Envelope("s@example.test", (Recipient("r@example.test"),), client, 0.0)
        self.assertNotIn("pw-123", repr(envelope))
        self.assertEqual(envelope.body_type, BodyType.SEVEN_BIT)
