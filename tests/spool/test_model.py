"""Tests for L{mdtwist.spool.model}."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from mdtwist.envelope import RecipientState
from mdtwist.spool.model import QueuedMessage, RecipientProgress, RecipientResult
from tests.spool.fakes import make_envelope

_SCRIPT = """
import sys
import mdtwist.spool.model, mdtwist.spool.schema
print(",".join(sorted(
    m for m in sys.modules
    if m.split(".")[0] == "twisted" or m.startswith("mdtwist.delivery")
)))
"""


class PurityTests(SynchronousTestCase):
    """
    The model and the schema are pure: the spool and delivery code share them without a cycle.
    """

    def test_no_twisted_and_no_delivery(self) -> None:
        """
        Importing L{mdtwist.spool.model} and L{mdtwist.spool.schema} in a fresh interpreter
        pulls in no Twisted module and nothing of L{mdtwist.delivery}.
        """
        root = Path(mdtwist.__file__).parents[1]
        result = subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=root, check=True
        )
        self.assertEqual(result.stdout.strip(), "")


class ValueTests(SynchronousTestCase):
    """
    The values are frozen and carry sensible defaults.
    """

    def test_defaults(self) -> None:
        """
        A queued message without progress knows nothing of its recipients' history, and a
        result defaults to no remote MTA and the normal schedule.
        """
        message = QueuedMessage("00000000002A", make_envelope(), 10, 0, 0.0)
        self.assertEqual(message.progress, ())
        self.assertIsNone(message.body)
        result = RecipientResult(0, RecipientState.PENDING)
        self.assertEqual((result.remote_mta, result.retry_after), (None, None))
        self.assertEqual(RecipientProgress(), RecipientProgress(False, None, None))
