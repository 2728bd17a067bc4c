"""
Tests for L{mdtwist.settings.web}: the endpoint's acceptance items, each as a named test,
through a real L{Site} fed raw HTTP bytes.
"""

from __future__ import annotations

import base64
import io
import json
import plistlib
from collections.abc import Callable
from http.client import HTTPResponse
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable, LoginThrottled
from mdtwist.settings.model import (
    GLOBAL,
    Security,
    ServerFacts,
    Service,
    SettingsDocument,
    check_value,
    source_hash,
)
from mdtwist.settings.render import AUTODISCOVER_RESPONSE, OUTLOOK_RESPONSE
from mdtwist.settings.store import (
    Policy,
    ReceiptStore,
    SettingsSource,
    SettingsStore,
    behind,
)
from mdtwist.settings.web import (
    SettingsResource,
    build_site,
    none_match,
    parse_if_none_match,
)

FACTS = ServerFacts(
    hostname="mail.example.test",
    imap=Service("mail.example.test", 993, Security.IMPLICIT_TLS),
    submission=(
        Service("mail.example.test", 465, Security.IMPLICIT_TLS),
        Service("mail.example.test", 587, Security.STARTTLS),
    ),
)

ALICE = Account(
    address="alice@example.test",
    mailbox="alice",
    domain="example.test",
    login="alice@example.test",
    display_name="Alice Smith",
    first_name="Alice",
    last_name="Smith",
)
CAROL = Account(
    address="carol@other.test", mailbox="carol", domain="other.test", login="carol@other.test"
)
PASSWORDS = {"alice@example.test": "alice-pw", "carol@other.test": "carol-pw"}

OUTLOOK_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


class FakePortal:
    """
    The login portal's contract, over a fixed table of accounts.
    """

    def __init__(self) -> None:
        self.accounts = {"alice@example.test": ALICE, "carol@other.test": CAROL}
        self.calls: list[tuple[str, str, str]] = []
        self.failure: Exception | None = None

    def login(
        self, client_address: str, login: str, password: str, *, service: str
    ) -> Deferred[Account]:
        self.calls.append((client_address, login, service))
        if self.failure is not None:
            return fail(self.failure)
        account = self.accounts.get(login)
        if account is None or PASSWORDS.get(login) != password:
            return fail(UnauthorizedLogin())
        return succeed(account)


class TCPTransport(StringTransport):
    """
    A string transport with the TCP option HTTPChannel sets.
    """

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        pass

    def getTcpNoDelay(self) -> bool:  # noqa: N802 - Twisted's name
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        pass

    def getTcpKeepAlive(self) -> bool:  # noqa: N802 - Twisted's name
        return False

    def loseWriteConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.loseConnection()


@implementer(ISSLTransport)
class TLSTransport(TCPTransport):
    """
    A transport that says it is TLS, as Twisted's TLS transport does.
    """

    def getPeerCertificate(self) -> None:  # noqa: N802 - Twisted's name
        return None


class _Socket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


class Response:
    """
    An HTTP response parsed by the standard library.
    """

    def __init__(self, raw: bytes, method: str) -> None:
        parsed = HTTPResponse(_Socket(raw), method=method)  # type: ignore[arg-type]
        parsed.begin()
        self.status = parsed.status
        self.headers = parsed.headers
        self.body = parsed.read()

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json; charset=utf-8"
        return json.loads(self.body)


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


