"""Tests for L{mdtwist.spool.model}."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from mdtwist.envelope import RecipientState
from mdtwist.spool.model import (
    QueuedMessage,
    RecipientProgress,
    RecipientResult,
    StoredBody,
)
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


class StoredBodyTests(SynchronousTestCase):
    """
    L{StoredBody}: the bytes of a spool body file, pickled as the file.
    """

    def test_bytes_and_path(self) -> None:
        """
        It equals the file's content and keeps the file's absolute path.
        """
        path = Path(self.mktemp())
        path.write_bytes(b"Subject: hi\r\n\r\nhello\r\n")
        body = StoredBody.read(str(path))
        self.assertEqual(body, b"Subject: hi\r\n\r\nhello\r\n")
        self.assertEqual(body.path, str(path.absolute()))
        self.assertEqual(body.replace(b"\r\n", b"\n"), b"Subject: hi\n\nhello\n")

    def test_pickled_as_its_file(self) -> None:
        """
        Its pickle holds the path, not the content, however large the body; unpickled, it
        is read from the file again (and fails with the read's error once the file is gone).
        """
        path = Path(self.mktemp())
        path.write_bytes(b"x" * 1_000_000)
        data = pickle.dumps(StoredBody.read(str(path)), pickle.HIGHEST_PROTOCOL)
        self.assertLess(len(data), 1000)
        arrived = pickle.loads(data)
        self.assertIsInstance(arrived, StoredBody)
        self.assertEqual(arrived, b"x" * 1_000_000)
        path.unlink()
        self.assertRaises(FileNotFoundError, pickle.loads, data)
