"""
SMTP: the sans-IO protocol core and its Twisted glue.
"""