class Harness:
    """
    A settings store in a temporary directory behind a real Site.
    """

    def __init__(self, directory: Path, *, push: bool = True, allow_override: bool = False):
        directory.mkdir(parents=True)
        self.store = SettingsStore(directory / "settings")
        self.store.load()
        self.portal = FakePortal()
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.receipts = ReceiptStore(directory / "receipts.sqlite")
        self.source = SettingsSource(
            self.store, FACTS, Policy(push_enabled=push, allow_override=allow_override)
        )
        self.hosted: Callable[[], Deferred[frozenset[str]]] = lambda: succeed(
            frozenset({"example.test", "other.test"})
        )
        self.resource = SettingsResource(
            self.source,
            self.portal,
            lambda: self.hosted(),
            self.receipts,
            lambda f, *a, **k: maybeDeferred(f, *a, **k),
            self.clock,
        )
        self.site = build_site(self.resource)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        secure: bool = True,
    ) -> Response:
        """
        Send one request and return the parsed response.
        """
        transport = TLSTransport() if secure else TCPTransport()
        protocol = self.site.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: mail.example.test", "Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self.clock.advance(0)
        return Response(transport.value(), method)

    def get_settings(self, user: str = "alice@example.test", **headers: str) -> Response:
        names = {"if_none_match": "If-None-Match", "mc_client_version": "MC-Client-Version"}
        sent = {names[k]: v for k, v in headers.items()}
        sent["Authorization"] = basic(user, PASSWORDS[user])
        return self.request("GET", "/mc/v1/settings", headers=sent)

    def set(self, scope: str, path: str, value: object) -> None:
        """
        Save a change as mdtwistctl does (and let a second pass so the server reloads).
        """
        document = self.store.document_or_empty(scope)
        if path == "inherit":
            changed = document.with_inherit(bool(value), "t")
        else:
            typed = None if value is None else check_value(path, value)
            changed = document.with_value(path, typed, "t")
        if changed is not document:
            self.store.save(changed)
        self.clock.advance(2)


class Base(SynchronousTestCase):
    push = True

    def setUp(self) -> None:
        self.h = Harness(Path(self.mktemp()), push=self.push)
        self.addCleanup(self.h.receipts.close)


class FeatureSwitchTests(Base):
    push = False

    def test_disabled_feature_is_404_json(self) -> None:
        """
        With the push off, GET /mc/v1/settings is 404 with a JSON body, before any login.
        """
        response = self.h.get_settings()
        self.assertEqual(response.status, 404)
        self.assertEqual(response.json()["error"], "push-disabled")
        self.assertEqual(self.h.portal.calls, [])

    def test_enabling_gives_200(self) -> None:
        """
        Enabling the push in the global document serves the settings.
        """
        self.h.set(GLOBAL, "policy.push_enabled", True)
        response = self.h.get_settings()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json()["account"], "alice@example.test")

    def test_domain_opt_in_only(self) -> None:
        """
        A domain that enables the push gets settings; the others still get 404.
        """
        self.h.set("other.test", "policy.push_enabled", True)
        self.assertEqual(self.h.get_settings("carol@other.test").status, 200)
        self.assertEqual(self.h.get_settings().status, 404)

    def test_standard_formats_work_with_push_off(self) -> None:
        """
        Autoconfig comes from the server's own listeners even when nothing is pushed.
        """
        response = self.h.request("GET", "/mail/config-v1.1.xml")
        self.assertEqual(response.status, 200)
        self.assertIn(b"<port>993</port>", response.body)


