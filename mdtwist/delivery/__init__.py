"""
Delivery of queued messages: the queue runner and its retry schedule, local mailboxes, remote
hosts (MX, smart host, Domain Sharing peers) and the delivery status notices.
"""
