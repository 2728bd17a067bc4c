"""The sans-IO SMTP core: bytes in, events out; replies in, bytes out. No Twisted here."""
