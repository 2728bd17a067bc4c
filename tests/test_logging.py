"""
Tests for L{mdtwist.logging}.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import sys
import time
from collections.abc import Callable
from typing import cast

from twisted.application.app import ServerOptions
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    eventAsJSON,
    eventFromJSON,
    formatEventAsClassicLogText,
    formatTime,
    textFileLogObserver,
)
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.python.log import LogPublisher as LegacyLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import mdtwist.logging
from mdtwist.logging import (
    TextObserver,
    escape_text,
    flush_once_per_turn,
    json_observer,
    text_observer,
    twistd_log_path,
)
from tests.support.logs import capture_logs


class LogPathTests(SynchronousTestCase):
    """
    L{twistd_log_path}: where twistd's command line sends the log.
    """

    def test_spellings(self) -> None:
        """
        C{--logfile=F}, C{--logfile F}, C{-l F} and C{-lF} name the file; C{-} is standard
        output; options after the plugin's name are the plugin's, not twistd's.
        """
        for argv, expected in (
            (["twistd", "-n", "--logfile=/x/a.log", "mdtwist"], "/x/a.log"),
            (["twistd", "--nodaemon", "--logfile", "b.log", "mdtwist"], "b.log"),
            (["twistd", "-n", "-l", "c.log", "mdtwist"], "c.log"),
            (["twistd", "-n", "-ld.log", "mdtwist"], "d.log"),
            (["twistd", "--logfile", "-", "mdtwist"], None),
            (["twistd", "-n", "mdtwist", "--logfile", "e.log"], None),
        ):
            self.assertEqual(twistd_log_path(argv), expected, argv)

    def test_background_default(self) -> None:
        """
        Twistd in the background without C{--logfile} logs to C{twistd.log}, as its own
        logger does; in the foreground, and under other programs, to standard output.
        """
        self.assertEqual(twistd_log_path(["/usr/bin/twistd", "mdtwist"]), "twistd.log")
        self.assertIsNone(twistd_log_path(["/usr/bin/twistd", "-n", "mdtwist"]))
        self.assertIsNone(twistd_log_path(["-c", "--nodaemon", "mdtwist"]))
        self.assertIsNone(twistd_log_path([]))


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


class _Point:
    """
    A value with an attribute, for C{{p.x}} formats.
    """

    x = 7


class _Unformattable:
    """
    A value that cannot be formatted.
    """

    def __format__(self, spec: str) -> str:
        raise ValueError("no text for you")


def _both() -> tuple[io.StringIO, io.StringIO, LogPublisher]:
    # Twisted's text observer and ours, both listening to one publisher.
    theirs, ours = io.StringIO(), io.StringIO()
    publisher = LogPublisher(textFileLogObserver(theirs), text_observer(ours))
    return theirs, ours, publisher


#: Events logged through a Logger: (format, fields).
_LOGGED: list[tuple[str, dict[str, object]]] = [
    (
        "message {queue_id} queued from {mail_from}",
        {"session": "S1", "peer": "192.0.2.1", "queue_id": "Q1", "mail_from": "a@b.test"},
    ),
    (
        "Delivered {queue_id} to {rcpt} (attempt {attempt})",
        {"queue_id": "Q", "rcpt": "r@x", "attempt": 2},
    ),
    ("numbers {n} {f} {big} {neg}", {"n": 42, "f": 1.5, "big": 10**20, "neg": -3.25}),
    ("none {x}", {"x": None}),
    ("from {mail_from} to {rcpt}", {"mail_from": "jörg@bücher.test", "rcpt": "δ@例え.テスト"}),
    ("größe {größe} bytes", {"größe": 12}),
    ("no fields at all", {}),
    ("{{escaped}} braces and {x} }}", {"x": "v"}),
    ("", {}),
    ("{x}", {"x": ""}),
    ("two\nlines {x}", {"x": "and\nthree"}),
    ("right {x:>5}|", {"x": "ab"}),
    ("repr {x!r} str {x!s} ascii {x!a}", {"x": "é"}),
    ("attribute {p.x}", {"p": _Point()}),
    ("index {d[k]} {seq[1]}", {"d": {"k": "v"}, "seq": ["a", "b"]}),
    ("called {f()} and {g.x}", {"f": lambda: "result", "g": _Point()}),
    ("missing {absent}", {}),
    ("unformattable {u}", {"u": _Unformattable()}),
    ("bad format {x", {"x": 1}),
    ("positional {} and {0}", {}),
    ("level {log_level.name} of {log_namespace}", {}),
    ("level {log_level} of {log_namespace}, logger {log_logger}", {}),
]


class ShardTagTests(SynchronousTestCase):
    """
    A child process of C{server.processes} marks its log events with its shard.
    """

    def environment(self, value: str | None) -> None:
        """
        Run the test with L{mdtwist.logging.SHARD_VARIABLE} set to C{value} (unset for None).
        """
        env = {k: v for k, v in os.environ.items() if k != mdtwist.logging.SHARD_VARIABLE}
        if value is not None:
            env[mdtwist.logging.SHARD_VARIABLE] = value
        self.patch(os, "environ", env)

    def test_text_lines(self) -> None:
        """
        Every line of a child, formatted by our shortcut or by Twisted's formatter, is
        Twisted's line with C{shard-K} put before the system.
        """
        self.environment("2")
        theirs, ours, publisher = _both()
        log = Logger(observer=publisher, namespace="mdtwist.test")
        log.info("message {queue_id} queued", queue_id="Q1")
        log.info("odd {x!r}", x="y")
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("broke")
        expected = theirs.getvalue().replace(" [mdtwist.test#", " [shard-2 mdtwist.test#")
        self.assertEqual(ours.getvalue(), expected)
        self.assertEqual(ours.getvalue().count("[shard-2 mdtwist.test#"), 3)

    def test_first_process_untagged(self) -> None:
        """
        Without the variable, or with shard 0 or a value that is not a number, lines are as
        Twisted writes them.
        """
        for value in (None, "0", "x", ""):
            self.environment(value)
            theirs, ours, publisher = _both()
            Logger(observer=publisher, namespace="n").info("hello")
            self.assertEqual(ours.getvalue(), theirs.getvalue(), value)

    def test_json_field(self) -> None:
        """
        A child's JSON events carry C{shard}; the first process's do not.
        """
        self.environment("3")
        stream = io.StringIO()
        Logger(observer=json_observer(stream), namespace="n").info("a {b}", b=1)
        self.environment(None)
        Logger(observer=json_observer(stream), namespace="n").info("c")
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        self.assertEqual((first["shard"], first["b"]), (3, 1))
        self.assertNotIn("shard", second)


class TextObserverTests(SynchronousTestCase):
    """
    L{text_observer} writes the same lines as twistd's default text observer.
    """

    def assert_same(self, theirs: io.StringIO, ours: io.StringIO) -> None:
        """
        Both observers wrote the same, and wrote something.
        """
        self.assertTrue(theirs.getvalue())
        self.assertEqual(ours.getvalue().splitlines(), theirs.getvalue().splitlines())
        self.assertEqual(ours.getvalue(), theirs.getvalue())

    def test_logged_events(self) -> None:
        """
        Plain fields, numbers, C{None}, non-ASCII text, escaped braces, multi-line values, format
        specs and conversions, attribute and index access, calls, missing fields, values that do
        not format, broken formats, and all levels come out as Twisted writes them.
        """
        theirs, ours, publisher = _both()
        log = Logger(observer=publisher, namespace="mdtwist.test")
        for log_format, fields in _LOGGED:
            for emit in (log.debug, log.info, log.warn, log.error, log.critical):
                emit(log_format, **fields)
        self.assert_same(theirs, ours)
        self.assertIn(" [mdtwist.test#info] message Q1 queued from a@b.test\n", ours.getvalue())
        self.assertIn("] Unable to format event ", ours.getvalue())
        self.assertIn("] right    ab|\n", ours.getvalue())
        self.assertIn("] called result and 7\n", ours.getvalue())
        self.assertIn("] two\n\tlines and\n\tthree\n", ours.getvalue())

    def test_failure(self) -> None:
        """
        An event with a failure has the traceback appended, each line indented by a tab.
        """
        theirs, ours, publisher = _both()
        log = Logger(observer=publisher, namespace="mdtwist.test")
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("delivery of {queue_id} broke", queue_id="Q1")
            log.failure("")
        self.assert_same(theirs, ours)
        self.assertIn("\tbuiltins.ZeroDivisionError: division by zero\n", ours.getvalue())

    def test_raw_events(self) -> None:
        """
        Events that did not come from a L{Logger}: a C{log_system}, no namespace or level, no
        time, a byte-string format, a flattened event (as read back from JSON), no format at all.
        """
        events: list[dict[str, object]] = [
            {"log_format": "sys {x}", "x": 1, "log_system": "mdtwist,12,192.0.2.1"},
            {"log_format": "sys {x}", "x": 1, "log_system": 3, "log_time": 1.0e9},
            {"log_format": "bare {x}", "x": 1},
            {"log_format": "ns {x}", "x": 1, "log_namespace": None, "log_level": LogLevel.warn},
            {"log_format": b"bytes {x}", "x": 1, "log_time": 1.5e9},
            {"message": ("no format",), "log_time": 1.5e9},
            {"log_time": 1.5e9, "log_level": LogLevel.info},
        ]
        flat = eventFromJSON(
            eventAsJSON({"log_format": "flat {x!r}", "x": "y", "log_time": 1.5e9})
        )
        self.assertIn("log_flattened", flat)
        events.append(flat)
        theirs, ours = io.StringIO(), io.StringIO()
        twisted_observer, our_observer = textFileLogObserver(theirs), text_observer(ours)
        for event in events:
            twisted_observer(event)
            our_observer(event)
        self.assert_same(theirs, ours)
        self.assertIn("- [mdtwist,12,192.0.2.1] sys 1\n", ours.getvalue())
        self.assertIn("- [None#warn] ns 1\n", ours.getvalue())
        self.assertIn("] flat 'y'\n", ours.getvalue())
        self.assertNotIn("no format", ours.getvalue())

    def test_legacy_events(self) -> None:
        """
        Events of the legacy L{twisted.python.log} API (C{msg} with or without a system,
        C{err}) come out as Twisted writes them.
        """
        theirs, ours, publisher = _both()
        legacy = LegacyLogPublisher(observerPublisher=publisher, publishPublisher=publisher)
        legacy.msg("legacy message {not a field}")
        legacy.msg("several", "parts", system="mdtwist,3,192.0.2.9")
        legacy.msg(format="%(count)d old-style %(what)s", count=3, what="items")
        legacy.msg(failure=Failure(ValueError("bad value")), why="while testing", isError=1)
        self.assert_same(theirs, ours)
        self.assertIn(" [-] legacy message {not a field}\n", ours.getvalue())
        self.assertIn(" [mdtwist,3,192.0.2.9] several parts\n", ours.getvalue())
        self.assertIn(" [-] 3 old-style items\n", ours.getvalue())
        self.assertIn("] while testing\n\tTraceback", ours.getvalue())

    def test_fast_path(self) -> None:
        """
        Formats of plain names do without Twisted's formatter; others use it.
        """
        calls: list[object] = []

        def counting(
            event: LogEvent,
            formatTime: Callable[[float | None], str],  # noqa: N803 - Twisted's name
        ) -> str | None:
            calls.append(event["log_format"])
            return formatEventAsClassicLogText(event, formatTime=formatTime)

        self.patch(mdtwist.logging, "formatEventAsClassicLogText", counting)
        stream = io.StringIO()
        log = Logger(observer=text_observer(stream), namespace="test")
        log.info("plain {a} and {b}", a=1, b=2)
        log.info("no fields")
        log.info("spec {a:>3}", a=1)
        log.info("missing {c}")
        self.assertEqual(calls, ["spec {a:>3}", "missing {c}"])
        self.assertEqual(len(stream.getvalue().splitlines()), 4)

    def test_time_same_second(self) -> None:
        """
        Two times in the same second give Twisted's text, computed once.
        """
        calls: list[float | None] = []

        def counting(when: float | None) -> str:
            calls.append(when)
            return formatTime(when)

        self.patch(mdtwist.logging, "formatTime", counting)
        observer = TextObserver(io.StringIO())
        first, second = 1774745000.125, 1774745000.875
        self.assertEqual(observer.format_time(first), formatTime(first))
        self.assertEqual(observer.format_time(second), formatTime(second))
        self.assertEqual(observer.format_time(second), "2026-03-29T00:43:20+0000")
        self.assertEqual(calls, [first])

    def test_time_across_seconds(self) -> None:
        """
        The cached text changes with the second, also for a time that C{datetime} rounds up to
        the next second, for older events, and for no time at all.
        """
        observer = TextObserver(io.StringIO())
        edge = 1774745999.9999998  # datetime rounds it to the microsecond: 00:00:00 next
        self.assertNotEqual(formatTime(edge), formatTime(edge - 0.5))
        for when in (
            1774745999.5,
            1774745999.9,
            edge,
            1774745999.6,
            1774746000.0,
            1774746000.5,
            1774745999.5,
            0.0,
            0.5,
        ):
            self.assertEqual(observer.format_time(when), formatTime(when), when)
        self.assertEqual(observer.format_time(None), "-")
        self.assertEqual(observer.format_time(1), formatTime(1))

    def test_time_zone(self) -> None:
        """
        Times are given in the local time zone, as Twisted does, across a change of offset.
        """
        self.addCleanup(time.tzset)
        old = os.environ.get("TZ")
        self.addCleanup(lambda: os.environ.pop("TZ") if old is None else os.environ.update(TZ=old))
        os.environ["TZ"] = "Europe/Berlin"
        time.tzset()
        observer = TextObserver(io.StringIO())
        before, after = 1774745999.5, 1774746000.5
        self.assertEqual(observer.format_time(before), "2026-03-29T01:59:59+0100")
        self.assertEqual(observer.format_time(after), "2026-03-29T03:00:00+0200")
        self.assertEqual(observer.format_time(after), formatTime(after))

    def test_one_write_per_event(self) -> None:
        """
        Each event is written at once, with one write, and flushed.
        """
        writes: list[str] = []
        stream = io.StringIO()
        flushes = []
        self.patch(stream, "write", writes.append)
        self.patch(stream, "flush", lambda: flushes.append(len(writes)))
        log = Logger(observer=text_observer(stream), namespace="test")
        log.info("one {x}", x=1)
        log.info("two\nlines")
        self.assertEqual(len(writes), 2)
        self.assertTrue(writes[1].endswith(" [test#info] two\n\tlines\n"))
        self.assertEqual(flushes, [1, 2])

    def test_twistd_logger_option(self) -> None:
        """
        C{twistd --logger mdtwist.logging.text_observer} names a factory of log observers that
        writes to standard output by default.
        """
        options = ServerOptions()
        options.parseOptions(["--logger", "mdtwist.logging.text_observer"])
        self.assertIs(options["logger"], text_observer)
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        observer = options["logger"]()
        self.assertTrue(verifyObject(ILogObserver, observer))
        observer({"log_format": "hello {x}", "x": 1, "log_time": None})
        self.assertEqual(stdout.getvalue(), "- [-#-] hello 1\n")


class _RunningClock(Clock):
    """
    A clock that says whether its reactor runs, and records shutdown triggers.
    """

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, Callable[[], object]]] = []

    def addSystemEventTrigger(  # noqa: N802 - IReactorCore's name
        self, phase: str, event: str, call: Callable[[], object]
    ) -> None:
        self.triggers.append((phase, event, call))


class FlushOncePerTurnTests(SynchronousTestCase):
    """
    L{flush_once_per_turn}: the lines of one reactor turn leave the process in one write.
    """

    def _made(self, clock: _RunningClock, make: Callable[[], ILogObserver]) -> list[int]:
        # Make an observer through its factory with clock set, writing to a stand-in for
        # standard output; returns the lengths written to the file at each flush.
        self.patch(mdtwist.logging, "_turn_clock", None)
        flush_once_per_turn(clock)
        stdout = io.StringIO()
        flushed: list[int] = []
        self.patch(stdout, "flush", lambda: flushed.append(len(stdout.getvalue())))
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "argv", ["twistd", "-n", "mdtwist"])
        self.patch(atexit, "register", lambda call: None)
        self.stdout = stdout
        self.observer = make()
        return flushed

    def test_one_flush_per_turn(self) -> None:
        """
        While the reactor runs, the lines logged in one turn are held (even from a stream
        that writes through) and written and flushed once, when the turn ends; a line of the
        next turn is written at the end of that one.
        """
        clock = _RunningClock()
        flushed = self._made(clock, text_observer)
        log = Logger(observer=self.observer, namespace="test")
        log.info("one")
        log.info("two")
        self.assertEqual(flushed, [])
        self.assertEqual(self.stdout.getvalue(), "")
        clock.advance(0)
        self.assertEqual(len(flushed), 1)
        self.assertEqual(self.stdout.getvalue().count("\n"), 2)
        log.info("three")
        clock.advance(0)
        self.assertEqual(len(flushed), 2)

    def test_json(self) -> None:
        """
        The JSON observer's events are flushed once per turn too.
        """
        clock = _RunningClock()
        flushed = self._made(clock, json_observer)
        log = Logger(observer=self.observer, namespace="test")
        log.info("one")
        log.info("two")
        clock.advance(0)
        self.assertEqual(len(flushed), 1)
        self.assertEqual(len(self.stdout.getvalue().splitlines()), 2)

    def test_not_running(self) -> None:
        """
        Before the reactor runs and after it has stopped, every line is flushed at once; the
        reactor's shutdown flushes what is left.
        """
        clock = _RunningClock()
        clock.running = False
        flushed = self._made(clock, text_observer)
        log = Logger(observer=self.observer, namespace="test")
        log.info("starting")
        self.assertEqual(len(flushed), 1)
        clock.running = True
        log.info("running")
        self.assertEqual(len(flushed), 1)
        [(phase, event, call)] = clock.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        call()
        self.assertEqual(len(flushed), 2)

    def test_default(self) -> None:
        """
        Without L{flush_once_per_turn}, the factories write to standard output itself, which
        the observers flush after every event.
        """
        self.patch(mdtwist.logging, "_turn_clock", None)
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "argv", ["twistd", "-n", "mdtwist"])
        flushes: list[int] = []
        self.patch(stdout, "flush", lambda: flushes.append(1))
        Logger(observer=text_observer(), namespace="test").info("one")
        self.assertEqual(flushes, [1])


class EscapeTextTests(SynchronousTestCase):
    """
    L{escape_text} makes client-supplied text safe for a log line.
    """

    def test_controls_escaped(self) -> None:
        r"""
        C0 controls (CR, LF, NUL, TAB, ESC), DEL and C1 controls become C{\xNN}; printable
        ASCII, a backslash and other non-ASCII text are kept.
        """
        self.assertEqual(
            escape_text("a\r\nb\x00\t\x1b[31m\x7f\x85\x9f"),
            "a\\x0d\\x0ab\\x00\\x09\\x1b[31m\\x7f\\x85\\x9f",
        )
        self.assertEqual(escape_text("zoë@exämple.test \\x41"), "zoë@exämple.test \\x41")

    def test_forged_line(self) -> None:
        """
        A login holding CRLF and a forged log line stays on one line of text output.
        """
        stream = io.StringIO()
        observer = TextObserver(stream)
        observer(
            {
                "log_format": "AUTH failed for {user}",
                "log_time": 0.0,
                "log_namespace": "x",
                "user": escape_text("a\r\n2026-12-05T00:00:00+0000 [x#info] AUTH succeeded"),
            }
        )
        self.assertEqual(stream.getvalue().count("\n"), 1)
        self.assertIn("a\\x0d\\x0a2026", stream.getvalue())


class ChatterTests(SynchronousTestCase):
    """
    Twisted's lines about the short-lived UDP ports of DNS and Minger queries are left out;
    other legacy lines, such as a listener's port, are kept.
    """

    def emit(self, observer: ILogObserver, *texts: str) -> None:
        publisher = LogPublisher(observer)
        legacy = LegacyLogPublisher(observerPublisher=publisher, publishPublisher=publisher)
        for text in texts:
            legacy.msg(text)

    def test_is_chatter(self) -> None:
        """
        The port lines of DNS and Minger queries are chatter; a listener's line and an event
        of ours with the same words are not.
        """
        seen: list[LogEvent] = []
        self.emit(
            cast(ILogObserver, seen.append),
            "DNSDatagramProtocol starting on 40123",
            "(UDP Port 40123 Closed)",
            "_Exchange starting on 5123",
            "SMTPServerFactory starting on 2525",
            "(TCP Port 2525 Closed)",
        )
        self.assertEqual(
            [mdtwist.logging.is_chatter(e) for e in seen], [True, True, True, False, False]
        )
        ours = {"log_format": "{log_text}", "log_text": "(UDP Port 1 Closed)"}
        self.assertFalse(mdtwist.logging.is_chatter({**ours, "log_namespace": "mdtwist"}))

    def test_observers_leave_it_out(self) -> None:
        """
        Neither the text nor the JSON observer writes chatter.
        """
        for make in (text_observer, json_observer):
            stream = io.StringIO()
            self.emit(
                make(stream),
                "DNSDatagramProtocol starting on 40123",
                "SMTPServerFactory starting on 2525",
                "(UDP Port 40123 Closed)",
            )
            self.assertEqual(len(stream.getvalue().splitlines()), 1, stream.getvalue())
            self.assertIn("SMTPServerFactory starting on 2525", stream.getvalue())

    def test_quiet(self) -> None:
        """
        A quiet factory writes no "Starting factory" line when it starts; a plain one does.
        """
        events = capture_logs(self)
        factory = mdtwist.logging.quiet(Factory.forProtocol(Protocol))
        factory.doStart()
        factory.doStop()
        plain = Factory.forProtocol(Protocol)
        plain.doStart()
        plain.doStop()
        starts = [e for e in events if e.get("log_format") == "Starting factory {factory!r}"]
        self.assertEqual([e["factory"] for e in starts], [plain])

    def test_amp_connections(self) -> None:
        """
        AMP's lines for each connection made and lost are chatter; other AMP events are not.
        """
        events = capture_logs(self)
        protocol = amp.AMP()
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.connectionLost(Failure(ConnectionError("gone")))
        mine = [e for e in events if e.get("log_namespace") == "twisted.protocols.amp"]
        self.assertEqual(len(mine), 2)
        self.assertEqual([mdtwist.logging.is_chatter(e) for e in mine], [True, True])
        stream = io.StringIO()
        observer = text_observer(stream)
        for event in mine:
            observer(event)
        self.assertEqual(stream.getvalue(), "")
        other = {**mine[0], "log_format": "{cls} did something else"}
        self.assertFalse(mdtwist.logging.is_chatter(other))
