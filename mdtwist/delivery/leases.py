# -*- test-case-name: tests.dequeue.test_held -*-
"""
Message leases of one spool shard: who is sending a message right now.

The queue runner and the gateway releases (ETRN, ATRN: L{mdtwist.dequeue.held}) take a
message's lease before they deliver any of its recipients and give it back afterwards; a message
whose lease is taken is left alone. A shard's messages are only ever leased in the process that
owns the shard (an ATRN in another process asks this one over the control channel), so one
lease per message holds across every process.

A release that finds a message leased (the queue runner is looking at it, an operator is
acting on it) asks to be told when the lease is given back (L{Leases.when_free}), so that
it does not silently leave the message held.
"""

from __future__ import annotations

from collections.abc import Callable


class Leases:
    """
    The leases of one shard's messages, in memory.
    """

    def __init__(self) -> None:
        self._holders: dict[str, str] = {}
        self._waiting: dict[str, list[Callable[[], object]]] = {}

    def take(self, queue_id: str, holder: str) -> bool:
        """
        Take a message's lease.

        @param queue_id: the message.
        @param holder: who takes it (the queue runner, an ATRN session...).
        @return: whether it was free (or held by C{holder} already) and is now C{holder}'s.
        """
        current = self._holders.setdefault(queue_id, holder)
        return current == holder

    def give_back(self, queue_id: str, holder: str) -> None:
        """
        Give a lease back; nothing happens when C{holder} does not have it.

        @param queue_id: the message.
        @param holder: who gives it back.
        """
        if self._holders.get(queue_id) == holder:
            del self._holders[queue_id]
            self._freed(queue_id)

    def give_back_all(self, holder: str) -> list[str]:
        """
        Give back every lease of a holder (an ATRN session that ended).

        @param holder: the holder.
        @return: the messages it held.
        """
        mine = [queue_id for queue_id, who in self._holders.items() if who == holder]
        for queue_id in mine:
            del self._holders[queue_id]
        for queue_id in mine:
            self._freed(queue_id)
        return mine

    def when_free(self, queue_id: str, callback: Callable[[], object]) -> None:
        """
        Call C{callback} once the message's lease is free: now when it is, else when its
        holder gives it back (the callbacks waiting are called in order, and the first may
        take the lease again).

        @param queue_id: the message.
        @param callback: called with no argument.
        """
        if queue_id in self._holders:
            self._waiting.setdefault(queue_id, []).append(callback)
        else:
            callback()

    def _freed(self, queue_id: str) -> None:
        for callback in self._waiting.pop(queue_id, ()):
            callback()

    def holder(self, queue_id: str) -> str | None:
        """
        @param queue_id: a message.
        @return: who has its lease, or L{None}.
        """
        return self._holders.get(queue_id)
