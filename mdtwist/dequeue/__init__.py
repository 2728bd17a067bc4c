"""
Dequeuing: held mail released on request (ETRN, ATRN/ODMR and other signals).
"""
