"""
Domain Sharing: finding which peer server hosts an address of a shared domain.
"""
