# -*- test-case-name: tests.directory.test_mailbox -*-
"""
Which local mailbox an address reaches: the account that has it, or the postmaster's mailbox.

The receive policy calls L{find_mailbox} when it accepts a local recipient, and the queue runner
calls it again with the stored route's target when it delivers, so both find the same account.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from mdtwist.route import is_postmaster

if TYPE_CHECKING:
    from mdtwist.directory.model import Account
    from mdtwist.interfaces import IDirectory


async def find_mailbox(
    directory: IDirectory,
    address: str,
    *,
    postmaster: str | None,
    local_domains: Collection[str],
) -> Account | None:
    """
    Find the account whose mailbox receives mail for a local address.

    An account that has the address itself (primary address or alias) wins. Otherwise a bare
    C{postmaster}, or C{postmaster} at any local domain, reaches the configured postmaster
    mailbox.

    @param directory: the account directory.
    @param address: the recipient address (a bare C{postmaster} is allowed).
    @param postmaster: the configured postmaster mailbox, or L{None}.
    @param local_domains: the local domains, lower-case.
    @return: the account, or L{None} when no mailbox receives this address.
    @raise mdtwist.errors.DirectoryUnavailable: when the directory cannot answer.
    """
    account = await directory.find(address) if "@" in address else None
    if account is None and postmaster is not None and is_postmaster(address, local_domains):
        account = await directory.find(postmaster)
    return account
