"""
Client settings: managed centrally, served to mail clients (MC JSON, autoconfig, Autodiscover,
Apple profiles) and advised as DNS SRV records.
"""
