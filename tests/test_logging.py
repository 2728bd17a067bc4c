"""
Tests for L{mdtwist.logging}.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.logging import json_observer


class JSONObserverTests(SynchronousTestCase):
    """
    The JSON observer writes one parseable object per line with the event's fields.
    """

    def test_one_object_per_line(self) -> None:
        """
        Each event is a line of JSON that keeps the format string and the fields.
        """
        stream = io.StringIO()
        log = Logger(observer=json_observer(stream), namespace="test")
        log.info("delivered {queue_id} to {rcpt}", queue_id="Q1", rcpt="a@b.test")
        log.warn("second")
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["log_format"], "delivered {queue_id} to {rcpt}")
        self.assertEqual((first["queue_id"], first["rcpt"]), ("Q1", "a@b.test"))
        self.assertEqual(json.loads(lines[1])["log_format"], "second")
