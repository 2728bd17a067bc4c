"""
Tests for L{mdtwist.privileges}: what start-up made as root goes to the server's user.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import load_config
from mdtwist.privileges import Owner, hand_over, service_owner
from mdtwist.tap import Options, build
from tests.support.tls import make_certificate

_ETC = Path(__file__).resolve().parents[1] / "etc"
_NOBODY = pwd.getpwnam("nobody")


class ServiceOwnerTests(SynchronousTestCase):
    """
    L{service_owner} reads twistd's C{--uid} and C{--gid} as twistd applies them.
    """

    def test_no_switch(self) -> None:
        """
        Without twistd, without C{--uid}, with C{--uid 0} or when not root: no switch.
        """
        self.assertIsNone(service_owner(None, 0))
        self.assertIsNone(service_owner({"uid": None, "gid": None}, 0))
        self.assertIsNone(service_owner({"uid": 0, "gid": None}, 0))
        self.assertIsNone(service_owner({"uid": 1000, "gid": 1000}, 1000))

    def test_uid_and_gid(self) -> None:
        """
        Both given: both used; only the user: its primary group, as twistd does.
        """
        self.assertEqual(service_owner({"uid": 1234, "gid": 99}, 0), Owner(1234, 99))
        self.assertEqual(
            service_owner({"uid": _NOBODY.pw_uid, "gid": None}, 0),
            Owner(_NOBODY.pw_uid, _NOBODY.pw_gid),
        )


class HandOverTests(SynchronousTestCase):
    """
    L{hand_over} and L{build}: the spool start-up made and an empty Maildir root belong to
    the server's user afterwards; a Maildir root that holds something is left alone.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise AssertionError("these tests change file owners and must run as root")
        self.root = Path(self.mktemp())
        (self.root / "etc").mkdir(parents=True)
        shutil.copy(_ETC / "accounts.toml", self.root / "etc")
        make_certificate(self.root / "var" / "tls")
        self.config = self.root / "etc" / "mdtwist.toml"
        self.config.write_text((_ETC / "mdtwist.toml").read_text())
        self.owner = Owner(_NOBODY.pw_uid, _NOBODY.pw_gid)

    def test_build_hands_over(self) -> None:
        """
        After L{build} with an owner, every file in the spool and the new Maildir root
        belong to that owner.
        """
        options = Options()
        options.parseOptions(["--config", str(self.config)])
        build(options, MemoryReactorClock(), stderr=io.StringIO(), owner=self.owner)
        spool = self.root / "var" / "spool"
        paths = [spool, *spool.rglob("*"), self.root / "var" / "mail"]
        self.assertGreater(len(paths), 2)
        for path in paths:
            info = path.lstat()
            self.assertEqual((info.st_uid, info.st_gid), (self.owner.uid, self.owner.gid), path)

    def test_used_maildir_root_left_alone(self) -> None:
        """
        A Maildir root of root's that holds something keeps its owner; other users' files
        in the spool keep theirs.
        """
        config = load_config(self.config)
        mail = self.root / "var" / "mail"
        (mail / "example.test").mkdir(parents=True)
        spool = self.root / "var" / "spool"
        spool.mkdir(parents=True)
        (spool / "theirs").write_text("x")
        os.chown(spool / "theirs", 4321, 4321)
        changed = hand_over(config, self.owner)
        self.assertEqual([path.resolve() for path in changed], [spool.resolve()])
        self.assertEqual(mail.stat().st_uid, 0)
        self.assertEqual((spool / "theirs").stat().st_uid, 4321)
