"""
mdtwist: a Twisted mail server for organisations spread over several sites.
"""

__version__ = "0.1.0"
