"""Tests for L{mdtwist.control}."""
