"""
Client settings through the real daemon: an HTTPS listener on 127.0.0.1, the standard library's
HTTP client verifying the test certificate, and C{mdtwistctl settings} editing the documents
while the server runs.
"""

from __future__ import annotations

import base64
import http.client
import json
import plistlib
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.settings.render import OUTLOOK_RESPONSE
from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.peers import free_port

ALICE = "alice@example.test"


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """
    Poll a condition ten times a second until it holds or the time is up.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self) -> Any:
        self.headers_are_json()
        return json.loads(self.body)

    def headers_are_json(self) -> None:
        assert self.headers["Content-Type"] == "application/json; charset=utf-8", self.headers


class SettingsDaemonTests(SynchronousTestCase):
    """
    An administrator enables the feature and sets a global and a per-domain value; a polling
    client gets each new document once, then 304s.
    """

    def setUp(self) -> None:
        self.https_port = free_port()
        self.http_port = free_port()
        extra = f"""
[[http.listen]]
endpoint = "tcp:{self.https_port}:interface=127.0.0.1"
tls = true

[[http.listen]]
endpoint = "tcp:{self.http_port}:interface=127.0.0.1"

[settings]
push_enabled = false
"""
        self.daemon = Daemon(
            Path(self.mktemp()), extra=extra, extra_ports=(self.https_port, self.http_port)
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.tls = ssl.create_default_context(cafile=str(self.daemon.certificate))

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        secure: bool = True,
    ) -> Reply:
        connection: http.client.HTTPConnection
        if secure:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.https_port, context=self.tls, timeout=10
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            return Reply(connection.getresponse())
        finally:
            connection.close()

    def settings(self, etag: str | None = None, user: str = ALICE) -> Reply:
        token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        if etag is not None:
            headers["If-None-Match"] = etag
        return self.request("GET", "/mc/v1/settings", headers=headers)

    def ctl(self, *args: str) -> str:
        program = str(Path(sys.executable).parent / "mdtwistctl")
        result = subprocess.run(
            [program, "settings", *args, "--config", str(self.daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_push_poll_304(self) -> None:
        """
        Off: 404. Enabled with mdtwistctl: the document once, then 304; a per-domain value: a
        new document once, then 304 again; the ack makes the client current in status.
        """
        off = self.settings()
        self.assertEqual((off.status, off.json()["error"]), (404, "push-disabled"))

        self.ctl("set", "policy.push_enabled", "true")
        self.ctl("set", "general.organization", "Global Ltd")

        def organization() -> object:
            reply = self.settings()
            return reply.status == 200 and reply.json()["screens"]["general"]["organization"]

        self.assertTrue(wait_until(lambda: organization() == "Global Ltd"), self.daemon.log())
        first = self.settings()
        document = first.json()
        self.assertEqual(document["screens"]["general"]["organization"], "Global Ltd")
        self.assertEqual(document["screens"]["general"]["email"], ALICE)
        self.assertTrue(document["policy"]["locked"])
        etag = first.headers["ETag"]
        self.assertEqual(etag, f'"{document["version"]}"')
        again = self.settings(etag)
        self.assertEqual((again.status, again.body), (304, b""))

        self.ctl("set", "--domain", "example.test", "general.organization", "Example Ltd")
        self.assertTrue(wait_until(lambda: self.settings(etag).status == 200))
        changed = self.settings(etag)
        new_etag = changed.headers["ETag"]
        self.assertNotEqual(new_etag, etag)
        self.assertEqual(changed.json()["screens"]["general"]["organization"], "Example Ltd")
        self.assertEqual(self.settings(f'W/"x", W/{new_etag}').status, 304)

        token = base64.b64encode(f"{ALICE}:{PASSWORDS[ALICE]}".encode()).decode()
        ack = self.request(
            "POST",
            "/mc/v1/settings/ack",
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
            body=json.dumps({"version": new_etag.strip('"'), "client": "test"}).encode(),
        )
        self.assertEqual(ack.status, 204)
        self.assertTrue(
            wait_until(lambda: self.ctl("status").endswith("0 of 1 client behind\n")),
            self.ctl("status"),
        )

    def test_refusals_are_json(self) -> None:
        """
        Plain HTTP 403, no credentials 401, wrong password 401: JSON, never HTML.
        """
        self.ctl("set", "policy.push_enabled", "true")
        plain = self.request("GET", "/mc/v1/settings", secure=False)
        self.assertEqual((plain.status, plain.json()["error"]), (403, "tls-required"))
        anonymous = self.request("GET", "/mc/v1/settings")
        self.assertEqual(anonymous.status, 401)
        self.assertIn("Basic", anonymous.headers["WWW-Authenticate"])
        token = base64.b64encode(f"{ALICE}:wrong".encode()).decode()
        wrong = self.request("GET", "/mc/v1/settings", headers={"Authorization": f"Basic {token}"})
        self.assertEqual((wrong.status, wrong.json()["error"]), (401, "unauthorized"))
        missing = self.request("GET", "/no/such/page")
        self.assertEqual((missing.status, missing.json()["error"]), (404, "not-found"))

    def test_standard_formats(self) -> None:
        """
        With the push off, autoconfig (plain HTTP), Autodiscover and the Apple profile come
        from the daemon's own listeners; the XML parses.
        """
        autoconfig = self.request(
            "GET", "/.well-known/autoconfig/mail/config-v1.1.xml", secure=False
        )
        self.assertEqual(autoconfig.status, 200)
        root = ET.fromstring(autoconfig.body)
        outgoing = root.find("emailProvider/outgoingServer")
        assert outgoing is not None
        self.assertEqual(outgoing.findtext("port"), str(self.daemon.submission_port))
        self.assertEqual(outgoing.findtext("socketType"), "STARTTLS")

        request = (
            '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft'
            '.com/exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>'
            f"{ALICE}</EMailAddress><AcceptableResponseSchema>{OUTLOOK_RESPONSE}"
            "</AcceptableResponseSchema></Request></Autodiscover>"
        )
        discovered = self.request(
            "POST",
            "/Autodiscover/Autodiscover.xml",
            headers={"Content-Type": "text/xml"},
            body=request.encode(),
        )
        protocols = {}
        for protocol in ET.fromstring(discovered.body).iter(f"{{{OUTLOOK_RESPONSE}}}Protocol"):
            fields = {child.tag.rpartition("}")[2]: child.text for child in protocol}
            protocols[fields["Type"]] = fields
        self.assertEqual(
            (protocols["IMAP"]["Port"], protocols["IMAP"]["Encryption"]), ("993", "SSL")
        )
        self.assertEqual(protocols["SMTP"]["Encryption"], "TLS")

        token = base64.b64encode(f"{ALICE}:{PASSWORDS[ALICE]}".encode()).decode()
        profile = self.request(
            "GET", "/mc/v1/apple.mobileconfig", headers={"Authorization": f"Basic {token}"}
        )
        self.assertEqual(profile.status, 200)
        payload = plistlib.loads(profile.body)["PayloadContent"][0]
        self.assertEqual(payload["EmailAddress"], ALICE)
