"""
Tests for the twistd plugin in C{twisted/plugins/mdtwist_plugin.py}.
"""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject


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
