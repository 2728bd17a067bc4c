"""
Delivery of queued messages: local mailboxes now, remote hosts later.
"""
