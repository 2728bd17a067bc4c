"""
Tests for L{mdtwist.dequeue.signal}: when to signal, the ATRN domain list, what a reply means.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.dequeue.signal import SignalResult, SignalStatus, atrn_domains, due, judge, verb


class DueTests(SynchronousTestCase):
    """
    Edge case 11 of the dequeue notes: the "every N runs" counter.
    """

    def test_zero_is_every_run(self) -> None:
        """0 (and 1) signal on every run."""
        self.assertEqual([due(n, 0) for n in range(1, 6)], [True] * 5)
        self.assertEqual([due(n, 1) for n in range(1, 6)], [True] * 5)

    def test_every_third_run(self) -> None:
        """N = 3 signals on runs 1, 4, 7: the first run after a start signals at once."""
        self.assertEqual([n for n in range(1, 11) if due(n, 3)], [1, 4, 7, 10])


class VerbTests(SynchronousTestCase):
    """The verb of a text."""

    def test_verb(self) -> None:
        """The first word, upper case; empty for an empty text."""
        self.assertEqual(verb("etrn example.com"), "ETRN")
        self.assertEqual(verb("QSND x"), "QSND")
        self.assertEqual(verb(""), "")


class ATRNDomainsTests(SynchronousTestCase):
    """The domains of an ATRN text."""

    def test_not_atrn(self) -> None:
        """Other texts are no ATRN."""
        self.assertIsNone(atrn_domains("ETRN a.example"))
        self.assertIsNone(atrn_domains("ATRNX a.example"))

    def test_bare(self) -> None:
        """A bare ATRN asks for every domain of the login."""
        self.assertEqual(atrn_domains("ATRN"), ())

    def test_list(self) -> None:
        """Case and trailing dots are dropped, repeats too, the order is kept."""
        self.assertEqual(
            atrn_domains("atrn B.Example.,a.example,b.example"), ("b.example", "a.example")
        )

    def test_malformed(self) -> None:
        """An empty element, a space after a comma or a non-domain is refused."""
        for text in (
            "ATRN a.example,",
            "ATRN ,a.example",
            "ATRN a.example, b.example",
            "ATRN a..example",
            "ATRN a_b.example",
        ):
            with self.subTest(text=text):
                self.assertRaises(ValueError, atrn_domains, text)


class JudgeTests(SynchronousTestCase):
    """
    Edge cases 13 and 31: every ETRN code of RFC 1985 and the ATRN codes of RFC 2645.
    """

    def test_etrn(self) -> None:
        """250, 252, 253 sent; 251 nothing waiting; 458, 459, 500, 501, 502, 503, 554 refused."""
        self.assertEqual(
            {code: judge("ETRN", code) for code in (250, 251, 252, 253, 458, 459, 500, 501)},
            {
                250: SignalStatus.SENT,
                251: SignalStatus.NO_MAIL,
                252: SignalStatus.SENT,
                253: SignalStatus.SENT,
                458: SignalStatus.REFUSED,
                459: SignalStatus.REFUSED,
                500: SignalStatus.REFUSED,
                501: SignalStatus.REFUSED,
            },
        )
        for code in (502, 503, 530, 554):
            self.assertEqual(judge("ETRN", code), SignalStatus.REFUSED)

    def test_atrn(self) -> None:
        """
        A single-line 250 turns; a multi-line one does not; 453 is no error; 450, 451, 502,
        530 are refusals.
        """
        self.assertEqual(judge("ATRN", 250), SignalStatus.RELEASED)
        self.assertEqual(judge("ATRN", 250, single_line=False), SignalStatus.REFUSED)
        self.assertEqual(judge("ATRN", 453), SignalStatus.NO_MAIL)
        for code in (450, 451, 502, 530):
            self.assertEqual(judge("ATRN", code), SignalStatus.REFUSED)

    def test_other_text(self) -> None:
        """QSND or any text: a 2xx is sent, the rest refused; 251 means nothing special."""
        self.assertEqual(judge("QSND", 250), SignalStatus.SENT)
        self.assertEqual(judge("QSND", 251), SignalStatus.SENT)
        self.assertEqual(judge("QSND", 500), SignalStatus.REFUSED)

    def test_ok(self) -> None:
        """Sent, nothing waiting and released are fine; the rest are not."""
        good = {s for s in SignalStatus if SignalResult("d.example", s).ok}
        self.assertEqual(good, {SignalStatus.SENT, SignalStatus.NO_MAIL, SignalStatus.RELEASED})