class AuthenticationTests(Base):
    def test_no_credentials_401_with_realm(self) -> None:
        """
        No Authorization header: 401 with a Basic challenge and a JSON body.
        """
        response = self.h.request("GET", "/mc/v1/settings")
        self.assertEqual(response.status, 401)
        self.assertEqual(
            response.headers["WWW-Authenticate"], 'Basic realm="mdtwist", charset="UTF-8"'
        )
        self.assertEqual(response.json()["error"], "unauthorized")

    def test_wrong_password_401(self) -> None:
        """
        A wrong password is 401; the login went through the portal as service http, with the
        client's address (for its brute-force limits).
        """
        response = self.h.request(
            "GET",
            "/mc/v1/settings",
            headers={"Authorization": basic("alice@example.test", "nope")},
        )
        self.assertEqual(response.status, 401)
        self.assertEqual(self.h.portal.calls, [("192.168.1.1", "alice@example.test", "http")])

    def test_malformed_credentials_401(self) -> None:
        """
        Credentials that are not base64 of login:password are 401, never a 500.
        """
        for header in ("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Bearer x"):
            response = self.h.request("GET", "/mc/v1/settings", headers={"Authorization": header})
            self.assertEqual(response.status, 401, header)

    def test_plain_http_403(self) -> None:
        """
        Over plain HTTP the settings are refused with 403, and no password is checked.
        """
        response = self.h.request(
            "GET",
            "/mc/v1/settings",
            headers={"Authorization": basic("alice@example.test", "alice-pw")},
            secure=False,
        )
        self.assertEqual(response.status, 403)
        self.assertEqual(response.json()["error"], "tls-required")
        self.assertEqual(self.h.portal.calls, [])

    def test_throttled_429(self) -> None:
        """
        A login the portal throttles is 429 with Retry-After.
        """
        self.h.portal.failure = LoginThrottled()
        response = self.h.get_settings()
        self.assertEqual(response.status, 429)
        self.assertEqual(response.headers["Retry-After"], "60")

    def test_unexpected_failure_500_json(self) -> None:
        """
        A failure nobody expected is logged and answered 500 with a JSON body.
        """
        self.h.portal.failure = RuntimeError("boom")
        response = self.h.get_settings()
        self.assertEqual((response.status, response.json()["error"]), (500, "internal-error"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_directory_down_503(self) -> None:
        """
        A directory that cannot answer is 503, not 401.
        """
        self.h.portal.failure = DirectoryUnavailable("down")
        response = self.h.get_settings()
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["error"], "directory-unavailable")


class ChangeDetectionTests(Base):
    def first(self) -> str:
        response = self.h.get_settings()
        self.assertEqual(response.status, 200)
        etag = response.headers["ETag"]
        self.assertEqual(etag, f'"{response.json()["version"]}"')
        return etag

    def test_second_request_304(self) -> None:
        """
        The same user again with If-None-Match: 304 with the ETag and no body.
        """
        etag = self.first()
        response = self.h.get_settings(if_none_match=etag)
        self.assertEqual(response.status, 304)
        self.assertEqual(response.headers["ETag"], etag)
        self.assertEqual(response.body, b"")

    def test_weak_and_list_forms_304(self) -> None:
        """
        W/ forms and comma lists (the tag first, last or in the middle) give 304 too.
        """
        etag = self.first()
        for header in (
            f"W/{etag}",
            f'"other", {etag}',
            f'{etag},"other"',
            f'W/"x" ,W/{etag}',
            "*",
        ):
            self.assertEqual(self.h.get_settings(if_none_match=header).status, 304, header)
        self.assertEqual(self.h.get_settings(if_none_match='"v1-other"').status, 200)

    def test_admin_change_new_etag(self) -> None:
        """
        After a change to a field in use, the old tag gets 200 with a new ETag.
        """
        etag = self.first()
        self.h.set(GLOBAL, "general.organization", "Example Ltd")
        response = self.h.get_settings(if_none_match=etag)
        self.assertEqual(response.status, 200)
        self.assertNotEqual(response.headers["ETag"], etag)
        self.assertEqual(response.json()["screens"]["general"]["organization"], "Example Ltd")

    def test_noop_save_304(self) -> None:
        """
        A save that ends where it started (revision bumped) still gets 304.
        """
        self.h.set(GLOBAL, "general.organization", "Example Ltd")
        etag = self.first()
        self.h.set(GLOBAL, "general.organization", "Other")
        self.h.set(GLOBAL, "general.organization", "Example Ltd")
        self.assertEqual(self.h.store.document(GLOBAL).revision, 3)  # type: ignore[union-attr]
        self.assertEqual(self.h.get_settings(if_none_match=etag).status, 304)

    def test_rename_new_etag(self) -> None:
        """
        Renaming the user changes the macro output and so the ETag.
        """
        etag = self.first()
        self.h.portal.accounts["alice@example.test"] = Account(
            address="alice@example.test",
            mailbox="alice",
            domain="example.test",
            login="alice@example.test",
            display_name="Alice Jones",
        )
        response = self.h.get_settings(if_none_match=etag)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json()["screens"]["general"]["display_name"], "Alice Jones")

    def test_head(self) -> None:
        """
        HEAD gets the headers of GET (ETag included) without the body.
        """
        etag = self.first()
        response = self.h.request(
            "HEAD",
            "/mc/v1/settings",
            headers={"Authorization": basic("alice@example.test", "alice-pw")},
        )
        self.assertEqual((response.status, response.headers["ETag"]), (200, etag))
        self.assertEqual(response.body, b"")

    def test_headers_per_user(self) -> None:
        """
        Per-user answers are not cached by shared caches.
        """
        response = self.h.get_settings()
        self.assertEqual(response.headers["Cache-Control"], "private, no-cache")
        self.assertEqual(response.headers["Vary"], "Authorization")

    def test_parse_if_none_match(self) -> None:
        """
        The header parser keeps opaque tags with their quotes and drops W/.
        """
        self.assertEqual(parse_if_none_match('W/"a", "b,c" ,"d"'), ('"a"', '"b,c"', '"d"'))
        self.assertIsNone(parse_if_none_match(" * "))
        self.assertFalse(none_match(None, '"a"'))
        self.assertFalse(none_match('"ab"', '"a"'))


