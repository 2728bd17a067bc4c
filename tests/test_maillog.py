"""
Tests for L{mdtwist.maillog}: the format of each mail-log line, its fields, and the escaping of
what the client chose.
"""

from __future__ import annotations

import io
import json
import platform

from twisted.copyright import version as twisted_version
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from mdtwist import maillog
from mdtwist.logging import TextObserver, json_observer
from tests.support.logs import capture_logs

#: 2026-12-05T14:02:31Z
WHEN = 1796479351.0


class _Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = capture_logs(self)

    def only(self) -> LogEvent:
        """
        @return: the one event logged, after checking it is in the mail log's namespace.
        """
        [event] = list(self.events)
        self.assertEqual(event["log_namespace"], "mdtwist.maillog")
        return event


class LineTests(_Case):
    """
    Each event function writes one line of a fixed format, with its values as fields.
    """

    def test_started(self) -> None:
        """
        The start line names the mdtwist, Python and Twisted versions.
        """
        maillog.started()
        event = self.only()
        self.assertEqual(
            formatEvent(event),
            f"mdtwist {mdtwist.__version__} starting (Python {platform.python_version()},"
            f" Twisted {twisted_version})",
        )
        self.assertEqual(event["version"], mdtwist.__version__)

    def test_connected(self) -> None:
        """
        The connect line names the client by name and address; without a name, the address
        stands in.
        """
        maillog.connected(session="ab-1", peer="192.0.2.1", client_name=None, listener="mx")
        maillog.connected(
            session="ab-2", peer="192.0.2.1", client_name="c.example", listener="smtps"
        )
        first, second = self.events
        self.assertEqual(formatEvent(first), "ab-1: connect from 192.0.2.1[192.0.2.1] listener=mx")
        self.assertEqual(
            formatEvent(second), "ab-2: connect from c.example[192.0.2.1] listener=smtps"
        )
        self.assertEqual(
            (second["session"], second["peer"], second["client_name"]),
            ("ab-2", "192.0.2.1", "c.example"),
        )

    def test_refused(self) -> None:
        """
        A 5xx refusal is a warning, a 4xx one is information; client text is escaped.
        """
        maillog.refused(
            session="ab-1",
            peer="192.0.2.1",
            client_name=None,
            command="RCPT",
            code=550,
            enhanced="5.1.1",
            reason="No such user here",
            mail_from="a@c.example",
            rcpt="x\r\ny@example.com",
            helo="c\x1b.example",
        )
        maillog.refused(
            session="ab-1",
            peer="192.0.2.1",
            client_name=None,
            command="MAIL",
            code=451,
            enhanced="4.3.0",
            reason="Temporary lookup failure, try again later",
        )
        permanent, temporary = self.events
        self.assertEqual(
            formatEvent(permanent),
            "ab-1: reject RCPT from 192.0.2.1[192.0.2.1]: 550 5.1.1 No such user here;"
            " from=<a@c.example> to=<x\\x0d\\x0ay@example.com> helo=c\\x1b.example",
        )
        self.assertEqual(permanent["log_level"], LogLevel.warn)
        self.assertEqual(permanent["code"], 550)
        self.assertEqual(temporary["log_level"], LogLevel.info)
        self.assertTrue(formatEvent(temporary).endswith("; from=<> to=<> helo=-"))

    def test_accepted(self) -> None:
        """
        The accepted line ties the queue id to the session, with size, sender, recipient
        count, Message-ID and login.
        """
        maillog.accepted(
            queue_id="00000000002A",
            session="ab-1",
            peer="192.0.2.1",
            client_name=None,
            mail_from="",
            msg_size=1234,
            nrcpt=3,
            message_id="<m@c.example>",
            user="alice@example.test",
        )
        event = self.only()
        self.assertEqual(
            formatEvent(event),
            "00000000002A: accepted session=ab-1 client=192.0.2.1[192.0.2.1] from=<>"
            " size=1234 nrcpt=3 message_id=<m@c.example> user=alice@example.test",
        )
        self.assertEqual((event["msg_size"], event["nrcpt"]), (1234, 3))

    def test_disconnected(self) -> None:
        """
        The disconnect line says TLS, login and counts; absent values are C{-}.
        """
        maillog.disconnected(
            session="ab-1",
            peer="2001:db8::1",
            client_name=None,
            tls_version=None,
            tls_cipher=None,
            user=None,
            messages=0,
            rejects=2,
        )
        self.assertEqual(
            formatEvent(self.only()),
            "ab-1: disconnect from 2001:db8::1[2001:db8::1] tls=- cipher=- user=- messages=0"
            " rejects=2",
        )

    def test_delivery_deferred(self) -> None:
        """
        A deferral is a warning and says when the next attempt is due, in UTC.
        """
        maillog.delivery(
            queue_id="00000000002A",
            rcpt="bob@example.org",
            mailbox=None,
            relay="mx1.example.org",
            relay_address="192.0.2.25",
            delay=3.14159,
            attempt=2,
            enhanced="4.7.1",
            status=maillog.Status.DEFERRED,
            reason="451 4.7.1 greylisted",
            next_attempt=WHEN,
        )
        event = self.only()
        self.assertEqual(
            formatEvent(event),
            "00000000002A: to=<bob@example.org> mailbox=<bob@example.org>"
            " relay=mx1.example.org[192.0.2.25] delay=3.14 attempt=2 dsn=4.7.1"
            " status=deferred (451 4.7.1 greylisted) next=2026-12-05T14:02:31Z",
        )
        self.assertEqual(event["log_level"], LogLevel.warn)

    def test_delivery_sent(self) -> None:
        """
        A delivery is information; the next attempt is C{-} whatever is passed, and an alias
        shows the mailbox it led to.
        """
        maillog.delivery(
            queue_id="00000000002A",
            rcpt="postmaster@example.test",
            mailbox="alice@example.test",
            relay="local",
            relay_address=None,
            delay=0.0,
            attempt=1,
            enhanced="2.0.0",
            status=maillog.Status.SENT,
            reason="delivered to Maildir",
            next_attempt=WHEN,
        )
        event = self.only()
        self.assertEqual(
            formatEvent(event),
            "00000000002A: to=<postmaster@example.test> mailbox=<alice@example.test>"
            " relay=local[-] delay=0.00 attempt=1 dsn=2.0.0 status=sent"
            " (delivered to Maildir) next=-",
        )
        self.assertEqual(event["log_level"], LogLevel.info)

    def test_queue_lines(self) -> None:
        """
        Notices, their queue ids, parking and removal each have their line.
        """
        maillog.notice(
            queue_id="00000000002A",
            mail_from="a@c.example",
            actions=["failed", "delayed", "failed"],
            nrcpt=3,
        )
        maillog.notices_queued(queue_id="00000000002A", ids=["00000000002B"])
        maillog.parked(queue_id="00000000002B", reason="mail loop")
        maillog.removed(queue_id="00000000002A")
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            [
                "00000000002A: notice to=<a@c.example> actions=delayed,failed nrcpt=3",
                "00000000002A: notice queued as 00000000002B",
                "00000000002B: parked (mail loop)",
                "00000000002A: removed",
            ],
        )

    def test_text_and_json_same_fields(self) -> None:
        """
        The text observer writes the line; the JSON observer writes the same event with every
        field, so either log can be searched by the same values.
        """
        maillog.tls_established(
            session="ab-1",
            peer="192.0.2.1",
            client_name=None,
            tls_version="TLSv1.3",
            tls_cipher="TLS_AES_256_GCM_SHA384",
        )
        event = self.only()
        text, data = io.StringIO(), io.StringIO()
        TextObserver(text)(event)
        json_observer(data)(event)
        self.assertTrue(
            text.getvalue().endswith(
                "[mdtwist.maillog#info] ab-1: TLS from 192.0.2.1[192.0.2.1] tls=TLSv1.3"
                " cipher=TLS_AES_256_GCM_SHA384\n"
            )
        )
        parsed = json.loads(data.getvalue())
        for field in ("session", "peer", "client", "tls_version", "tls_cipher"):
            self.assertEqual(parsed[field], event[field])
        self.assertEqual(parsed["log_format"], event["log_format"])


