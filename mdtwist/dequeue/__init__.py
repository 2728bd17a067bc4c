"""
Dequeuing: mail held until released on request by ETRN or ATRN (RFC 1985, RFC 2645).

The office side signals the host that holds our mail (L{mdtwist.dequeue.signal},
L{mdtwist.dequeue.client}, L{mdtwist.dequeue.service}, L{mdtwist.dequeue.control}); the
provider side holds the mail of gateway domains until they ask (L{mdtwist.dequeue.gateways},
L{mdtwist.dequeue.held}, L{mdtwist.dequeue.release}, L{mdtwist.dequeue.provider}).
"""
