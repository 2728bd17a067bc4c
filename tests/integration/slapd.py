"""
A private OpenLDAP slapd for integration tests.

L{Slapd} writes a C{slapd.conf} (schemas core, cosine, nis, inetorgperson and misc; an mdb
database for C{dc=example,dc=com}), loads the accounts below with C{slapadd}, and runs
C{slapd -d 256} in the foreground on free loopback ports, in its own session, logging to
C{slapd.log} in its directory. With C{tls=True} it also makes a test CA and a server certificate
for C{127.0.0.1} and C{localhost} with C{openssl}, and listens on an C{ldaps://} port as well
(StartTLS then works on the plain port too).

The accounts (password in brackets):

    - alice (C{alicepw}, stored as C{{SSHA}}): mail C{alice@example.com} and
      C{a.example@example.com}, C{mailLocalAddress: ally@example.org}
    - bob (C{bobpw}, stored in plain text): mail C{Bob@Example.COM}
    - carol (C{carolpw}, stored as C{{CRYPT}} SHA-512): mail C{carol@example.org}
    - dave (C{davepw}, plain), C{employeeType: disabled}: mail C{dave@example.com}
    - grace and hg (no password): two C{mail} values each, stored with the one that is not
      the primary address first
    - erin and frank: both have C{shared@example.com} (ambiguous data)

Anonymous clients may read everything but C{userPassword}, which they may only bind with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import LDAPAttributes, LDAPConfig
from tests.integration.peers import (
    find_program,
    free_port,
    run_checked,
    start_process,
    stop_process,
)

BASE_DN = "dc=example,dc=com"
ROOT_DN = "cn=admin,dc=example,dc=com"
ROOT_PASSWORD = "secret"
PEOPLE_DN = "ou=people,dc=example,dc=com"

#: The password of each account in the test data.
PASSWORDS = {
    "alice": "alicepw",
    "bob": "bobpw",
    "carol": "carolpw",
    "dave": "davepw",
    "erin": "erinpw",
    "frank": "frankpw",
}

_SCHEMAS = ("core", "cosine", "nis", "inetorgperson", "misc")

_CONFIG = """\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile  {directory}/slapd.pid
argsfile {directory}/slapd.args
{tls}
# Anonymous may read everything except passwords, which it may only bind with.
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to * by * read

database mdb
maxsize 104857600
suffix  "{base_dn}"
rootdn  "{root_dn}"
rootpw  {root_hash}
directory {directory}/db
index objectClass eq
index mail,uid,mailLocalAddress eq
"""

_DATA = """\
dn: {base_dn}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {people}
objectClass: organizationalUnit
ou: people

dn: uid=alice,{people}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice
cn: Alice Example
givenName: Alice
sn: Example
mail: alice@example.com
mail: a.example@example.com
mailLocalAddress: ally@example.org
employeeType: staff
userPassword: {alice}

dn: uid=bob,{people}
objectClass: inetOrgPerson
uid: bob
cn: Bob Builder
sn: Builder
mail: Bob@Example.COM
userPassword: {bob}

dn: uid=carol,{people}
objectClass: inetOrgPerson
objectClass: posixAccount
uid: carol
cn: Carol Example
sn: Example
mail: carol@example.org
uidNumber: 10003
gidNumber: 10003
homeDirectory: /home/carol
userPassword: {carol}

dn: uid=dave,{people}
objectClass: inetOrgPerson
uid: dave
cn: Dave Example
sn: Example
mail: dave@example.com
employeeType: disabled
userPassword: {dave}

dn: uid=erin,{people}
objectClass: inetOrgPerson
uid: erin
cn: Erin Example
sn: Example
mail: erin@example.com
mail: shared@example.com
userPassword: {erin}

dn: uid=frank,{people}
objectClass: inetOrgPerson
uid: frank
cn: Frank Example
sn: Example
mail: frank@example.com
mail: shared@example.com
userPassword: {frank}

dn: uid=grace,{people}
objectClass: inetOrgPerson
uid: grace
cn: Grace Example
sn: Example
mail: zz.grace@example.com
mail: grace@example.com

dn: uid=hg,{people}
objectClass: inetOrgPerson
uid: hg
cn: Heidi Example
sn: Example
mail: zz.heidi@example.com
mail: b.heidi@example.com
"""

_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {names}
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
"""


