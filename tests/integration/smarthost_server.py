"""
A private smart host for tests: aiosmtpd requiring STARTTLS and then AUTH (PLAIN/LOGIN).

Run as a program: C{python smarthost_server.py PORT CERT KEY LOGIN PASSWORD DIR}. Each accepted
message is written to DIR as a file whose first lines give the envelope and the login used.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    """
    Writes every message to a directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        login = session.auth_data.login.decode() if session.auth_data else ""
        head = (
            f"X-Test-Auth: {login}\r\nX-Test-Mail-From: {envelope.mail_from}\r\n"
            f"X-Test-Rcpt-To: {','.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        content = envelope.original_content or envelope.content
        path = self.directory / f"{uuid.uuid4().hex}.eml"
        path.write_bytes(head + content)
        return "250 2.0.0 stored"


def main(argv: list[str]) -> None:
    """
    Serve until killed.
    """
    port, cert, key, login, password, directory = argv
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == (
            login,
            password,
        )
        # handled=False makes aiosmtpd send the 535 itself; a failure marked handled sends
        # nothing and leaves the client waiting.
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    controller = Controller(
        Store(Path(directory)),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticate,
        server_hostname="smarthost.test",
    )
    controller.start()
    print("READY", flush=True)
    try:
        asyncio.new_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