class DocumentTests(Base):
    def screens(self, user: str = "alice@example.test") -> dict[str, Any]:
        response = self.h.get_settings(user)
        self.assertEqual(response.status, 200)
        return response.json()  # type: ignore[no-any-return]

    def test_locked_without_override(self) -> None:
        """
        allow_override false: policy.locked is true; a domain override flips it for that
        domain only.
        """
        self.assertTrue(self.screens()["policy"]["locked"])
        self.h.set("other.test", "policy.allow_override", True)
        self.assertTrue(self.screens()["policy"]["locked"])
        self.assertFalse(self.screens("carol@other.test")["policy"]["locked"])

    def test_sparse_override_one_field(self) -> None:
        """
        A domain document changes one field; the rest stays global.
        """
        self.h.set(GLOBAL, "general.organization", "Global Ltd")
        self.h.set(GLOBAL, "database.purge_bodies_older_than_days", 7)
        self.h.set("example.test", "general.organization", "Example Ltd")
        document = self.screens()
        self.assertEqual(document["screens"]["general"]["organization"], "Example Ltd")
        self.assertEqual(document["screens"]["database"]["purge_bodies_older_than_days"], 7)
        self.assertEqual(document["sources"], ["defaults", "global@2", "domain:example.test@1"])

    def test_unset_resets_to_global(self) -> None:
        """
        Removing the domain's field (null in JSON) brings back the global value.
        """
        self.h.set(GLOBAL, "general.organization", "Global Ltd")
        self.h.set("example.test", "general.organization", "Example Ltd")
        self.h.set("example.test", "general.organization", None)
        self.assertEqual(self.screens()["screens"]["general"]["organization"], "Global Ltd")

    def test_inherit_false_ignores_global(self) -> None:
        """
        A domain document with inherit = false replaces the global one.
        """
        self.h.set(GLOBAL, "general.organization", "Global Ltd")
        self.h.set("example.test", "general.account_name", "Example")
        self.h.set("example.test", "inherit", False)
        general = self.screens()["screens"]["general"]
        self.assertEqual((general["organization"], general["account_name"]), ("", "Example"))

    def test_macros_expanded_per_user(self) -> None:
        """
        Defaults hold macros; each user gets them expanded.
        """
        general = self.screens()["screens"]["general"]
        self.assertEqual(general["display_name"], "Alice Smith")
        self.assertEqual(general["email"], "alice@example.test")
        self.assertEqual(general["incoming_server"], "mail.example.test")
        self.assertEqual(self.screens()["screens"]["advanced"]["imap"]["security"], "implicit-tls")

    def test_unknown_macro_in_hand_edit_keeps_last_good(self) -> None:
        """
        A hand-edited file with an unknown macro is refused on reload (the problem names the
        file and field) and the last good settings stay in force.
        """
        self.h.set(GLOBAL, "general.organization", "Good")
        path = self.h.store.path_of(GLOBAL)
        path.write_text('[general]\norganization = "$COMPANY$ Ltd"\n')
        self.h.clock.advance(2)
        self.assertEqual(self.screens()["screens"]["general"]["organization"], "Good")
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [])
        self.assertIn("general.organization: unknown macro $COMPANY$", self.h.store.refresh()[0])

    def test_client_version_gates(self) -> None:
        """
        A client older than 4.0 gets 404; older than 5.0 no add-ins screen.
        """
        old = self.h.get_settings(mc_client_version="3.5.1")
        self.assertEqual((old.status, old.json()["error"]), (404, "client-too-old"))
        four = self.h.get_settings(mc_client_version="4.2")
        self.assertNotIn("addins", four.json()["screens"])
        five = self.h.get_settings(mc_client_version="5.0.1")
        self.assertIn("addins", five.json()["screens"])
        self.assertNotEqual(four.headers["ETag"], five.headers["ETag"])


