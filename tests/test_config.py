"""
Tests for L{mdtwist.config}.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import (
    Config,
    DirectoryBackend,
    LDAPAuthMethod,
    ListenerMode,
    config_warnings,
    load_config,
    load_locations,
)
from mdtwist.delivery.dsn import DSNRequests
from mdtwist.delivery.router import Mode
from mdtwist.errors import ConfigError
from mdtwist.settings.model import Security
from mdtwist.smtp.modes import TLSMode

GOOD = """
[server]
hostname = "mx.example.test"

[[smtp.listen]]
endpoint = "tcp:2525:interface=127.0.0.1"
mode = "mx"

[directory]
backend = "file"

[directory.file]
path = "accounts.toml"

[spool]
directory = "spool"

[delivery]
maildir_root = "mail"
"""


class ConfigTests(SynchronousTestCase):
    """
    A configuration file becomes frozen settings, or every problem is named.
    """

    def write(self, text: str, name: str = "mdtwist.toml") -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / name
        path.write_text(text)
        return path

    def problems(self, text: str) -> list[str]:
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path)
        prefix = f"{path}: "
        for line in error.problems:
            self.assertTrue(line.startswith(prefix), line)
        return [line[len(prefix) :] for line in error.problems]

    def test_processes(self) -> None:
        """
        C{server.processes} is 1 by default, and from 1 to 64.
        """
        self.assertEqual(load_config(self.write(GOOD)).server.processes, 1)
        host = 'hostname = "mx.example.test"'
        text = GOOD.replace(host, host + "\nprocesses = 4")
        self.assertEqual(load_config(self.write(text)).server.processes, 4)
        for value, problem in (("0", "must be greater than 0"), ("65", "must be at most 64")):
            text = GOOD.replace(host, host + f"\nprocesses = {value}")
            self.assertEqual(self.problems(text), [f"server.processes: {problem}"])

    def test_postmaster(self) -> None:
        """
        C{server.postmaster} is a mail address; unset, it is L{None} and the check warns.
        """
        config = load_config(self.write(GOOD))
        self.assertIsNone(config.server.postmaster)
        [warning] = config_warnings(config)
        self.assertTrue(warning.startswith(f"{config.path}: server.postmaster: warning: "))
        host = 'hostname = "mx.example.test"'
        text = GOOD.replace(host, host + '\npostmaster = "alice@example.test"')
        config = load_config(self.write(text))
        self.assertEqual(config.server.postmaster, "alice@example.test")
        self.assertEqual(config_warnings(config), [])
        for value, problem in (
            ('"alice"', "'alice' is not a mail address"),
            ('""', "must not be empty"),
            ("1", "expected a string, got an integer"),
        ):
            text = GOOD.replace(host, host + f"\npostmaster = {value}")
            self.assertEqual(self.problems(text), [f"server.postmaster: {problem}"], value)

    def test_processes_need_tcp_listeners(self) -> None:
        """
        With more than one process every listener must be TCP (each process gets its own
        SO_REUSEPORT socket); a unix: endpoint is refused then, and accepted with one process.
        """
        host = 'hostname = "mx.example.test"'
        unix = GOOD.replace("tcp:2525:interface=127.0.0.1", "unix:/tmp/mdtwist-test.sock")
        self.assertEqual(load_config(self.write(unix)).server.processes, 1)
        self.assertEqual(
            self.problems(unix.replace(host, host + "\nprocesses = 2")),
            ["smtp.listen[0].endpoint: with server.processes above 1, use a tcp:, tcp6: or ssl:"
             " endpoint"],
        )  # fmt: skip

    def test_good_file(self) -> None:
        """
        A valid file gives typed values, with relative paths taken from the file's directory.
        """
        path = self.write(GOOD)
        config = load_config(path)
        self.assertIsInstance(config, Config)
        self.assertEqual(config.server.hostname, "mx.example.test")
        self.assertEqual(config.smtp.listen[0].mode, ListenerMode.MX)
        self.assertEqual(config.smtp.listen[0].endpoint, "tcp:2525:interface=127.0.0.1")
        self.assertEqual(config.directory.backend, DirectoryBackend.FILE)
        assert config.directory.file is not None
        self.assertEqual(config.directory.file.path, path.parent / "accounts.toml")
        self.assertEqual(config.directory.file.check_interval, 1.0)
        self.assertEqual(config.directory.cache.ttl, 60.0)

    def test_demo_config_is_valid(self) -> None:
        """
        The shipped etc/mdtwist.toml loads without problems.
        """
        here = Path(__file__).resolve().parent.parent
        root = Path(self.mktemp())
        (root / "etc").mkdir(parents=True)
        shutil.copy(here / "etc" / "mdtwist.toml", root / "etc")
        (root / "var" / "tls").mkdir(parents=True)
        (root / "var" / "tls" / "cert.pem").write_text("x")
        (root / "var" / "tls" / "key.pem").write_text("x")
        os.chmod(root / "var" / "tls" / "key.pem", 0o600)
        config = load_config(root / "etc" / "mdtwist.toml")
        self.assertEqual(config.directory.backend, DirectoryBackend.FILE)
        self.assertEqual(
            {listener.mode for listener in config.smtp.listen},
            {ListenerMode.MX, ListenerMode.SUBMISSION},
        )

    def test_unreadable_file(self) -> None:
        """
        A file that cannot be read is one problem naming the file.
        """
        path = Path(self.mktemp())
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.problems, (f"{path}: cannot read: No such file or directory",))

    def test_not_toml(self) -> None:
        """
        A file that is not TOML is reported with the parser's line and column.
        """
        path = self.write("[server\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("not valid TOML", error.problems[0])
        self.assertIn("line 1", error.problems[0])

    def test_unknown_keys(self) -> None:
        """
        Unknown keys are errors at every level, named by their full path.
        """
        text = GOOD.replace('mode = "mx"', 'mode = "mx"\nport = 25') + "\n[mystery]\n"
        text = text.replace('hostname = "mx.example.test"', 'hostname = "x"\nhostnam = "y"')
        self.assertEqual(
            sorted(self.problems(text)),
            [
                "mystery: unknown key",
                "server.hostnam: unknown key",
                "smtp.listen[0].port: unknown key",
            ],
        )

    def test_wrong_types(self) -> None:
        """
        A value of the wrong type names the key, what was expected and what was found.
        """
        text = GOOD.replace('hostname = "mx.example.test"', "hostname = 25")
        text = text.replace('path = "accounts.toml"', 'path = "a"\ncheck_interval = true')
        self.assertEqual(
            sorted(self.problems(text)),
            [
                "directory.file.check_interval: expected a number, got true or false",
                "server.hostname: expected a string, got an integer",
            ],
        )

    def test_missing_required(self) -> None:
        """
        Missing required tables and values are reported.
        """
        self.assertEqual(
            sorted(self.problems('[[smtp.listen]]\nmode = "mx"\n')),
            [
                "delivery.maildir_root: required when local = 'maildir'",
                "directory: required value is missing",
                "server: required value is missing",
                "smtp.listen[0].endpoint: required value is missing",
                "spool: required value is missing",
            ],
        )

    def test_bad_endpoint(self) -> None:
        """
        An endpoint string Twisted cannot parse is reported with the listener's index.
        """
        text = GOOD + '\n[[smtp.listen]]\nendpoint = "tcp:notaport"\nmode = "submission"\n'
        [problem] = self.problems(text)
        self.assertTrue(
            problem.startswith("smtp.listen[1].endpoint: not a valid server endpoint: "), problem
        )

    def test_endpoint_port_and_interface(self) -> None:
        """
        A port outside 0 to 65535 and an interface that is not an IP address are refused with
        the listener's key; IPv4 and IPv6 addresses and non-TCP endpoints are fine.
        """
        listeners = "".join(
            f'\n[[smtp.listen]]\nendpoint = "{endpoint}"\nmode = "submission"\n'
            for endpoint in [
                "tcp:99999",
                "tcp:-5",
                "tcp:2525:interface=999.1.1.1",
                "tcp:2526:interface=mail.example.test",
                "tcp6:2527:interface=\\\\:\\\\:1",
                "tcp:0:interface=0.0.0.0",
                "unix:/tmp/mdtwist.sock",
            ]
        )
        self.assertEqual(
            self.problems(GOOD + listeners),
            [
                "smtp.listen[1].endpoint: port 99999 is out of range (0 to 65535)",
                "smtp.listen[2].endpoint: port -5 is out of range (0 to 65535)",
                "smtp.listen[3].endpoint: interface 999.1.1.1 is not an IP address",
                "smtp.listen[4].endpoint: interface mail.example.test is not an IP address",
            ],
        )

    def test_bad_mode(self) -> None:
        """
        A listener mode outside the allowed set lists the allowed values.
        """
        text = GOOD.replace('mode = "mx"', 'mode = "relay"')
        self.assertEqual(
            self.problems(text),
            ["smtp.listen[0].mode: must be one of 'mx', 'submission', 'smtps', got 'relay'"],
        )

    def ldap_config(self, extra: str) -> str:
        return GOOD.replace('backend = "file"', 'backend = "ldap"').replace(
            "[spool]",
            (
                '\n[directory.ldap]\nurl = "ldap://127.0.0.1:3890"\n'
                'base_dn = "dc=example,dc=com"\n'
                'domains = ["Example.COM"]\n' + extra + "\n[spool]"
            ),
        )

    def test_ldap_settings(self) -> None:
        """
        The LDAP table is read with its defaults, and domains are lower-cased.
        """
        path = self.write(self.ldap_config('auth_method = "compare"\n'))
        config = load_config(path)
        ldap = config.directory.ldap
        assert ldap is not None
        self.assertEqual(ldap.domains, frozenset({"example.com"}))
        self.assertEqual(ldap.auth_method, LDAPAuthMethod.COMPARE)
        self.assertEqual(ldap.attributes.mail, "mail")
        self.assertIsNone(ldap.bind_password)

    def test_ldap_problems(self) -> None:
        """
        A bad URL, a filter without its placeholder and a non-positive timeout are reported.
        """
        text = self.ldap_config('filter = "(mail=x)"\nconnect_timeout = 0\n').replace(
            "ldap://127.0.0.1:3890", "http://x"
        )
        self.assertEqual(
            sorted(self.problems(text)),
            [
                "directory.ldap.connect_timeout: must be greater than 0",
                "directory.ldap.filter: must contain {address}",
                "directory.ldap.url: must look like ldap://host:port or ldaps://host:port",
            ],
        )

    def test_ldap_table_missing(self) -> None:
        """
        Choosing the LDAP backend without its table is reported.
        """
        text = GOOD.replace('backend = "file"', 'backend = "ldap"')
        self.assertEqual(
            self.problems(text),
            ["directory.ldap: backend is 'ldap' but the [directory.ldap] table is missing"],
        )

    def test_secret_inline(self) -> None:
        """
        An inline secret is kept, and its repr does not show it.
        """
        config = load_config(self.write(self.ldap_config('bind_password = "s3cret"\n')))
        assert config.directory.ldap is not None
        secret = config.directory.ldap.bind_password
        assert secret is not None
        self.assertEqual(secret.reveal(), "s3cret")
        self.assertNotIn("s3cret", repr(config))

    def test_secret_file(self) -> None:
        """
        A secret file of mode 0600 is read, without its trailing newline.
        """
        path = self.write(self.ldap_config('bind_password_file = "pw"\n'))
        secret_path = path.parent / "pw"
        secret_path.write_text("from-file\n")
        os.chmod(secret_path, 0o600)
        config = load_config(path)
        assert config.directory.ldap is not None and config.directory.ldap.bind_password
        self.assertEqual(config.directory.ldap.bind_password.reveal(), "from-file")

    def test_secret_file_readable_by_others(self) -> None:
        """
        A secret file that group or others may read is refused.
        """
        path = self.write(self.ldap_config('bind_password_file = "pw"\n'))
        secret_path = path.parent / "pw"
        secret_path.write_text("x")
        os.chmod(secret_path, 0o644)
        self.assertEqual(
            self.problems_of(path),
            [
                "directory.ldap.bind_password_file: "
                f"{secret_path} is readable by group or others (use chmod 600)"
            ],
        )

    def test_secret_file_bad_permissions_one_line(self) -> None:
        """
        A smart-host or POP password file that group or others may read is one problem: the
        password it should have given is not reported missing as well.
        """
        extra = (
            '\n[outbound]\nmode = "smarthost"\nsmarthost = "relay.example.test:25"\n'
            'smarthost_login = "u"\nsmarthost_password_file = "pw"\npop_before_smtp = true\n'
            'pop_server = "pop.example.test:110"\npop_login = "u"\npop_password_file = "pw"\n'
        )
        path = self.write(GOOD + extra)
        secret_path = path.parent / "pw"
        secret_path.write_text("x")
        os.chmod(secret_path, 0o644)
        reason = f"{secret_path} is readable by group or others (use chmod 600)"
        self.assertEqual(
            self.problems_of(path),
            [
                f"outbound.smarthost_password_file: {reason}",
                f"outbound.pop_password_file: {reason}",
            ],
        )

    def test_compare_needs_password_attribute(self) -> None:
        """
        C{auth_method = "compare"} with an empty password attribute is refused: there would be
        nothing to compare with.
        """
        path = self.write(
            self.ldap_config(
                'auth_method = "compare"\n[directory.ldap.attributes]\npassword = ""\n'
            )
        )
        self.assertEqual(
            self.problems_of(path),
            [
                "directory.ldap.auth_method: 'compare' needs the password attribute"
                " (attributes.password must not be empty)"
            ],
        )

    def problems_of(self, path: Path) -> list[str]:
        error = self.assertRaises(ConfigError, load_config, path)
        return [line.split(": ", 1)[1] for line in error.problems]

    def test_secret_file_missing(self) -> None:
        """
        A secret file that cannot be read is reported.
        """
        path = self.write(self.ldap_config('bind_password_file = "nope"\n'))
        self.assertEqual(
            self.problems_of(path),
            [
                f"directory.ldap.bind_password_file: cannot read {path.parent / 'nope'}: "
                "No such file or directory"
            ],
        )

    def test_secret_twice(self) -> None:
        """
        A secret given both inline and as a file is refused.
        """
        text = self.ldap_config('bind_password = "a"\nbind_password_file = "b"\n')
        self.assertEqual(
            self.problems(text),
            [
                "directory.ldap.bind_password: "
                "give either bind_password or bind_password_file, not both"
            ],
        )

    def test_all_problems_at_once(self) -> None:
        """
        One run reports every problem, not just the first.
        """
        text = GOOD.replace('hostname = "mx.example.test"', "hostname = 1").replace(
            'mode = "mx"', 'mode = "x"'
        )
        self.assertEqual(len(self.problems(text)), 2)

    def test_smtp_limits_and_delivery(self) -> None:
        """
        SMTP limits, trusted networks, TLS files, spool and LMTP delivery are read.
        """
        path = self.write("")
        (path.parent / "cert.pem").write_text("x")
        (path.parent / "key.pem").write_text("x")
        os.chmod(path.parent / "key.pem", 0o600)
        text = GOOD.replace(
            "[[smtp.listen]]",
            '[smtp]\ntrusted_networks = ["192.0.2.0/24", "::1"]\nmax_recipients = 5\n'
            'command_timeout = 600\n\n[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n\n'
            "[[smtp.listen]]",
        ).replace('maildir_root = "mail"', 'local = "lmtp"\nlmtp_endpoint = "tcp:127.0.0.1:24"')
        path.write_text(text)
        config = load_config(path)
        self.assertEqual(config.smtp.trusted_networks, ("192.0.2.0/24", "::1"))
        self.assertEqual(config.smtp.max_recipients, 5)
        self.assertEqual(config.smtp.command_timeout, 600.0)
        self.assertEqual(config.smtp.max_command_line, 512)
        assert config.tls is not None
        self.assertEqual(config.tls.private_key, path.parent / "key.pem")
        self.assertEqual(config.spool.directory, path.parent / "spool")
        self.assertEqual(config.delivery.lmtp_endpoint, "tcp:127.0.0.1:24")

    def test_smtp_and_delivery_problems(self) -> None:
        """
        Bad networks, too small line limits, a bad LMTP endpoint and an open key file are named.
        """
        path = self.write("")
        (path.parent / "cert.pem").write_text("x")
        (path.parent / "key.pem").write_text("x")
        os.chmod(path.parent / "key.pem", 0o644)
        text = GOOD.replace(
            "[[smtp.listen]]",
            '[smtp]\ntrusted_networks = ["10.0.0.0/33"]\nmax_command_line = 100\n\n'
            '[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n\n[[smtp.listen]]',
        ).replace('maildir_root = "mail"', 'local = "lmtp"\nlmtp_endpoint = "nonsense:1"')
        path.write_text(text)
        self.assertEqual(
            sorted(self.problems_of(path)),
            [
                "delivery.lmtp_endpoint: not a valid client endpoint: "
                "Unknown endpoint type: 'nonsense'",
                "smtp.max_command_line: must be at least 512 (RFC 5321 4.5.3.1.4)",
                "smtp.trusted_networks: "
                "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
                f"tls.private_key: {path.parent / 'key.pem'} is readable by group or others "
                "(use chmod 600)",
            ],
        )

    def test_defaults_are_values(self) -> None:
        """
        Defaults of optional keys are plain values of the right type.
        """
        config = load_config(self.write(GOOD))
        self.assertEqual(config.spool.inline_limit, 65536)
        self.assertEqual(config.delivery.concurrency, 20)
        self.assertEqual(config.smtp.max_message_size, 52_428_800)
        self.assertIs(config.smtp.forbid_unauth_pipelining, True)

    def test_maildir_processes(self) -> None:
        """
        C{delivery.maildir_processes} is 0 (threads) by default and takes 0 to 16; another
        number or a value that is no integer is named with the file and the key.
        """
        self.assertEqual(load_config(self.write(GOOD)).delivery.maildir_processes, 0)
        two = GOOD.replace('maildir_root = "mail"', 'maildir_root = "mail"\nmaildir_processes = 2')
        self.assertEqual(load_config(self.write(two)).delivery.maildir_processes, 2)
        for value, reason in (
            ("17", "must be from 0 to 16"),
            ("-1", "must be from 0 to 16"),
            ("true", "expected an integer, got true or false"),
        ):
            bad = GOOD.replace(
                'maildir_root = "mail"', f'maildir_root = "mail"\nmaildir_processes = {value}'
            )
            self.assertEqual(self.problems(bad), [f"delivery.maildir_processes: {reason}"])

    def test_maildir_process_idle(self) -> None:
        """
        C{delivery.maildir_process_idle} is 100 seconds by default and takes a positive
        number; 0 is named with the file and the key.
        """
        self.assertEqual(load_config(self.write(GOOD)).delivery.maildir_process_idle, 100.0)
        root = 'maildir_root = "mail"'
        five = GOOD.replace(root, f"{root}\nmaildir_process_idle = 5")
        self.assertEqual(load_config(self.write(five)).delivery.maildir_process_idle, 5.0)
        bad = GOOD.replace(root, f"{root}\nmaildir_process_idle = 0")
        self.assertEqual(
            self.problems(bad), ["delivery.maildir_process_idle: must be greater than 0"]
        )

    def test_pin_cpus(self) -> None:
        """
        C{server.pin_cpus} is on by default and can be switched off; a value that is not a
        boolean is named with the file and the key.
        """
        self.assertTrue(load_config(self.write(GOOD)).server.pin_cpus)
        host = 'hostname = "mx.example.test"'
        off = GOOD.replace(host, f"{host}\npin_cpus = false")
        self.assertFalse(load_config(self.write(off)).server.pin_cpus)
        bad = GOOD.replace(host, f"{host}\npin_cpus = 1")
        self.assertEqual(
            self.problems(bad), ["server.pin_cpus: expected true or false, got an integer"]
        )

    def test_unauth_pipelining_switch(self) -> None:
        """
        C{smtp.forbid_unauth_pipelining} can be switched off; a value that is not a boolean
        is named.
        """
        smtp = '[[smtp.listen]]\nendpoint = "tcp:2525:interface=127.0.0.1"\nmode = "mx"\n'
        off = GOOD.replace(smtp, "[smtp]\nforbid_unauth_pipelining = false\n\n" + smtp)
        self.assertIs(load_config(self.write(off)).smtp.forbid_unauth_pipelining, False)
        bad = off.replace("= false", '= "no"')
        self.assertEqual(
            self.problems(bad),
            ["smtp.forbid_unauth_pipelining: expected true or false, got a string"],
        )

    def test_reverse_lookup_switch(self) -> None:
        """
        C{smtp.reverse_lookup} is off unless switched on; a value that is not a boolean is
        named.
        """
        self.assertIs(load_config(self.write(GOOD)).smtp.reverse_lookup, False)
        smtp = '[[smtp.listen]]\nendpoint = "tcp:2525:interface=127.0.0.1"\nmode = "mx"\n'
        on = GOOD.replace(smtp, "[smtp]\nreverse_lookup = true\n\n" + smtp)
        self.assertIs(load_config(self.write(on)).smtp.reverse_lookup, True)
        self.assertEqual(
            self.problems(on.replace("= true", "= 1")),
            ["smtp.reverse_lookup: expected true or false, got an integer"],
        )

    def test_hardening_keys(self) -> None:
        """
        C{smtp.max_sessions} (default 100), C{smtp.dsn} (default C{limited}) and each
        listener's C{sender_login_match} (default on for submission and smtps, off for mx)
        are read; bad values are named.
        """
        config = load_config(self.write(GOOD))
        self.assertEqual(config.smtp.max_sessions, 100)
        self.assertIs(config.smtp.dsn, DSNRequests.LIMITED)
        smtp = '[[smtp.listen]]\nendpoint = "tcp:2525:interface=127.0.0.1"\nmode = "mx"\n'
        listeners = (
            smtp
            + '[[smtp.listen]]\nendpoint = "tcp:2587"\nmode = "submission"\n'
            + '[[smtp.listen]]\nendpoint = "tcp:2588"\nmode = "submission"\n'
            + "sender_login_match = false\n"
            + '[[smtp.listen]]\nendpoint = "tcp:2526"\nmode = "mx"\nsender_login_match = true\n'
        )
        text = GOOD.replace(smtp, '[smtp]\nmax_sessions = 7\ndsn = "ignore"\n\n' + listeners)
        config = load_config(self.write(text))
        self.assertEqual((config.smtp.max_sessions, config.smtp.dsn), (7, DSNRequests.IGNORE))
        self.assertEqual(
            [listen.sender_login_match for listen in config.smtp.listen],
            [False, True, False, True],
        )
        bad = text.replace("max_sessions = 7", "max_sessions = 0").replace('"ignore"', '"all"')
        problems = self.problems(bad)
        self.assertIn("smtp.max_sessions: must be greater than 0", problems)
        self.assertEqual(len(problems), 2, problems)
        self.assertTrue(problems[1].startswith("smtp.dsn: "), problems)

    def test_outbound_defaults(self) -> None:
        """
        Without an [outbound] table, mail goes direct with the MDaemon options off.
        """
        outbound = load_config(self.write(GOOD)).outbound
        self.assertEqual(outbound.mode, Mode.DIRECT)
        self.assertEqual(outbound.smarthost_tls, TLSMode.VERIFIED)
        self.assertEqual(outbound.mx_tls, TLSMode.OPPORTUNISTIC)
        self.assertEqual(outbound.mx_port, 25)
        self.assertFalse(outbound.abort_on_rcpt_5xx)
        self.assertFalse(outbound.bounce_if_no_mx_or_a)
        self.assertFalse(outbound.bounce_on_first_5xx)
        self.assertFalse(outbound.per_account_mailbox_password)

    def test_outbound_smarthost(self) -> None:
        """
        A smart host with AUTH and POP-before-SMTP is read; passwords stay secret.
        """
        text = GOOD + (
            '\n[outbound]\nmode = "smarthost"\nsmarthost = "[relay.test]:587"\n'
            'smarthost_login = "me"\nsmarthost_password = "pw1"\npop_before_smtp = true\n'
            'pop_server = "pop.test:110"\npop_login = "me"\npop_password = "pw2"\n'
            'dns_servers = ["127.0.0.1:5353"]\n'
        )
        config = load_config(self.write(text))
        outbound = config.outbound
        self.assertEqual(outbound.mode, Mode.SMARTHOST)
        self.assertEqual(outbound.smarthost, "[relay.test]:587")
        assert outbound.smarthost_password is not None
        self.assertEqual(outbound.smarthost_password.reveal(), "pw1")
        self.assertNotIn("pw1", repr(config))
        self.assertNotIn("pw2", repr(config))
        self.assertEqual(outbound.dns_servers, ("127.0.0.1:5353",))

    def test_outbound_problems(self) -> None:
        """
        Missing smart host, bad forms and incomplete credentials are named.
        """
        text = GOOD + (
            '\n[outbound]\nmode = "direct_then_smarthost"\nsmarthost_login = "me"\n'
            'smarthost = "[relay:x"\n'
            'pop_before_smtp = true\nmx_tls = "verified"\ndns_servers = ["nope"]\n'
            "per_account_mailbox_password = true\n"
        )
        self.assertEqual(
            sorted(self.problems(text)),
            [
                "outbound.dns_servers: 'nope' is not address:port",
                "outbound.mx_tls: MX hosts are not verified (no DANE/MTA-STS yet): "
                "use 'opportunistic' or 'none'",
                "outbound.per_account_mailbox_password: only has a meaning with per_account_auth",
                "outbound.pop_login: pop_login and pop_password are required",
                "outbound.pop_server: must be host:port with pop_before_smtp",
                "outbound.smarthost: '[relay:x': '[' without ']'",
                "outbound.smarthost_password: required with smarthost_login",
            ],
        )

    def test_queue_settings(self) -> None:
        """
        [queue] sets the retry schedule and notices; the hop limit comes from [smtp].
        """
        text = GOOD.replace("[[smtp.listen]]", "[smtp]\nhop_limit = 30\n\n[[smtp.listen]]") + (
            '\n[queue]\nlifetime_days = 2\ndelay_notice = false\nfailure_subject = "Bounced"\n'
        )
        policy = load_config(self.write(text)).queue
        self.assertEqual(policy.lifetime, 2 * 86400.0)
        self.assertFalse(policy.delay_notice)
        self.assertEqual(policy.hop_limit, 30)
        self.assertEqual(policy.texts.failure_subject, "Bounced")
        self.assertEqual(policy.remote_interval, 900.0)

    def test_queue_problems(self) -> None:
        """
        A maximal backoff below the minimal one is refused with the reason.
        """
        text = GOOD + "\n[queue]\nminimal_backoff = 600\nmaximal_backoff = 60\n"
        [problem] = self.problems(text)
        self.assertTrue(
            problem.startswith("queue: maximal_backoff (60.0) must not be less"), problem
        )


class ControlConfigTests(SynchronousTestCase):
    """
    C{[control] socket}, and L{load_locations} for C{mdtwistctl}.
    """

    def write(self, text: str) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "mdtwist.toml"
        path.write_text(text)
        return path

    def test_default_socket(self) -> None:
        """
        Without C{[control]}, the socket is C{control.sock} in the spool directory.
        """
        path = self.write(GOOD)
        config = load_config(path)
        self.assertEqual(config.control_socket(), path.parent / "spool" / "control.sock")
        self.assertEqual(load_locations(path), (path.parent / "spool", config.control_socket()))

    def test_socket(self) -> None:
        """
        C{control.socket} is a path relative to the file's directory.
        """
        path = self.write(GOOD + '\n[control]\nsocket = "run/ctl.sock"\n')
        self.assertEqual(load_config(path).control_socket(), path.parent / "run" / "ctl.sock")
        self.assertEqual(load_locations(path)[1], path.parent / "run" / "ctl.sock")

    def test_bad_socket(self) -> None:
        """
        An empty socket path, a path too long for a UNIX socket, a wrong type and an unknown
        key are problems.
        """
        long = "/tmp/" + "x" * 110
        for text, problem in (
            ('socket = ""', "control.socket: must not be empty"),
            (f'socket = "{long}"', f"control.socket: {long} is longer than 107 bytes"),
            ("socket = 1", "control.socket: expected a string, got an integer"),
            ('sock = "x"', "control.sock: unknown key"),
        ):
            path = self.write(GOOD + f"\n[control]\n{text}\n")
            error = self.assertRaises(ConfigError, load_config, path)
            self.assertTrue(error.problems[0].startswith(f"{path}: {problem}"), error.problems)

    def test_locations_need_only_their_keys(self) -> None:
        """
        L{load_locations} reads the spool and the socket even when the rest of the file has
        problems, and reports a missing spool directory or an unreadable file.
        """
        path = self.write('[spool]\ndirectory = "/var/spool/x"\n[server]\nbogus = 1\n')
        self.assertEqual(
            load_locations(path), (Path("/var/spool/x"), Path("/var/spool/x/control.sock"))
        )
        path = self.write("[server]\n")
        error = self.assertRaises(ConfigError, load_locations, path)
        self.assertEqual(
            list(error.problems), [f"{path}: spool.directory: required value is missing"]
        )
        missing = path.parent / "missing.toml"
        error = self.assertRaises(ConfigError, load_locations, missing)
        self.assertEqual(
            list(error.problems), [f"{missing}: cannot read: No such file or directory"]
        )


class ClientSettingsConfigTests(SynchronousTestCase):
    """
    C{[[http.listen]]} and C{[settings]}.
    """

    def write(self, text: str) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "mdtwist.toml"
        path.write_text(text)
        return path

    def problems(self, text: str) -> list[str]:
        path = self.write(text)
        self.problems_path = str(path.parent)
        error = self.assertRaises(ConfigError, load_config, path)
        return [line.removeprefix(f"{path}: ") for line in error.problems]

    def test_defaults(self) -> None:
        """
        No HTTP listener, push and override off, documents beside the configuration file.
        """
        path = self.write(GOOD)
        config = load_config(path)
        self.assertEqual(config.http.listen, ())
        settings = config.settings
        assert settings is not None
        self.assertEqual((settings.push_enabled, settings.allow_override), (False, False))
        self.assertEqual(settings.directory, path.parent / "client-settings")
        self.assertEqual(
            (settings.imap_port, settings.imap_security), (993, Security.IMPLICIT_TLS)
        )

    def test_values(self) -> None:
        """
        Listeners, switches and the advertised services are read.
        """
        text = GOOD + (
            '[[http.listen]]\nendpoint = "tcp:8080"\n'
            '[settings]\npush_enabled = true\nallow_override = true\ndirectory = "cs"\n'
            'imap_security = "starttls"\nimap_port = 143\n'
            'submission = ["implicit-tls:465", "starttls:587"]\n'
        )
        path = self.write(text)
        config = load_config(path)
        self.assertEqual([listen.endpoint for listen in config.http.listen], ["tcp:8080"])
        settings = config.settings
        assert settings is not None
        self.assertTrue(settings.push_enabled and settings.allow_override)
        self.assertEqual(settings.directory, path.parent / "cs")
        self.assertEqual(
            settings.submission, ((Security.IMPLICIT_TLS, 465), (Security.STARTTLS, 587))
        )

    def test_problems(self) -> None:
        """
        Each bad value is named.
        """
        text = GOOD + (
            '[[http.listen]]\nendpoint = "tcp:8443"\ntls = true\ncolour = 1\n'
            '[[http.listen]]\nendpoint = "nonsense:1"\n'
            '[settings]\nimap_security = "ssl"\nsubmission = ["tls:465"]\nimap_port = 70000\n'
        )
        self.assertEqual(
            sorted(self.problems(text)),
            sorted(
                [
                    "http.listen[0].colour: unknown key",
                    "http.listen[1].endpoint: not a valid server endpoint: "
                    "Unknown endpoint type: 'nonsense'",
                    "settings.imap_security: must be one of 'implicit-tls', 'starttls', 'none',"
                    " got 'ssl'",
                    "settings.submission: 'tls:465' is not SECURITY:PORT (SECURITY one of"
                    " implicit-tls, starttls, none)",
                    "settings.imap_port: must be at most 65535",
                    "http.listen[0].tls: needs the [tls] certificate",
                ]
            ),
        )

    def test_profile_signing_needs_both(self) -> None:
        """
        A profile certificate needs its key, and the files must be readable.
        """
        text = GOOD + '[settings]\nprofile_certificate = "missing.pem"\n'
        problems = sorted(self.problems(text))
        self.assertEqual(
            problems,
            [
                "settings.profile_certificate: cannot read "
                + str(Path(self.problems_path) / "missing.pem"),
                "settings.profile_certificate: give profile_certificate and profile_private_key",
            ],
        )


class MetricsConfigTests(SynchronousTestCase):
    """
    C{[metrics]}.
    """

    def load(self, text: str) -> Config | list[str]:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "mdtwist.toml"
        path.write_text(text)
        try:
            return load_config(path)
        except ConfigError as e:
            return [line.removeprefix(f"{path}: ") for line in e.problems]

    def test_default_off(self) -> None:
        """
        Off, and only loopback may read it once on.
        """
        config = self.load(GOOD)
        assert isinstance(config, Config)
        self.assertFalse(config.metrics.enable)
        self.assertEqual(config.metrics.allowed_networks, ("127.0.0.0/8", "::1/128"))

    def test_values(self) -> None:
        """
        Enabled with its networks, beside an HTTP listener.
        """
        config = self.load(
            GOOD
            + '[[http.listen]]\nendpoint = "tcp:8080"\n'
            + '[metrics]\nenable = true\nallowed_networks = ["192.0.2.0/24"]\n'
        )
        assert isinstance(config, Config)
        self.assertTrue(config.metrics.enable)
        self.assertEqual(config.metrics.allowed_networks, ("192.0.2.0/24",))

    def test_problems(self) -> None:
        """
        Metrics need an HTTP listener; bad networks and unknown keys are named.
        """
        problems = self.load(
            GOOD + '[metrics]\nenable = true\nallowed_networks = ["nonsense"]\nport = 9\n'
        )
        assert isinstance(problems, list)
        self.assertEqual(
            sorted(problems),
            [
                "metrics.allowed_networks: 'nonsense' does not appear to be an IPv4 or IPv6"
                " network",
                "metrics.enable: needs an [[http.listen]] listener to serve /metrics",
                "metrics.port: unknown key",
            ],
        )