class Slapd:
    """
    One private slapd with the test accounts.

    Call L{build} once, then L{start} and L{stop} as often as a test needs: the ports and the
    data stay the same.

    @ivar directory: the private directory with the config, database, certificates and log.
    @ivar port: the C{ldap://} port.
    @ivar tls_port: the C{ldaps://} port, or L{None} without TLS.
    @ivar ca_file: the CA certificate that signed the server certificate (with TLS).
    @ivar other_ca_file: a CA certificate that did not sign it (with TLS).
    @ivar log_path: slapd's output.
    """

    def __init__(
        self,
        directory: Path,
        *,
        tls: bool = False,
        certificate_names: tuple[str, ...] = ("IP:127.0.0.1", "DNS:localhost"),
    ) -> None:
        """
        Choose the ports and paths; nothing is written yet.

        @param directory: a private directory, made if missing.
        @param tls: whether to listen on C{ldaps://} too, with a test CA.
        @param certificate_names: the subject alternative names of the server certificate, in
            openssl's syntax.
        """
        self.directory = directory.absolute()
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.ca_file = self.directory / "ca.pem" if tls else None
        self.other_ca_file = self.directory / "other-ca.pem" if tls else None
        self.log_path = self.directory / "slapd.log"
        self._certificate_names = certificate_names
        self._process: Any = None

    @property
    def url(self) -> str:
        """
        The plain URL.

        @return: C{ldap://127.0.0.1:PORT}.
        """
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        """
        The TLS URL.

        @return: C{ldaps://127.0.0.1:PORT}.
        @raise ValueError: when this slapd has no TLS.
        """
        if self.tls_port is None:
            raise ValueError("this slapd was made without TLS")
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def build(self) -> None:
        """
        Write the configuration and certificates and load the accounts into the database.

        @raise tests.integration.peers.PeerError: when a tool fails.
        """
        (self.directory / "db").mkdir(parents=True, exist_ok=True)
        tls = ""
        if self.tls_port is not None:
            self._make_certificates()
            tls = (
                f"TLSCertificateFile {self.directory}/server.pem\n"
                f"TLSCertificateKeyFile {self.directory}/server.key"
            )
        slappasswd = find_program("slappasswd")
        config = _CONFIG.format(
            includes="\n".join(f"include /etc/ldap/schema/{name}.schema" for name in _SCHEMAS),
            directory=self.directory,
            tls=tls,
            base_dn=BASE_DN,
            root_dn=ROOT_DN,
            root_hash=_hash(slappasswd, ROOT_PASSWORD),
        )
        (self.directory / "slapd.conf").write_text(config)
        crypt = run_checked([find_program("openssl"), "passwd", "-6", PASSWORDS["carol"]]).strip()
        data = _DATA.format(
            base_dn=BASE_DN,
            people=PEOPLE_DN,
            alice=_hash(slappasswd, PASSWORDS["alice"], "{SSHA}"),
            bob=PASSWORDS["bob"],
            carol="{CRYPT}" + crypt,
            dave=PASSWORDS["dave"],
            erin=PASSWORDS["erin"],
            frank=PASSWORDS["frank"],
        )
        (self.directory / "data.ldif").write_text(data)
        conf = str(self.directory / "slapd.conf")
        run_checked([find_program("slaptest"), "-u", "-f", conf])
        ldif = str(self.directory / "data.ldif")
        run_checked([find_program("slapadd"), "-q", "-f", conf, "-l", ldif])

    def start(self) -> None:
        """
        Start slapd and wait until its ports accept connections.

        @raise tests.integration.peers.PeerError: when it does not start; the message quotes
            its log.
        """
        if self._process is not None:
            raise RuntimeError("slapd is already running")
        urls = [f"{self.url}/"]
        if self.tls_port is not None:
            urls.append(f"{self.tls_url}/")
        argv = [find_program("slapd"), "-f", str(self.directory / "slapd.conf")]
        argv += ["-h", " ".join(urls), "-d", "256"]
        ports = [self.port] if self.tls_port is None else [self.port, self.tls_port]
        self._process = start_process(argv, self.log_path, ports=ports)

    def stop(self) -> None:
        """
        Stop slapd: SIGTERM to its PID, and SIGKILL if it is still there 5 seconds later.

        Nothing happens if it is not running.
        """
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, grace=5.0)

    def _make_certificates(self) -> None:
        # A test CA, a server certificate it signs, and a second CA that signs nothing.
        openssl = find_program("openssl")
        d = self.directory
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for name, subject in (("ca", "mdtwist test CA"), ("other-ca", "mdtwist other CA")):
            run_checked(
                [
                    *(openssl, "req", "-x509", *ec, "-keyout", str(d / f"{name}.key")),
                    *("-out", str(d / f"{name}.pem"), "-days", "2", "-subj", f"/CN={subject}"),
                    *("-addext", "basicConstraints=critical,CA:TRUE"),
                    *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
                ]
            )
        run_checked(
            [
                *(openssl, "req", "-new", *ec, "-keyout", str(d / "server.key")),
                *("-out", str(d / "server.csr"), "-subj", "/CN=localhost"),
            ]
        )
        names = ", ".join(self._certificate_names)
        (d / "server.ext").write_text(_SERVER_EXTENSIONS.format(names=names))
        run_checked(
            [
                *(openssl, "x509", "-req", "-in", str(d / "server.csr"), "-days", "2"),
                *("-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"), "-CAcreateserial"),
                *("-extfile", str(d / "server.ext"), "-out", str(d / "server.pem")),
            ]
        )


def _hash(slappasswd: str, password: str, scheme: str = "{SSHA}") -> str:
    # A userPassword value made by slappasswd.
    return run_checked([slappasswd, "-h", scheme, "-s", password]).strip()


def start_slapd(case: SynchronousTestCase, *, tls: bool = False, **options: Any) -> Slapd:
    """
    Build and start a slapd in a private directory of a test; it is stopped at clean-up.

    @param case: the test.
    @param tls: whether to add C{ldaps://} and certificates.
    @param options: further arguments for L{Slapd}.
    @return: the running slapd.
    """
    slapd = Slapd(Path(case.mktemp()), tls=tls, **options)
    slapd.build()
    case.addCleanup(slapd.stop)
    slapd.start()
    return slapd


def directory_config(slapd: Slapd, **changes: Any) -> LDAPConfig:
    """
    The mdtwist LDAP settings that fit the test data, for an anonymous service connection.

    @param slapd: the server.
    @param changes: settings to change, as for C{attrs.evolve}.
    @return: the settings.
    """
    config = LDAPConfig(
        url=slapd.url,
        base_dn=BASE_DN,
        domains=frozenset({"example.com", "example.org"}),
        filter="(&(objectClass=inetOrgPerson)(|(mail={address})(mailLocalAddress={address})))",
        auth_filter="(&(objectClass=inetOrgPerson)(|(uid={login})(mail={login})))",
        connect_timeout=5.0,
        receive_timeout=5.0,
        attributes=LDAPAttributes(alias="mailLocalAddress", status="employeeType"),
    )
    return attrs.evolve(config, **changes)
