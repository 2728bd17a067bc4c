"""
Tests for the twistd plugin in C{twisted/plugins/mdtwist_plugin.py}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.config import default_config_file


class PluginTests(SynchronousTestCase):
    """
    twistd finds the mdtwist plugin.
    """

    def test_found(self) -> None:
        """
        getPlugins(IServiceMaker) yields the plugin with tapname mdtwist, which provides both
        IServiceMaker and IPlugin and parses --config.
        """
        [plugin] = [p for p in getPlugins(IServiceMaker) if p.tapname == "mdtwist"]
        self.assertTrue(verifyObject(IServiceMaker, plugin))
        self.assertTrue(verifyObject(IPlugin, plugin))
        options = plugin.options()
        options.parseOptions(["--config", "x.toml", "--check"])
        self.assertEqual(options["config"], "x.toml")
        self.assertTrue(options["check"])

    def test_default_config(self) -> None:
        """
        Without C{--config}, the first of C{etc/mdtwist.toml} and
        C{/etc/mdtwist/mdtwist.toml} that exists is used (the first when neither does).
        """
        [plugin] = [p for p in getPlugins(IServiceMaker) if p.tapname == "mdtwist"]
        options = plugin.options()
        options.parseOptions(["--check"])
        self.assertEqual(options["config"], str(default_config_file()))
        root = Path(self.mktemp())
        root.mkdir()
        first, second = root / "a.toml", root / "b.toml"
        self.assertEqual(default_config_file((first, second)), first)
        second.write_text("")
        self.assertEqual(default_config_file((first, second)), second)
        first.write_text("")
        self.assertEqual(default_config_file((first, second)), first)
