"""
Dequeuing: gateway domains whose mail we hold until released by ETRN or ATRN (the provider
side: L{mdtwist.dequeue.gateways}, L{mdtwist.dequeue.held}, L{mdtwist.dequeue.release},
L{mdtwist.dequeue.provider}).
"""
