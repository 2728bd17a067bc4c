"""
The durable spool and the queue runner.
"""