class AckTests(Base):
    def ack(self, body: object, user: str = "alice@example.test") -> Response:
        return self.h.request(
            "POST",
            "/mc/v1/settings/ack",
            headers={
                "Authorization": basic(user, PASSWORDS[user]),
                "Content-Type": "application/json",
            },
            body=json.dumps(body).encode(),
        )

    def test_ack_records_and_status(self) -> None:
        """
        An ack is 204 and recorded; a client is behind once the settings change.
        """
        version = self.h.get_settings().json()["version"]
        response = self.ack({"version": version, "client": "laptop", "client_version": "5.1"})
        self.assertEqual((response.status, response.body), (204, b""))
        [receipt] = self.h.receipts.receipts()
        self.assertEqual(
            (receipt.account, receipt.client, receipt.applied_version, receipt.served_version),
            ("alice@example.test", "laptop", version, version),
        )
        current = {"example.test": source_hash(self.h.source.merged("example.test"))}
        self.assertEqual(behind(receipt, current), "")
        self.h.set(GLOBAL, "general.organization", "Changed")
        current = {"example.test": source_hash(self.h.source.merged("example.test"))}
        self.assertEqual(behind(receipt, current), "settings changed since it last asked")

    def test_bad_ack_400(self) -> None:
        """
        An ack without a version, or not a JSON object, is 400 JSON.
        """
        self.assertEqual(self.ack({"client": "x"}).status, 400)
        self.assertEqual(self.ack([1, 2]).status, 400)

    def test_ack_needs_post(self) -> None:
        """
        GET on the ack is 405 JSON with Allow.
        """
        response = self.h.request("GET", "/mc/v1/settings/ack")
        self.assertEqual((response.status, response.headers["Allow"]), (405, "POST"))
        self.assertEqual(response.json()["error"], "method-not-allowed")


