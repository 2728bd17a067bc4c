# -*- test-case-name: tests.directory.test_model -*-
"""
The account record that every directory backend returns.
"""

from __future__ import annotations

import attrs

from mdtwist.secret import Secret


@attrs.frozen
class Account:
    """
    One mailbox account.

    @ivar address: the primary address, domain lower-case.
    @ivar mailbox: the local part of the primary address.
    @ivar domain: the domain of the primary address, lower-case.
    @ivar login: the name the user logs in with (the primary address unless the directory has
        a separate login name).
    @ivar aliases: further addresses delivered to this account.
    @ivar display_name: the full name, for client settings and headers.
    @ivar first_name: the given name.
    @ivar last_name: the surname.
    @ivar enabled: whether the account may receive mail and log in.
    @ivar smarthost_login: this account's own smart-host login, if it has one.
    @ivar smarthost_password: the password that goes with L{smarthost_login}.
    @ivar gateway_login: the ODMR/ATRN login for a gateway account, if any.
    """

    address: str
    mailbox: str
    domain: str
    login: str
    aliases: tuple[str, ...] = ()
    display_name: str = ""
    first_name: str = ""
    last_name: str = ""
    enabled: bool = True
    smarthost_login: str | None = None
    smarthost_password: Secret | None = None
    gateway_login: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        """
        The primary address followed by the aliases.
        """
        return (self.address, *self.aliases)