class ValueTests(SynchronousTestCase):
    """
    The helpers that turn values into log text.
    """

    def test_message_id(self) -> None:
        """
        The first Message-ID header of the header section, unfolded; not one in the body.
        """
        self.assertEqual(
            maillog.message_id(b"Subject: x\r\nMessage-Id:  <a@b>\r\n\r\nbody\r\n"), "<a@b>"
        )
        self.assertEqual(
            maillog.message_id(b"message-id:\r\n <folded@b>\r\nSubject: x\r\n\r\n"),
            "<folded@b>",
        )
        self.assertEqual(maillog.message_id(b"Subject: x\r\n\r\nMessage-ID: <no@b>\r\n"), "-")
        self.assertEqual(maillog.message_id(b"Subject: x\r\n\r\n"), "-")

    def test_message_id_cut_and_escaped(self) -> None:
        """
        A long Message-ID is cut; control characters in it are escaped.
        """
        long = maillog.message_id(b"Message-ID: <" + b"x" * 500 + b">\r\n\r\n")
        self.assertEqual(len(long), maillog.MESSAGE_ID_MAX + 3)
        self.assertTrue(long.endswith("..."))
        self.assertEqual(maillog.message_id(b"Message-ID: <a\x1b@b>\r\n\r\n"), "<a\\x1b@b>")

    def test_timestamp(self) -> None:
        """
        Times are RFC 3339 in UTC, whole seconds; none is C{-}.
        """
        self.assertEqual(maillog.timestamp(WHEN + 0.9), "2026-12-05T14:02:31Z")
        self.assertEqual(maillog.timestamp(None), "-")

    def test_client_label(self) -> None:
        """
        A client is C{name[address]}, the address standing in for a missing name.
        """
        self.assertEqual(maillog.client_label("192.0.2.1"), "192.0.2.1[192.0.2.1]")
        self.assertEqual(maillog.client_label("192.0.2.1", "c\n"), "c\\x0a[192.0.2.1]")