class ReferenceTests(Base):
    def test_macro_reference(self) -> None:
        """
        The macro reference is served as JSON.
        """
        macros = {m["macro"] for m in self.h.request("GET", "/mc/v1/macros").json()["macros"]}
        self.assertLessEqual({"$USERNAME$", "$EMAIL$", "$FQDN$", "$MAILBOX$"}, macros)

    def test_schema(self) -> None:
        """
        The fields are served with whether each takes macros.
        """
        fields = {
            f["path"]: f for f in self.h.request("GET", "/mc/v1/schema.json").json()["fields"]
        }
        self.assertTrue(fields["general.display_name"]["macros"])
        self.assertFalse(fields["advanced.imap.port"]["macros"])

    def test_unknown_path_json_404(self) -> None:
        """
        Unknown paths, "/" included, are JSON 404s, never HTML.
        """
        for path in ("/", "/nope", "/mc/v1/settings/x/y"):
            response = self.h.request("GET", path)
            self.assertEqual(response.status, 404)
            self.assertEqual(response.json()["error"], "not-found")


AUTOCONFIG_PATHS = (
    "/mail/config-v1.1.xml",
    "/.well-known/autoconfig/mail/config-v1.1.xml",
    "/.well-known/mail-v1.xml",
)


class AutoconfigTests(Base):
    def test_all_url_variants(self) -> None:
        """
        Every autoconfig URL, with and without emailaddress, gets the same XML.
        """
        bodies = set()
        for path in AUTOCONFIG_PATHS:
            for query in ("", "?emailaddress=alice%40example.test"):
                response = self.h.request("GET", path + query, secure=False)
                self.assertEqual(response.status, 200, path + query)
                self.assertEqual(response.headers["Content-Type"], "text/xml; charset=utf-8")
                bodies.add(response.body)
        self.assertEqual(len(bodies), 1)

    def test_unknown_local_part_identical(self) -> None:
        """
        An address nobody has gets exactly the answer an existing one gets.
        """
        known = self.h.request("GET", "/mail/config-v1.1.xml?emailaddress=alice@example.test")
        unknown = self.h.request("GET", "/mail/config-v1.1.xml?emailaddress=nobody@example.test")
        self.assertEqual(known.body, unknown.body)

    def test_domain_from_address_or_host(self) -> None:
        """
        The domain comes from emailaddress, else from the Host (autoconfig. removed).
        """
        by_address = self.h.request("GET", "/mail/config-v1.1.xml?emailaddress=c@other.test")
        self.assertIn(b'<emailProvider id="other.test">', by_address.body)
        by_host = self.h.request(
            "GET", "/mail/config-v1.1.xml", headers={"Host": "autoconfig.other.test"}
        )
        self.assertIn(b'<emailProvider id="other.test">', by_host.body)

    def test_parses_like_thunderbird(self) -> None:
        """
        The XML parses; socketType and authentication take only values Thunderbird knows;
        the preferred servers come first; no useGlobalPreferredServer, no password.
        """
        body = self.h.request("GET", "/mail/config-v1.1.xml").body
        root = ET.fromstring(body)
        self.assertEqual((root.tag, root.get("version")), ("clientConfig", "1.1"))
        provider = root.find("emailProvider")
        assert provider is not None
        servers = provider.findall("incomingServer") + provider.findall("outgoingServer")
        for server in servers:
            self.assertIn(server.findtext("socketType"), {"SSL", "STARTTLS", "plain"})
            for auth in server.findall("authentication"):
                self.assertIn(auth.text, {"password-cleartext", "none"})
            self.assertTrue(1 <= int(server.findtext("port") or "0") <= 65535)
        incoming = provider.find("incomingServer")
        assert incoming is not None
        self.assertEqual(incoming.findtext("username"), "%EMAILADDRESS%")
        self.assertEqual(
            [
                (s.findtext("port"), s.findtext("socketType"))
                for s in provider.findall("outgoingServer")
            ],
            [("465", "SSL"), ("587", "STARTTLS")],
        )
        self.assertNotIn(b"useGlobalPreferredServer", body)
        self.assertNotIn(b"<password>", body)

    def test_directory_down_still_answers(self) -> None:
        """
        Without the directory, autoconfig says so in JSON (503), not an HTML page.
        """
        self.h.hosted = lambda: fail(DirectoryUnavailable("down"))
        response = self.h.request("GET", "/mail/config-v1.1.xml")
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["error"], "directory-unavailable")


