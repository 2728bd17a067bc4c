"""
The durable spool: its values (L{mdtwist.spool.model}), its database schema and migrations
(L{mdtwist.spool.schema}) and the store (L{mdtwist.spool.store}). It imports nothing of
L{mdtwist.delivery}; the queue runner that delivers from it is L{mdtwist.delivery.runner}.
"""
