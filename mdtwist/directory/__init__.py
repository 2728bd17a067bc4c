"""
The account directory: a TOML file or an LDAP server, behind L{mdtwist.interfaces.IDirectory}.
"""