def outlook(address: str, schema: str = OUTLOOK_RESPONSE) -> bytes:
    return OUTLOOK_REQUEST.format(address=address, schema=schema).encode()


class AutodiscoverTests(Base):
    def post(
        self, body: bytes, path: str = "/autodiscover/autodiscover.xml", **kw: Any
    ) -> Response:
        headers = {"Content-Type": "text/xml", **kw.pop("headers", {})}
        return self.h.request("POST", path, body=body, headers=headers, **kw)

    def protocols(self, body: bytes) -> dict[str, list[dict[str, str]]]:
        root = ET.fromstring(body)
        self.assertEqual(root.tag, f"{{{AUTODISCOVER_RESPONSE}}}Autodiscover")
        found: dict[str, list[dict[str, str]]] = {}
        for protocol in root.iter(f"{{{OUTLOOK_RESPONSE}}}Protocol"):
            fields = {child.tag.rpartition("}")[2]: child.text or "" for child in protocol}
            found.setdefault(fields["Type"], []).append(fields)
        return found

    def test_outlook_request(self) -> None:
        """
        An Outlook request gets IMAP and SMTP Protocols; implicit TLS is SSL=on with
        Encryption=SSL on 993 and 465; STARTTLS is Encryption=TLS; SPA is off.
        """
        response = self.post(outlook("alice@example.test"))
        self.assertEqual(response.status, 200)
        protocols = self.protocols(response.body)
        [imap] = protocols["IMAP"]
        self.assertEqual(
            (imap["Port"], imap["SSL"], imap["Encryption"], imap["SPA"], imap["LoginName"]),
            ("993", "on", "SSL", "off", "alice@example.test"),
        )
        smtp = [(p["Port"], p["SSL"], p["Encryption"], p["UsePOPAuth"]) for p in protocols["SMTP"]]
        self.assertEqual(smtp, [("465", "on", "SSL", "on"), ("587", "on", "TLS", "on")])
        self.assertNotIn(b"DisplayName", response.body)

    def test_personal_with_credentials(self) -> None:
        """
        With valid Basic credentials the answer carries the display name.
        """
        response = self.post(
            outlook("alice@example.test"),
            headers={"Authorization": basic("alice@example.test", "alice-pw")},
        )
        self.assertIn(b"<DisplayName>Alice Smith</DisplayName>", response.body)

    def test_unknown_local_part_identical(self) -> None:
        """
        Without credentials, any local part gets the same answer but for its own address.
        """
        one = self.post(outlook("alice@example.test")).body
        two = self.post(outlook("nobody@example.test")).body
        self.assertEqual(one.replace(b"alice@", b"nobody@"), two)

    def test_get_is_error_600(self) -> None:
        """
        GET is answered with Autodiscover error 600 (in XML).
        """
        response = self.h.request("GET", "/autodiscover/autodiscover.xml")
        root = ET.fromstring(response.body)
        self.assertEqual(root.findtext(f".//{{{AUTODISCOVER_RESPONSE}}}ErrorCode"), "600")

    def test_mobilesync_schema_601(self) -> None:
        """
        A request for the mobilesync schema is error 601 (no provider).
        """
        schema = (
            "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
        )
        body = self.post(outlook("alice@example.test", schema)).body
        self.assertIn(b"<ErrorCode>601</ErrorCode>", body)

    def test_entities_refused(self) -> None:
        """
        A request with a DTD or entities (billion laughs, external entities) is error 600.
        """
        laughs = (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;">]>'
            b"<Autodiscover><Request><EMailAddress>&l2;@example.test</EMailAddress>"
            b"</Request></Autodiscover>"
        )
        external = (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>"
        )
        for body in (laughs, external):
            response = self.post(body)
            self.assertIn(b"<ErrorCode>600</ErrorCode>", response.body)
            self.assertNotIn(b"root:", response.body)

    def test_oversized_refused(self) -> None:
        """
        A body over 64 KiB is refused with 413 JSON.
        """
        response = self.post(b"<Autodiscover>" + b" " * 70000 + b"</Autodiscover>")
        self.assertEqual(response.status, 413)

    def test_path_case_insensitive(self) -> None:
        """
        /Autodiscover/Autodiscover.xml works as well as the lower-case path.
        """
        for path in ("/Autodiscover/Autodiscover.xml", "/AUTODISCOVER/autodiscover.XML"):
            self.assertIn(b"<Type>IMAP</Type>", self.post(outlook("a@example.test"), path).body)

    def test_json_shim_case_insensitive(self) -> None:
        """
        The JSON shim answers AutodiscoverV1 in any case, with the v1.0 path form too.
        """
        for path in (
            "/autodiscover/autodiscover.json?Email=a@example.test&Protocol=AutodiscoverV1",
            "/Autodiscover/Autodiscover.json?email=a@example.test&protocol=autodiscoverv1",
            "/autodiscover/autodiscover.json/v1.0/a@example.test?Protocol=Autodiscoverv1",
        ):
            response = self.h.request("GET", path)
            self.assertEqual(response.status, 200, path)
            self.assertEqual(
                response.json(),
                {
                    "Protocol": "AutodiscoverV1",
                    "Url": "https://mail.example.test/autodiscover/autodiscover.xml",
                },
            )
        self.assertEqual(
            self.h.request("GET", "/autodiscover/autodiscover.json?Protocol=ActiveSync").status,
            400,
        )


