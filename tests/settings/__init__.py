"""Tests for mdtwist.settings."""
