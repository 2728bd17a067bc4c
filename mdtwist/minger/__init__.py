"""
The Minger address-verification protocol: the wire codec, a UDP server and a UDP client.
"""