class MobileconfigTests(Base):
    def get(self) -> Response:
        return self.h.request(
            "GET",
            "/mc/v1/apple.mobileconfig",
            headers={"Authorization": basic("alice@example.test", "alice-pw")},
        )

    def test_parses_with_plistlib(self) -> None:
        """
        The profile is a property list with one IMAP mail payload and no password.
        """
        response = self.get()
        self.assertEqual(response.headers["Content-Type"], "application/x-apple-aspen-config")
        profile = plistlib.loads(response.body)
        self.assertEqual(profile["PayloadType"], "Configuration")
        [mail] = profile["PayloadContent"]
        self.assertEqual(mail["PayloadType"], "com.apple.mail.managed")
        self.assertEqual(mail["EmailAccountType"], "EmailTypeIMAP")
        self.assertEqual(mail["EmailAddress"], "alice@example.test")
        self.assertEqual(mail["IncomingMailServerPortNumber"], 993)
        self.assertTrue(mail["IncomingMailServerUseSSL"])
        self.assertEqual(mail["OutgoingMailServerPortNumber"], 465)
        self.assertNotIn("IncomingPassword", mail)

    def test_identifiers_stable(self) -> None:
        """
        Two downloads carry the same identifiers and UUIDs (a re-install replaces).
        """
        one, two = plistlib.loads(self.get().body), plistlib.loads(self.get().body)
        for key in ("PayloadIdentifier", "PayloadUUID"):
            self.assertEqual(one[key], two[key])
            self.assertEqual(one["PayloadContent"][0][key], two["PayloadContent"][0][key])

    def test_needs_tls_and_login(self) -> None:
        """
        Plain HTTP is 403; no credentials 401.
        """
        self.assertEqual(
            self.h.request("GET", "/mc/v1/apple.mobileconfig", secure=False).status, 403
        )
        self.assertEqual(self.h.request("GET", "/mc/v1/apple.mobileconfig").status, 401)


class StoreDocumentTests(SynchronousTestCase):
    def test_document_scope(self) -> None:
        """
        The source names documents as global@N and domain:D@N.
        """
        self.assertEqual(SettingsDocument(scope=GLOBAL, revision=4).source, "global@4")
        self.assertEqual(SettingsDocument(scope="a.test").source, "domain:a.test@0")
