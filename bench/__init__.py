"""
Benchmarks of mdtwist against real peers; numbers are printed, never asserted.
"""
