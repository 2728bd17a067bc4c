"""
Tests for L{mdtwist.dequeue}.
"""
