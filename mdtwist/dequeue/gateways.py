# -*- test-case-name: tests.dequeue.test_gateways -*-
"""
Gateway domains, the provider side of dequeuing: who may release which held mail, and the
grammar and replies of ETRN (RFC 1985) and ATRN (RFC 2645).

A gateway domain is a domain whose mail we accept as its MX and hold (route
C{GATEWAY_HOLD}) until its owner asks for it: with ETRN we deliver it over new connections,
with ATRN (on the ODMR listener) the owner's own connection is turned round and we deliver
over it. Each gateway has a login (its domain name unless configured) and a password; the
domains of one login are released together by a bare C{ATRN}. The grammar and the replies of
the two commands are in L{mdtwist.dequeue.requests}.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

import attrs

from mdtwist.ipaddr import Network, in_networks
from mdtwist.secret import Secret

#: An LDH domain name as ETRN and ATRN carry it (no address literals, no trailing dot).
_DOMAIN = re.compile(
    r"(?i)^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)

#: Hold times are given in days.
DAY = 86400.0


class EtrnTarget(enum.Enum):
    """
    Where ETRN sends a gateway's held mail.

    @cvar MX: wherever remote delivery takes the domain (its MX, else its address records).
    @cvar REQUESTER: the address the ETRN came from, on C{etrn_port}; needs authentication.
    @cvar HOST: the host configured in C{etrn_host} (address records, never MX).
    """

    MX = "mx"
    REQUESTER = "requester"
    HOST = "host"


@attrs.frozen
class Gateway:
    """
    One gateway domain (C{[[gateway]]}).

    @ivar domain: the domain, lower case.
    @ivar login: the login that releases it (its domain unless configured), lower case.
    @ivar password: the password of the login; L{None} when none is set (then nobody can
        authenticate as it).
    @ivar honour_etrn: whether ETRN releases its mail.
    @ivar honour_atrn: whether ATRN releases its mail.
    @ivar etrn_requires_auth: whether ETRN needs an authenticated session of its login.
    @ivar auth_any_address: whether an authenticated request is valid from any address
        (otherwise C{allowed_networks} applies to it too).
    @ivar allowed_networks: where requests may come from; empty for anywhere.
    @ivar one_atrn_session: whether only one ATRN session at a time may release it.
    @ivar etrn_target: where ETRN sends its mail.
    @ivar etrn_host: with L{EtrnTarget.HOST}, the host as C{host}, C{[host]}, C{host:port}.
    @ivar etrn_port: the port ETRN delivers to with L{EtrnTarget.REQUESTER}.
    @ivar hold_time: seconds its mail is held before it bounces.
    """

    domain: str
    login: str
    password: Secret | None = None
    honour_etrn: bool = True
    honour_atrn: bool = True
    etrn_requires_auth: bool = True
    auth_any_address: bool = True
    allowed_networks: tuple[Network, ...] = ()
    one_atrn_session: bool = False
    etrn_target: EtrnTarget = EtrnTarget.MX
    etrn_host: str = ""
    etrn_port: int = 25
    hold_time: float = 7 * DAY

    def address_allowed(self, address: str, authenticated: bool) -> bool:
        """
        Tell whether a request for this gateway may come from an address.

        @param address: the client IP.
        @param authenticated: whether the session authenticated as this gateway's login.
        @return: whether the address is allowed.
        """
        if not self.allowed_networks or (authenticated and self.auth_any_address):
            return True
        return in_networks(address, self.allowed_networks)


@attrs.frozen
class ProviderSettings:
    """
    The provider side's settings beside the gateways (C{[provider]}).

    @ivar odmr_listen: the ODMR listener's endpoint (port 366), C{""} for none.
    @ivar etrn_per_session: the most ETRN commands one session may give.
    @ivar idle_timeout: seconds the ODMR listener waits for a command.
    @ivar turned_timeout: seconds we wait for each reply of the customer after the turn.
    """

    odmr_listen: str = ""
    etrn_per_session: int = 5
    idle_timeout: float = 300.0
    turned_timeout: float = 300.0


def normalise_domain(name: str) -> str | None:
    """
    @param name: a domain as a client wrote it.
    @return: the domain in lower case without a trailing dot, or L{None} when it is not an
        LDH domain name.
    """
    if name.endswith("."):
        name = name[:-1]
    if not _DOMAIN.match(name):
        return None
    return name.lower()


def is_under(domain: str, parent: str) -> bool:
    """
    @param domain: a domain, lower case.
    @param parent: another, lower case.
    @return: whether C{domain} is C{parent} or one of its subdomains.
    """
    return domain == parent or domain.endswith("." + parent)


class GatewayBook:
    """
    The configured gateways, looked up by domain and by login.
    """

    def __init__(self, gateways: Iterable[Gateway]) -> None:
        """
        @param gateways: the gateways; their domains must differ.
        """
        self._by_domain = {g.domain: g for g in gateways}

    def __bool__(self) -> bool:
        return bool(self._by_domain)

    @property
    def gateways(self) -> tuple[Gateway, ...]:
        """Every gateway, in domain order."""
        return tuple(self._by_domain[d] for d in sorted(self._by_domain))

    def domains(self) -> frozenset[str]:
        """@return: every gateway domain."""
        return frozenset(self._by_domain)

    def find(self, domain: str) -> Gateway | None:
        """
        @param domain: a domain, lower case.
        @return: its gateway, or L{None}.
        """
        return self._by_domain.get(domain)

    def of_login(self, login: str) -> tuple[Gateway, ...]:
        """
        @param login: a gateway login.
        @return: the gateways it releases (compared without case).
        """
        login = login.lower()
        return tuple(g for g in self.gateways if g.login == login)

    def secrets(self) -> dict[str, Secret]:
        """@return: the password of every login that has one, for the login portal."""
        return {g.login: g.password for g in self.gateways if g.password is not None}

    def hold_time(self, domain: str) -> float | None:
        """
        @param domain: a gateway domain (a held recipient's route target).
        @return: how long its mail is held, or L{None} for a domain no longer configured.
        """
        gateway = self._by_domain.get(domain)
        return None if gateway is None else gateway.hold_time

    def etrn_matches(self, domain: str, subdomains: bool) -> tuple[Gateway, ...]:
        """
        @param domain: the domain an ETRN names, normalised (L{normalise_domain}).
        @param subdomains: whether it was written C{@domain}.
        @return: the gateways it names: the domain itself, and with C{@} every gateway under it.
        """
        if subdomains:
            return tuple(g for g in self.gateways if is_under(g.domain, domain))
        gateway = self._by_domain.get(domain)
        return () if gateway is None else (gateway,)
