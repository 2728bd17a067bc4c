# -*- test-case-name: tests.settings.test_web -*-
"""
The HTTP side of client settings (twisted.web).

Paths (matched without regard to case, a final slash ignored):

  - C{GET /mc/v1/settings}: the caller's merged, expanded settings document with C{ETag};
    C{If-None-Match} with that tag (alone, in a list, or in its C{W/} form) gets C{304}.
    HTTP Basic over TLS only. A client may name its version in the C{MC-Client-Version}
    header: older than 4.0 gets 404 C{client-too-old}, older than 5.0 no add-ins screen.
  - C{POST /mc/v1/settings/ack}: C{{"version": ..., "client": ..., "client_version": ...}}
    records what a client applied (C{204}).
  - C{GET /mc/v1/macros}, C{GET /mc/v1/schema.json}: the macro reference and the fields.
  - C{GET /mc/v1/apple.mobileconfig}: the caller's Apple profile (Basic over TLS), signed when
    a signing certificate is configured.
  - C{GET /mail/config-v1.1.xml}, C{/.well-known/autoconfig/mail/config-v1.1.xml},
    C{/.well-known/mail-v1.xml}: Thunderbird autoconfig, public, with or without
    C{emailaddress}; the same answer for every local part of a domain.
  - C{POST /autodiscover/autodiscover.xml}: Outlook's POX Autodiscover (C{GET}: error 600);
    C{GET /autodiscover/autodiscover.json...}: the JSON shim.

Errors are JSON bodies (C{{"error": CODE, "message": TEXT}}), never HTML pages: plain HTTP
where TLS is needed 403, no or wrong credentials 401, too many failed logins 429, feature off
404, directory down 503.

Autoconfig, Autodiscover and the Apple profile work whether or not the push is on: they come
from the same settings, whose defaults are the server's own listeners.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

import attrs
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override

from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable, LoginThrottled
from mdtwist.interfaces import ISettingsSource
from mdtwist.settings import render
from mdtwist.settings.model import (
    MacroContext,
    client_supported,
    macro_reference,
    parse_client_version,
    schema_reference,
    served_document,
    source_hash,
)
from mdtwist.settings.store import ReceiptStore

_log = Logger()

#: The largest request body read (Autodiscover requests, acks).
MAX_BODY = 65536

#: Seconds a client is told to wait after too many failed logins.
RETRY_AFTER = 60

#: Seconds between checks of the settings files for changes.
REFRESH_INTERVAL = 1.0

_AUTOCONFIG_PATHS = {
    ("mail", "config-v1.1.xml"),
    (".well-known", "autoconfig", "mail", "config-v1.1.xml"),
    (".well-known", "mail-v1.xml"),
}


class ILoginPortal(Protocol):
    """
    Checks a login and password (the server's login portal, with its brute-force limits).
    """

    def login(
        self, client_address: str, login: str, password: str, *, service: str
    ) -> Deferred[Account]:
        """
        @return: a Deferred firing with the account, or failing with L{UnauthorizedLogin},
            L{LoginThrottled} or L{DirectoryUnavailable}.
        """


class _Answer(Exception):
    # Ends a request with a JSON error.
    def __init__(self, code: int, error: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.message = message
        self.headers = headers


def parse_if_none_match(header: str) -> tuple[str, ...] | None:
    """
    Read an C{If-None-Match} header (RFC 9110 13.1.2).

    @param header: the header's value (several headers joined by commas).
    @return: the opaque tags (with quotes, without C{W/}); L{None} for C{*}.
    """
    if header.strip() == "*":
        return None
    return tuple(
        match.group(1) for match in re.finditer(r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")', header)
    )


def none_match(header: str | None, etag: str) -> bool:
    """
    Whether a strong tag matches an C{If-None-Match} header by weak comparison, as the header
    requires.

    @param header: the header, or L{None} when absent.
    @param etag: the current tag, with quotes.
    @return: whether the client already has this version (so C{304}).
    """
    if header is None:
        return False
    tags = parse_if_none_match(header)
    return tags is None or etag in tags


@attrs.frozen
class _Route:
    handler: Callable[[Request], Any]
    methods: frozenset[bytes]


class SettingsResource(Resource):
    """
    Every path of the client-settings service, routed by the whole path.
    """

    isLeaf = True  # noqa: N815 - the name Twisted reads

    def __init__(
        self,
        source: ISettingsSource,
        portal: ILoginPortal,
        hosted_domains: Callable[[], Deferred[frozenset[str]]],
        receipts: ReceiptStore | None,
        run: Callable[..., Deferred[Any]],
        clock: IReactorTime,
        *,
        sign_profile: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """
        @param source: the merged settings of each domain.
        @param portal: checks logins (service C{http}).
        @param hosted_domains: the local domains (the directory's).
        @param receipts: where served and applied versions are recorded, if anywhere.
        @param run: runs blocking receipt writes on a thread pool.
        @param clock: the time of receipts and of the settings files' checks.
        @param sign_profile: signs Apple profiles; L{None}: they are served unsigned.
        """
        super().__init__()
        self.source = source
        self.portal = portal
        self.hosted_domains = hosted_domains
        self.receipts = receipts
        self.run = run
        self.clock = clock
        self.sign_profile = sign_profile
        self._checked_at: float | None = None
        get = frozenset({b"GET", b"HEAD"})
        self._routes: dict[tuple[str, ...], _Route] = {
            ("mc", "v1", "settings"): _Route(self._settings, get),
            ("mc", "v1", "settings", "ack"): _Route(self._ack, frozenset({b"POST"})),
            ("mc", "v1", "macros"): _Route(self._macros, get),
            ("mc", "v1", "schema.json"): _Route(self._schema, get),
            ("mc", "v1", "apple.mobileconfig"): _Route(self._mobileconfig, get),
            ("autodiscover", "autodiscover.xml"): _Route(
                self._autodiscover, frozenset({b"GET", b"POST"})
            ),
        }
        for path in _AUTOCONFIG_PATHS:
            self._routes[path] = _Route(self._autoconfig, get)

    # --- dispatch -----------------------------------------------------------------------------

    @override
    def render(self, request: Request) -> bytes | int:
        path = tuple(
            part.decode("utf-8", "replace").lower() for part in request.postpath or () if part
        )
        route = self._routes.get(path)
        if route is None and path[:2] == ("autodiscover", "autodiscover.json"):
            route = _Route(self._autodiscover_json, frozenset({b"GET", b"HEAD"}))
        if route is None:
            return _error(request, _Answer(404, "not-found", "no such resource"))
        if request.method not in route.methods:
            allowed = ", ".join(sorted(m.decode() for m in route.methods))
            return _error(
                request, _Answer(405, "method-not-allowed", "method not allowed", Allow=allowed)
            )
        self._refresh()
        try:
            result = route.handler(request)
        except _Answer as answer:
            return _error(request, answer)
        except Exception:
            _log.failure("client-settings request failed")
            return _error(request, _Answer(500, "internal-error", "internal error"))
        if isinstance(result, Deferred):
            finished = [False]
            request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

            def answered(body: bytes) -> None:
                if not finished[0]:
                    request.write(body)
                    request.finish()

            def failed(failure: Failure) -> None:
                if finished[0]:
                    return
                if not failure.check(_Answer):
                    _log.failure("client-settings request failed", failure)
                    failure = Failure(_Answer(500, "internal-error", "internal error"))
                request.write(_error(request, failure.value))
                request.finish()

            result.addCallbacks(answered, failed)
            return NOT_DONE_YET
        assert isinstance(result, bytes)
        return result

    def _refresh(self) -> None:
        # Hand edits and mdtwistctl saves are picked up within a second.
        now = self.clock.seconds()
        if self._checked_at is not None and now - self._checked_at < REFRESH_INTERVAL:
            return
        self._checked_at = now
        problems = self.source.refresh()
        for problem in problems:
            _log.error("client settings not reloaded: {problem}", problem=problem)

    # --- authentication -----------------------------------------------------------------------

    def _require_tls(self, request: Request) -> None:
        if not request.isSecure():
            raise _Answer(403, "tls-required", "this resource is served over HTTPS only")

    def _authenticate(self, request: Request) -> Deferred[Account]:
        header = request.getHeader("authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        challenge = {"WWW-Authenticate": 'Basic realm="mdtwist", charset="UTF-8"'}
        if scheme.lower() != "basic":
            raise _Answer(401, "unauthorized", "credentials required", **challenge)
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _Answer(401, "unauthorized", "malformed credentials", **challenge) from None
        login, colon, password = decoded.partition(":")
        if not colon or not login:
            raise _Answer(401, "unauthorized", "malformed credentials", **challenge)
        peer = request.getClientAddress()
        address = getattr(peer, "host", "") or ""

        def refused(failure: Failure) -> Account:
            if failure.check(UnauthorizedLogin):
                raise _Answer(401, "unauthorized", "wrong login or password", **challenge)
            if failure.check(LoginThrottled):
                raise _Answer(
                    429,
                    "too-many-failures",
                    "too many failed logins; try again later",
                    **{"Retry-After": str(int(RETRY_AFTER))},
                )
            if failure.check(DirectoryUnavailable):
                raise _Answer(
                    503, "directory-unavailable", "try again later", **{"Retry-After": "30"}
                )
            failure.raiseException()
            raise AssertionError("unreachable")

        return maybeDeferred(
            self.portal.login, address, login, password, service="http"
        ).addErrback(refused)

    def _context(self, account: Account) -> MacroContext:
        facts = self.source.facts
        return MacroContext(
            address=account.address,
            display_name=account.display_name,
            first_name=account.first_name,
            last_name=account.last_name,
            fqdn=facts.hostname,
            domain_ip=facts.domain_ips.get(account.domain, ""),
            machine_name=facts.machine_name,
        )

    # --- the MC settings ----------------------------------------------------------------------

    def _settings(self, request: Request) -> Deferred[bytes]:
        self._require_tls(request)
        if not self.source.push_anywhere():
            raise _Answer(404, "push-disabled", "client settings are not pushed")
        version_header = request.getHeader("mc-client-version")
        client_version = parse_client_version(version_header) if version_header else None

        def authenticated(account: Account) -> bytes:
            merged = self.source.merged(account.domain)
            if not merged.values["policy.push_enabled"]:
                raise _Answer(404, "push-disabled", "client settings are not pushed")
            if not client_supported(client_version):
                raise _Answer(404, "client-too-old", "this client version gets no settings")
            document = served_document(merged, self._context(account), client_version)
            etag = f'"{document["version"]}"'
            request.setHeader("ETag", etag)
            request.setHeader("Cache-Control", "private, no-cache")
            request.setHeader("Vary", "Authorization")
            self._record_served(account.address, document["version"], source_hash(merged))
            if none_match(request.getHeader("if-none-match"), etag):
                request.setResponseCode(304)
                return b""
            return _json(request, document)

        return self._authenticate(request).addCallback(authenticated)

    def _record_served(self, account: str, version: str, source: str) -> None:
        receipts = self.receipts
        if receipts is None:
            return
        self.run(
            receipts.record_served, account, version, source, self.clock.seconds()
        ).addErrback(lambda f: _log.failure("cannot record a served settings version", f))

    def _ack(self, request: Request) -> Deferred[bytes]:
        self._require_tls(request)
        if not self.source.push_anywhere():
            raise _Answer(404, "push-disabled", "client settings are not pushed")
        body = _body(request)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise _Answer(400, "bad-request", "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise _Answer(400, "bad-request", "the body must be a JSON object")
        fields = {}
        for name, default in (("version", None), ("client", "unnamed"), ("client_version", "")):
            value = data.get(name, default)
            if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
                raise _Answer(400, "bad-request", f"{name}: a short printable string is needed")
            fields[name] = value

        def authenticated(account: Account) -> Deferred[bytes]:
            if self.receipts is None:
                request.setResponseCode(204)
                return succeed(b"")
            recorded = self.run(
                self.receipts.record_applied,
                account.address,
                fields["client"],
                fields["version"],
                fields["client_version"],
                self.clock.seconds(),
            )

            def done(_: None) -> bytes:
                request.setResponseCode(204)
                return b""

            return recorded.addCallback(done)

        return self._authenticate(request).addCallback(authenticated)

    def _macros(self, request: Request) -> bytes:
        return _json(request, {"macros": macro_reference()})

    def _schema(self, request: Request) -> bytes:
        return _json(request, {"fields": schema_reference()})

    # --- standard formats ---------------------------------------------------------------------

    def _domain(self, request: Request, address: str | None) -> Deferred[str]:
        # The domain asked about: the address's, else the Host's (without autoconfig. or
        # autodiscover.), else the first hosted domain.
        host = _host(request)
        candidates = []
        if address and "@" in address:
            candidates.append(address.rpartition("@")[2].strip().lower().rstrip("."))
        if host:
            name = host.rpartition(":")[0] if re.search(r":\d+$", host) else host
            name = name.lower().rstrip(".")
            for prefix in ("autoconfig.", "autodiscover."):
                if name.startswith(prefix):
                    name = name[len(prefix) :]
            candidates += [name, name.partition(".")[2]]

        def choose(hosted: frozenset[str]) -> str:
            for candidate in candidates:
                if candidate in hosted:
                    return candidate
            return sorted(hosted)[0] if hosted else self.source.facts.hostname

        def unavailable(failure: Failure) -> str:
            failure.trap(DirectoryUnavailable)
            raise _Answer(503, "directory-unavailable", "try again later")

        return maybeDeferred(self.hosted_domains).addCallbacks(choose, unavailable)

    def _autoconfig(self, request: Request) -> Deferred[bytes]:
        address = _query(request, "emailaddress")

        def answer(domain: str) -> bytes:
            facts = self.source.facts
            profile = render.client_profile(
                self.source.merged(domain), domain, facts, render.placeholders(domain, facts)
            )
            request.setHeader("Content-Type", "text/xml; charset=utf-8")
            request.setHeader("Cache-Control", "public, max-age=3600")
            return render.autoconfig_xml(profile)

        return self._domain(request, address).addCallback(answer)

    def _autodiscover(self, request: Request) -> Deferred[bytes] | bytes:
        request.setHeader("Content-Type", "text/xml; charset=utf-8")
        if request.method != b"POST":
            return self._autodiscover_error(request, 600, "Invalid Request")
        try:
            address, schema = _autodiscover_request(_body(request))
        except ValueError:
            return self._autodiscover_error(request, 600, "Invalid Request")
        if schema.lower() != render.OUTLOOK_RESPONSE.lower():
            return self._autodiscover_error(request, 601, "Provider is not available")
        if request.getHeader("authorization") is not None:
            self._require_tls(request)

            def personal(account: Account) -> bytes:
                if address.lower() not in {a.lower() for a in account.addresses}:
                    return self._generic(request, address, account.domain)
                profile = render.client_profile(
                    self.source.merged(account.domain),
                    account.domain,
                    self.source.facts,
                    self._context(account),
                )
                request.setHeader("Content-Type", "text/xml; charset=utf-8")
                return render.autodiscover_xml(profile, personal=True)

            return self._authenticate(request).addCallback(personal)

        def generic(domain: str) -> bytes:
            return self._generic(request, address, domain)

        return self._domain(request, address).addCallback(generic)

    def _generic(self, request: Request, address: str, domain: str) -> bytes:
        # Built from the address asked about alone: the same for any local part, no names.
        if address.rpartition("@")[2].lower() != domain:
            return self._autodiscover_error(request, 600, "Invalid Request")
        facts = self.source.facts
        context = MacroContext(
            address=address,
            fqdn=facts.hostname,
            domain_ip=facts.domain_ips.get(domain, ""),
            machine_name=facts.machine_name,
        )
        profile = render.client_profile(self.source.merged(domain), domain, facts, context)
        request.setHeader("Content-Type", "text/xml; charset=utf-8")
        return render.autodiscover_xml(profile, personal=False)

    def _autodiscover_error(self, request: Request, code: int, message: str) -> bytes:
        seconds = self.clock.seconds()
        moment = (
            f"{int(seconds // 3600 % 24):02}:{int(seconds // 60 % 60):02}:{seconds % 60:09.6f}"
        )
        error_id = f"{int(seconds * 1000) & 0xFFFFFFFF:08x}"
        request.setHeader("Content-Type", "text/xml; charset=utf-8")
        return render.autodiscover_error(code, message, time=moment, error_id=error_id)

    def _autodiscover_json(self, request: Request) -> bytes:
        protocol = _query(request, "protocol")
        if (protocol or "").lower() != "autodiscoverv1":
            request.setResponseCode(400)
            return _json(
                request,
                {
                    "ErrorCode": "InvalidProtocol",
                    "ErrorMessage": "the protocol must be AutodiscoverV1",
                },
            )
        host = _host(request) or self.source.facts.hostname
        return _json(
            request, render.autodiscover_json(f"https://{host}/autodiscover/autodiscover.xml")
        )

    def _mobileconfig(self, request: Request) -> Deferred[bytes]:
        self._require_tls(request)

        def authenticated(account: Account) -> bytes:
            profile = render.client_profile(
                self.source.merged(account.domain),
                account.domain,
                self.source.facts,
                self._context(account),
            )
            request.setHeader("Content-Type", "application/x-apple-aspen-config")
            request.setHeader("Content-Disposition", 'attachment; filename="mail.mobileconfig"')
            request.setHeader("Cache-Control", "private, no-cache")
            data = render.mobileconfig(profile, self.source.facts.hostname)
            return data if self.sign_profile is None else self.sign_profile(data)

        return self._authenticate(request).addCallback(authenticated)


def _json(request: Request, value: object) -> bytes:
    request.setHeader("Content-Type", "application/json; charset=utf-8")
    return json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"


def _error(request: Request, answer: object) -> bytes:
    assert isinstance(answer, _Answer)
    request.setResponseCode(answer.code)
    for name, value in answer.headers.items():
        request.setHeader(name, value)
    request.setHeader("Cache-Control", "no-store")
    return _json(request, {"error": answer.error, "message": answer.message})


def _body(request: Request) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise _Answer(413, "too-large", f"the body is limited to {MAX_BODY} bytes")
    return data


def _query(request: Request, name: str) -> str | None:
    # A query parameter by name, without regard to the name's case.
    uri = request.uri.decode("utf-8", "replace")
    query = uri.partition("?")[2]
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key.lower() == name and values:
            return values[0]
    return None


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::\d{1,5})?")


def _host(request: Request) -> str:
    # The Host header when it is a plain host name (with an optional port), else "".
    host = (request.getHeader("host") or "").strip()
    return host if _HOST.fullmatch(host) else ""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _autodiscover_request(body: bytes) -> tuple[str, str]:
    # The EMailAddress and AcceptableResponseSchema of an Outlook request; ValueError when the
    # body is not one (DTDs and entities are refused outright).
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, SyntaxError, ValueError) as e:
        raise ValueError(str(e)) from None
    if _local(root.tag) != "Autodiscover":
        raise ValueError("not an Autodiscover request")
    address = schema = ""
    for element in root.iter():
        name = _local(element.tag)
        if name == "EMailAddress":
            address = (element.text or "").strip()
        elif name == "AcceptableResponseSchema":
            schema = (element.text or "").strip()
    if "@" not in address or not address.isprintable() or len(address) > 320:
        raise ValueError("no usable EMailAddress")
    return address, schema


def build_site(resource: SettingsResource) -> Site:
    """
    @param resource: the client-settings resource (a leaf: it gets every path, "/" too).
    @return: the site to listen with.
    """
    site = Site(resource)
    site.displayTracebacks = False
    return site
