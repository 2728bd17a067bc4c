# -*- test-case-name: tests.test_services -*-
"""
Builds the service tree from the configuration and hands every object its collaborators.

The top service is a L{mdtwist.drain.ServerTree}: on stop it first drains the SMTP sessions
(within C{server.drain_timeout}), then stops its children. Children start in the order they
are added and stop in the reverse order, so the listeners stop first, then the queue runner,
then the spool is closed, and the thread pools go last:

    spool-lock           the exclusive lock of this process's spool directory (twistd only)
    cpu-pin              CPUPin: this process on one CPU, its Maildir workers on the others
                         (server.pin_cpus, with two CPUs or more)
    accounts-watch       re-reads the accounts file when it changes (file backend only)
    directory            ThreadPoolService: LDAP calls and password hashing
    spool-io             ThreadPoolService with one thread: the spool's only writer
    spool-read           ThreadPoolService: message loads on read-only connections
    delivery-io          ThreadPoolService: Maildir writes and fsyncs (idle with LMTP or
                         Maildir worker processes)
    spool                closes the spool database on shutdown
    sharing-io           ThreadPoolService with one thread: the Domain Sharing cache ([sharing])
    sharing              SharingService: Minger lookups at the peers, the shared cache
    smtp-client-close    closes idle outbound SMTP connections on shutdown
    maildir-workers      DeliveryWorkers: the Maildir writes, with delivery.maildir_processes
    queue                QueueRunner: spool -> mailboxes and (RemoteDelivery) other hosts
    minger               the Minger UDP server ([minger]; first process only)
    smtp-N-MODE          one RequiredListener per [[smtp.listen]]: each opens, or start-up stops
    settings-io          ThreadPoolService: writes of the client-settings receipts
    http-N               one RequiredListener per [[http.listen]] (first process only)
    control              ControlService: mdtwistctl's UNIX socket (first process only)

With C{server.processes} above 1 (see L{mdtwist.shards}), the first process has C{shards}
instead of the C{smtp-N-MODE} listeners: its SO_REUSEPORT sockets and the child processes. A
child has C{parent-link} (its control link to the parent) and one adopted C{smtp-N-MODE}
listener per socket it was handed. A process that only has spool shards left over to drain
has C{shards} after its listeners.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.application.internet import UDPServer
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, execute
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist import __version__
from mdtwist.affinity import VARIABLE as AFFINITY_VARIABLE
from mdtwist.affinity import Split, allowed, format_cpus, pin_process
from mdtwist.affinity import split as split_cpus
from mdtwist.config import (
    ClientSettingsConfig,
    Config,
    DirectoryBackend,
    ListenConfig,
    ListenerMode,
    LocalDelivery,
    parse_host_port,
)
from mdtwist.control.commands import Reload
from mdtwist.control.handlers import ProcessFacts, register_basics
from mdtwist.control.metrics import Metrics, register_metrics
from mdtwist.control.pipe import ChildLinks, ParentLink
from mdtwist.control.queue import register_queue_commands
from mdtwist.control.registry import ControlDispatcher, ControlRegistry
from mdtwist.control.service import ControlService
from mdtwist.delivery.direct import DeliverFirst
from mdtwist.delivery.dsn import DSNRequests
from mdtwist.delivery.hosts import FailedHosts
from mdtwist.delivery.leases import Leases
from mdtwist.delivery.lmtp import LMTPDelivery
from mdtwist.delivery.local import ILocalDelivery, MaildirDelivery
from mdtwist.delivery.mx import AddressPolicy, MXResolver, make_resolver
from mdtwist.delivery.popauth import pop_before_smtp
from mdtwist.delivery.remote import RemoteDelivery, SmartHostAccess
from mdtwist.delivery.router import RoutingPolicy, parse_host_spec
from mdtwist.delivery.runner import QueueRunner
from mdtwist.delivery.workers import DeliveryWorkers
from mdtwist.dequeue.client import ReleasedDomainsPolicy
from mdtwist.dequeue.gateways import GatewayBook
from mdtwist.dequeue.held import HeldMail
from mdtwist.dequeue.provider import GatewayProvider, odmr_factory
from mdtwist.dequeue.release import (
    ControlSocketRelease,
    DispatcherRelease,
    Release,
    Shards,
    register_gateway_commands,
    register_release_command,
)
from mdtwist.dequeue.service import build_dequeue, register_commands
from mdtwist.directory.cache import CachedDirectory, Reloadable
from mdtwist.directory.file import AccountsWatch, FileDirectory
from mdtwist.drain import GRACE as DRAIN_GRACE
from mdtwist.drain import ServerTree, SessionDrain
from mdtwist.errors import ConfigError, SpoolError
from mdtwist.interfaces import IDirectory, ISharingLookup, ISpool
from mdtwist.login_limits import LoginLimits
from mdtwist.minger.client import MingerClient, Peer
from mdtwist.minger.limits import RateLimits
from mdtwist.minger.server import MingerResponder, MingerServerProtocol, MingerSettings
from mdtwist.portal import LoginPortal, build_login_portal
from mdtwist.settings.model import Security, ServerFacts, SettingsError
from mdtwist.settings.model import Service as ClientService
from mdtwist.settings.store import (
    RECEIPTS_NAME,
    Policy,
    ReceiptStore,
    SettingsSource,
    SettingsStore,
)
from mdtwist.shards import (
    AdoptedListener,
    ChildSpec,
    DrainWatch,
    ListenSpec,
    ShardSupervisor,
    child_argv,
    listen_spec,
    share,
    tls_of,
)
from mdtwist.sharing.cache import CACHE_NAME, CacheStore, SharingCache
from mdtwist.sharing.service import SharingPeer, SharingService
from mdtwist.smtp.client import ClientTimeouts, SMTPClient, trust_root_from_pem
from mdtwist.smtp.core.client import Credentials
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.policy import ReceivePolicy, parse_networks
from mdtwist.smtp.server import CommandHandler, SessionLimits, SessionTally, SMTPServerFactory
from mdtwist.smtp.tls import ReloadableTLS
from mdtwist.spool.lock import SpoolLock, SpoolLocked
from mdtwist.spool.model import Queue, QueuedMessage
from mdtwist.spool.store import SpoolReader, SQLiteSpool, existing_shards, shard_directory
from mdtwist.startup import RequiredListener, server_endpoint
from mdtwist.threadpool import ThreadPoolService

_log = Logger()


class SpoolService(Service):
    """
    Closes the spool database when the application stops.
    """

    def __init__(self, spool: SQLiteSpool) -> None:
        """
        @param spool: the spool, already opened.
        """
        self.spool = spool
        self.setName("spool")

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.spool.close()


class CPUPin(Service):
    """
    Keeps this server process on its CPU from its start (L{mdtwist.affinity}).
    """

    def __init__(self, split: Split, allowed: frozenset[int], workers: bool) -> None:
        """
        @param split: the CPUs of this process and of its Maildir workers.
        @param allowed: all the CPUs this process may use, recorded for the child processes
            it starts.
        @param workers: whether the process has Maildir workers (for the log line).
        """
        self._split = split
        self._allowed = allowed
        self._workers = workers
        self.setName("cpu-pin")

    @override
    def startService(self) -> None:
        super().startService()
        os.environ[AFFINITY_VARIABLE] = format_cpus(self._allowed)
        server = format_cpus(self._split.server)
        try:
            pin_process(self._split.server)
        except OSError as e:
            _log.warn(
                "Cannot keep the server process on CPU {server}: {error}",
                server=server,
                error=e.strerror,
            )
            return
        if self._workers:
            _log.info(
                "Server process on CPU {server}, its Maildir workers on CPUs {workers}",
                server=server,
                workers=format_cpus(self._split.workers),
            )
        else:
            _log.info("Server process on CPU {server}", server=server)


def _has_workers(config: Config) -> bool:
    # Whether Maildir worker processes write the local mail.
    delivery = config.delivery
    return delivery.local is LocalDelivery.MAILDIR and delivery.maildir_processes > 0


class OnStop(Service):
    """
    Calls a function when the application stops (after the services added after it).
    """

    def __init__(self, name: str, action: Callable[[], object]) -> None:
        """
        @param name: the service name.
        @param action: what to call.
        """
        self._action = action
        self.setName(name)

    @override
    def stopService(self) -> None:
        super().stopService()
        self._action()


def build_directory(
    config: Config, reactor: Any, run: Callable[..., Deferred[Any]], parent: MultiService
) -> IDirectory:
    """
    Build the account directory with its cache.

    @param config: the configuration.
    @param reactor: the clock for reloads and the cache.
    @param run: runs blocking directory work on the directory's thread pool.
    @param parent: gets any service the backend needs at shutdown.
    @return: the directory.
    @raise ConfigError: when the accounts file is bad.
    """
    settings = config.directory
    backend: IDirectory
    if settings.backend is DirectoryBackend.LDAP:
        assert settings.ldap is not None
        # Imported here: ldap3 adds about 4.6 MiB to every process that loads it, and the
        # embedded default (the accounts file) does not need it.
        from mdtwist.directory.ldap import LDAPDirectory

        ldap = LDAPDirectory(settings.ldap, run)
        OnStop("directory-close", ldap.close).setServiceParent(parent)
        backend = ldap
    else:
        assert settings.file is not None
        path = settings.file.path
        try:
            path.open("rb").close()
        except OSError as e:
            # Named by its key, like every other configuration problem.
            raise ConfigError(
                [f"{config.path}: directory.file.path: cannot read {path}: {e.strerror}"]
            ) from None
        backend = FileDirectory(settings.file.path, run)
    cache = settings.cache
    cached = CachedDirectory(
        backend, reactor, ttl=cache.ttl, negative_ttl=cache.negative_ttl, size=cache.size
    )
    if isinstance(backend, FileDirectory):
        assert settings.file is not None
        interval = settings.file.check_interval
        AccountsWatch(backend.check, cached.forget, reactor, interval).setServiceParent(parent)
    return cached


def take_spool_lock(config: Config, shard: int = 0) -> SpoolLock:
    """
    Take the exclusive lock of a spool directory, creating the directory if need be.

    @param config: the configuration.
    @param shard: the spool shard (0: the configured spool directory itself).
    @return: the lock, held; a service that writes the running PID and lets go at shutdown.
    @raise ConfigError: when another process holds it (the line names the directory and that
        process's PID), or the lock file cannot be made.
    """
    directory = shard_directory(config.spool.directory, shard)
    problem = f"{config.path}: spool.directory"
    lock = SpoolLock(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock.acquire()
    except SpoolLocked as e:
        raise ConfigError([f"{problem}: {e}"]) from None
    except OSError as e:
        raise ConfigError([f"{problem}: cannot use {directory}: {e.strerror}"]) from None
    return lock


def open_spool(
    config: Config,
    run: Callable[..., Deferred[Any]],
    read: Callable[..., Deferred[Any]] | None = None,
    *,
    shard: int = 0,
) -> SQLiteSpool:
    """
    Open the spool at start-up, running its crash recovery before any listener opens.

    The check runs synchronously (the reactor is not running yet), so a spool that cannot be
    opened stops start-up with a clear line instead of failing later.

    @param config: the configuration.
    @param run: runs the spool's blocking work on its writer thread from now on.
    @param read: runs message loads on reading threads with connections of their own.
    @param shard: the spool shard to open (0: the configured spool directory itself).
    @return: the spool.
    @raise ConfigError: when the spool directory or database cannot be used.
    """
    directory = shard_directory(config.spool.directory, shard)
    problem = f"{config.path}: spool.directory: cannot use {directory}"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError([f"{problem}: {e.strerror}"]) from None
    check = SQLiteSpool(directory, execute, inline_limit=config.spool.inline_limit, shard=shard)
    outcome: list[Failure | None] = []
    check.open().addBoth(outcome.append)
    check.close()
    if isinstance(outcome[0], Failure):
        raise ConfigError([f"{problem}: {outcome[0].getErrorMessage()}"])
    return SQLiteSpool(
        directory, run, inline_limit=config.spool.inline_limit, read=read, shard=shard
    )


def build_local_delivery(
    config: Config, reactor: Any, run: Callable[..., Deferred[Any]]
) -> ILocalDelivery:
    """
    Build the local delivery agent.

    @param config: the configuration.
    @param reactor: the clock (Maildir file names).
    @param run: runs blocking writes (on the delivery thread pool, or in the Maildir worker
        processes).
    @return: the delivery agent.
    @raise ConfigError: when the Maildir root cannot be created.
    """
    if config.delivery.local is LocalDelivery.LMTP:
        description = config.delivery.lmtp_endpoint
        return LMTPDelivery(
            lambda: clientFromString(reactor, description),
            reactor,
            config.server.hostname,
            server=description,
        )
    root = config.delivery.maildir_root
    assert root is not None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            [f"{config.path}: delivery.maildir_root: cannot use {root}: {e.strerror}"]
        ) from None
    return MaildirDelivery(root, run, reactor, hostname=config.server.hostname)


def build_remote_delivery(
    config: Config,
    reactor: Any,
    directory: IDirectory,
    parent: MultiService,
    shard: int = 0,
    sharing: SharingService | None = None,
) -> RemoteDelivery:
    """
    Build remote delivery: the router's policy, MX resolution, the SMTP client and the
    smart-host access.

    @param config: the configuration.
    @param reactor: the reactor (time, TCP, UDP for DNS).
    @param directory: finds sending accounts for per-account smart-host AUTH.
    @param parent: gets the service that closes idle client connections at shutdown.
    @param shard: this process's shard, for its share of the per-host connection limit.
    @param sharing: Domain Sharing, whose cache forgets an address its peer says C{5.1.1} to.
    @return: the remote delivery for the queue runner.
    @raise ConfigError: when the smart host's CA file cannot be read.
    """
    outbound = config.outbound
    smart_host = parse_host_spec(outbound.smarthost) if outbound.smarthost else None
    policy = RoutingPolicy(
        mode=outbound.mode,
        smart_host=smart_host,
        port=outbound.mx_port,
        bounce_no_address=outbound.bounce_if_no_mx_or_a,
        bounce_on_first_5xx=outbound.bounce_on_first_5xx,
        sharing_smarthost_fallback=not config.sharing.no_smarthost_on_error,
    )
    servers = [_checked(parse_host_port(text)) for text in outbound.dns_servers] or None
    resolver = MXResolver(
        make_resolver(servers, reactor),
        reactor,
        addresses=AddressPolicy.IPV4_FIRST if outbound.ipv6 else AddressPolicy.IPV4_ONLY,
        own_names=frozenset({config.server.hostname}),
    )
    trust_root = None
    if outbound.smarthost_ca_file is not None:
        try:
            trust_root = trust_root_from_pem(outbound.smarthost_ca_file)
        except (OSError, ValueError) as e:
            raise ConfigError(
                [f"{config.path}: outbound.smarthost_ca_file: cannot use it: {e}"]
            ) from None
    client = SMTPClient(
        clock=reactor,
        hostname=config.server.hostname,
        timeouts=ClientTimeouts(connect=outbound.connect_timeout),
        # The limit is the server's: each process has its share.
        max_per_host=share(outbound.max_connections_per_host, config.server.processes, shard),
        trust_root=trust_root,
    )
    OnStop("smtp-client-close", client.close_idle).setServiceParent(parent)
    credentials = None
    if outbound.smarthost_login and outbound.smarthost_password is not None:
        credentials = Credentials(outbound.smarthost_login, outbound.smarthost_password)
    pop_login: Callable[[], Deferred[bool]] | None = None
    if outbound.pop_before_smtp:
        assert outbound.pop_password is not None
        pop_host, pop_port = _checked(parse_host_port(outbound.pop_server))
        login, password = outbound.pop_login, outbound.pop_password

        def log_in_to_pop() -> Deferred[bool]:
            endpoint = HostnameEndpoint(reactor, pop_host, pop_port)
            return pop_before_smtp(endpoint, login, password, reactor)

        pop_login = log_in_to_pop

    access = SmartHostAccess(
        tls=outbound.smarthost_tls,
        credentials=credentials,
        plaintext_auth=outbound.smarthost_plaintext_auth,
        per_account=outbound.per_account_auth,
        mailbox_password=outbound.per_account_mailbox_password,
        pop_login=pop_login,
    )

    endpoints: dict[tuple[str, int], IStreamClientEndpoint] = {}

    def connect(address: str, port: int) -> IStreamClientEndpoint:
        # Asked once per message and host tried; an endpoint can connect any number of times.
        endpoint = endpoints.get((address, port))
        if endpoint is None:
            if len(endpoints) >= 4096:
                endpoints.clear()
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            timeout = int(outbound.connect_timeout)
            endpoint = endpoints[address, port] = kind(reactor, address, port, timeout=timeout)
        return endpoint

    return RemoteDelivery(
        policy=policy,
        resolver=resolver,
        client=client,
        failed_hosts=dead_hosts(config),
        connect=connect,
        directory=directory,
        smart_host=access,
        mx_tls=outbound.mx_tls,
        abort_on_rcpt_5xx=outbound.abort_on_rcpt_5xx,
        delay_after_temp_error=config.queue.delay_after_temp_error,
        forget_peer_address=None if sharing is None else sharing.drop,
        clock=reactor,
    )


def dead_hosts(config: Config) -> FailedHosts:
    """
    Build the dead-host cache of remote delivery.

    A host that failed is left alone for 5 minutes at first (Postfix's minimal backoff), longer
    on repeats, but never longer than the remote queue's retry interval: a shorter interval
    also shortens the first period, so the cache never holds mail back beyond the configured
    schedule.

    @param config: the configuration.
    @return: the cache.
    """
    interval = config.queue.remote_interval
    base = min(300.0, interval)
    return FailedHosts(base=base, maximum=max(base, interval))


def _checked(value: tuple[str, int] | None) -> tuple[str, int]:
    # The configuration has validated these already.
    assert value is not None
    return value


def smtp_factory(
    config: Config,
    listen: ListenConfig,
    directory: IDirectory,
    spool: ISpool,
    tls: IOpenSSLServerConnectionCreator | None,
    reactor: Any,
    portal: LoginPortal,
    tally: SessionTally | None = None,
    sharing: ISharingLookup | None = None,
    commands: Mapping[str, CommandHandler] | None = None,
) -> SMTPServerFactory:
    """
    Build the protocol factory of one SMTP listener.

    @param config: the configuration.
    @param listen: the listener.
    @param directory: the account directory.
    @param spool: where accepted messages go: the spool, or L{DeliverFirst} in front of it.
    @param tls: the STARTTLS context, or L{None}.
    @param reactor: the clock for timeouts.
    @param portal: the login portal every listener shares (L{login_portal}).
    @param tally: the process's sessions over every listener (C{smtp.max_sessions}).
    @param sharing: Domain Sharing (this process's L{SharingService}), asked about local
        addresses without an account here; L{None} when C{[sharing]} is off.
    @param commands: extension command handlers (ETRN for gateway domains).
    @return: the factory.
    """
    smtp = config.smtp
    settings = ServerSettings(
        hostname=config.server.hostname,
        max_command_line=smtp.max_command_line,
        max_text_line=smtp.max_text_line,
        max_recipients=smtp.max_recipients,
        max_message_size=smtp.max_message_size,
        max_errors=smtp.max_errors,
        auth_without_tls=smtp.allow_plaintext_auth,
        forbid_unauth_pipelining=smtp.forbid_unauth_pipelining,
    )
    limits = SessionLimits(
        max_sessions_per_ip=smtp.max_sessions_per_ip,
        idle_timeout=smtp.command_timeout,
        data_timeout=smtp.data_timeout,
        hop_limit=smtp.hop_limit,
    )
    policy = ReceivePolicy(
        directory,
        trusted_networks=parse_networks(smtp.trusted_networks),
        postmaster=config.server.postmaster,
        sender_must_match_login=listen.sender_login_match,
        sharing=sharing,
        sharing_lookups_per_session=config.sharing.lookups_per_session,
        gateway_domains=[g.domain for g in config.gateways],
    )
    return SMTPServerFactory(
        settings=settings,
        mode=listen.mode,
        policy=policy,
        spool=spool,
        portal=portal,
        clock=reactor,
        tls=tls,
        limits=limits,
        keep_auth_password=config.outbound.per_account_mailbox_password,
        tally=tally,
        dsn_untrusted=None if smtp.dsn is DSNRequests.HONOUR else smtp.dsn,
        trusted=policy.trusted,
        commands=commands,
        reverse_name=reverse_names(config, reactor) if smtp.reverse_lookup else None,
    )


def reverse_names(config: Config, reactor: Any) -> Callable[[str], Deferred[str | None]]:
    """
    Build the lookup of client names for the mail log (C{smtp.reverse_lookup}), asking the
    DNS servers of C{[outbound]}.

    @param config: the configuration.
    @param reactor: the reactor (UDP for DNS, the clock).
    @return: finds the forward-confirmed name of a client address.
    """
    servers = [_checked(parse_host_port(t)) for t in config.outbound.dns_servers] or None
    return MXResolver(make_resolver(servers, reactor), reactor).reverse_name


def login_portal(config: Config, directory: IDirectory, reactor: Any) -> LoginPortal:
    """
    Build the one login portal of this process: every protocol's logins and their shared
    brute-force limit (C{smtp.max_auth_failures} per client address and per login name within
    C{smtp.auth_failure_window}; counted per process).

    @param config: the configuration.
    @param directory: the account directory.
    @param reactor: the clock.
    @return: the portal.
    """
    limits = LoginLimits(
        max_failures=config.smtp.max_auth_failures, window=config.smtp.auth_failure_window
    )
    return build_login_portal(
        directory,
        reactor,
        limits=limits,
        gateway_secrets=GatewayBook(config.gateways).secrets(),
    )


def make_service(
    config: Config,
    reactor: Any,
    *,
    shard: int = 0,
    listen_fds: Sequence[int] = (),
    argv: Sequence[str] = (),
    on_hangup: Callable[[Callable[[], object]], object] | None = None,
    lock_spool: bool = False,
) -> MultiService:
    """
    Build the whole service tree.

    With C{server.processes} above 1, or spool shards left over from a larger setting that
    still hold mail, shard 0 (the process twistd started) also runs the other processes (see
    L{mdtwist.shards}); a child (C{shard} above 0) serves the sockets it was handed.

    @param config: the configuration.
    @param reactor: the reactor everything runs on (time, threads, TCP).
    @param shard: the spool shard this process owns.
    @param listen_fds: a child's listening sockets, one per C{[[smtp.listen]]}; none for a
        child that only drains its spool.
    @param argv: twistd's command line, from which the children's is made.
    @param on_hangup: installs a function to call on SIGHUP (L{mdtwist.tap} does, on the
        reactor thread); given the reload of C{mdtwistctl reload}.
    @param lock_spool: take the exclusive lock of this process's spool directory (see
        L{mdtwist.spool.lock}) before the spool is opened; the running server does, C{--check}
        does not.
    @return: the top service, named C{mdtwist}.
    @raise ConfigError: when a part cannot be built (a bad accounts file, an unusable spool,
        a certificate that does not load, a spool locked by another server).
    """
    top = ServerTree()
    top.setName("mdtwist")
    if lock_spool:
        # The first child, so the last to stop: the lock is held until the spool is closed.
        take_spool_lock(config, shard).setServiceParent(top)
    cpus = allowed(os.environ)
    split = split_cpus(cpus, shard) if config.server.pin_cpus else None
    if split is not None:
        # Before the thread pools, whose threads then start on this process's CPU.
        CPUPin(split, cpus, _has_workers(config)).setServiceParent(top)
    directory_pool = ThreadPoolService(reactor, "directory", _directory_threads(config))
    spool_pool = ThreadPoolService(reactor, "spool-io", 1)
    read_pool = ThreadPoolService(reactor, "spool-read", 2)
    delivery_pool = ThreadPoolService(reactor, "delivery-io", config.delivery.concurrency)
    # Built before the pools join the tree: a backend's close step (LDAP unbind) must come
    # first so that, in reverse order at shutdown, it runs after its pool has stopped.
    directory = build_directory(config, reactor, directory_pool.run, top)
    for pool in (directory_pool, spool_pool, read_pool, delivery_pool):
        pool.setServiceParent(top)
    spool = open_spool(config, spool_pool.run, read_pool.run, shard=shard)
    SpoolService(spool).setServiceParent(top)
    # Domain Sharing before the queue, so that it stops after it (remote delivery drops
    # cache entries); every process has its own service over the one shared cache.
    sharing = build_sharing(config, reactor, top)
    book = GatewayBook(config.gateways)
    leases = Leases()
    remote = build_remote_delivery(config, reactor, directory, top, shard, sharing)
    write: Callable[..., Deferred[Any]] = delivery_pool.run
    if _has_workers(config):
        # Before the queue runner, so that they stop after it.
        workers = DeliveryWorkers(
            reactor,
            config.delivery.maildir_processes,
            config.delivery.concurrency,
            config.delivery.maildir_process_idle,
            cpus=split.workers if split is not None else (),
        )
        workers.setServiceParent(top)
        write = workers.run
    runner = QueueRunner(
        spool,
        directory,
        build_local_delivery(config, reactor, write),
        reactor,
        interval=config.delivery.run_interval,
        concurrency=config.delivery.concurrency,
        policy=config.queue,
        hostname=config.server.hostname,
        remote=remote,
        postmaster=config.server.postmaster,
        hold_time=book.hold_time,
        leases=leases,
    )
    runner.setName("queue")
    runner.setServiceParent(top)
    inbound: ISpool = spool
    if config.delivery.direct_max_recipients:
        inbound = DeliverFirst(
            spool,
            runner,
            reactor,
            max_recipients=config.delivery.direct_max_recipients,
            limit=config.delivery.concurrency,
            shard=shard,
        )
    if config.minger.enable and shard == 0:
        build_minger_server(config, reactor, directory).setServiceParent(top)
    reloaders: list[Callable[[], Sequence[str]]] = []
    if isinstance(directory, Reloadable):
        reloaders.append(directory.reload)
    tls = None
    if config.tls is not None:
        tls = ReloadableTLS(config.tls.certificate, config.tls.private_key)
        reloaders.append(tls.reload)
    portal = login_portal(config, directory, reactor)
    # One tally for every listener of this process (smtp.max_sessions counts per process).
    tally = SessionTally(config.smtp.max_sessions)
    held = HeldMail(spool, runner, leases, reactor, remote)
    # The first process's dispatcher, once built (ETRN in the first process uses it).
    first: list[ControlDispatcher] = []
    release: Release = (
        DispatcherRelease(lambda: first[0] if first else None)
        if shard == 0
        else ControlSocketRelease(reactor, config.control_socket())
    )
    shard_links = Shards(held) if shard == 0 else None
    provider = GatewayProvider(
        book,
        config.provider,
        reactor,
        release=release,
        shards=shard_links,
        load=lambda k, queue_id: read_pool.run(
            _load_held, shard_directory(config.spool.directory, k), queue_id
        ),
        hostname=config.server.hostname,
    )
    etrn = (
        {"ETRN": provider.etrn_handler(False)}
        if any(g.honour_etrn for g in book.gateways)
        else None
    )
    factories = [
        smtp_factory(
            config, listen, directory, inbound, tls, reactor, portal, tally, sharing, commands=etrn
        )
        for listen in config.smtp.listen
    ]
    # On stop, the sessions finish their messages (within a bound) before anything stops.
    top.drains.append(SessionDrain(factories, reactor, config.server.drain_timeout))
    # Features register their control commands here (see mdtwist.control).
    registry = ControlRegistry()
    register_basics(
        registry,
        facts=ProcessFacts(
            version=__version__,
            processes=config.server.processes,
            listeners=tuple(f"{li.mode.value} {li.endpoint}" for li in config.smtp.listen),
            shard=shard,
        ),
        count_queue=lambda: _counts(spool),
        run_queue=lambda: _run_queue(runner, remote),
        reloaders=reloaders,
    )
    register_gateway_commands(registry, held)
    register_queue_commands(
        registry,
        shard=shard,
        spool=spool,
        runner=runner,
        clock=reactor,
        leases=leases,
        forget_dead_hosts=remote.forget_failed_hosts,
    )
    register_metrics(registry, shard=shard, spool=spool, clock=reactor)
    if shard > 0:
        dispatcher = ControlDispatcher(registry, shard=shard)
        _on_hangup_reload(on_hangup, dispatcher)
        _add_child_listeners(config, reactor, factories, listen_fds, top, dispatcher)
        if not listen_fds:
            drain = DrainWatch(reactor, runner.add_run_observer, lambda: _active(spool))
            drain.setName("drain-watch")
            drain.setServiceParent(top)
        return top
    processes = config.server.processes
    children = [ChildSpec(k, listens=True) for k in range(1, processes)]
    children += [ChildSpec(k, listens=False) for k in leftover_shards(config)]
    shared: list[tuple[ListenSpec, SMTPServerFactory]] = []
    for i, (listen, factory) in enumerate(zip(config.smtp.listen, factories, strict=True)):
        if processes > 1:
            shared.append((_checked_spec(listen_spec(listen.endpoint)), factory))
            continue
        endpoint = server_endpoint(reactor, listen.endpoint)
        listener = RequiredListener(
            endpoint, factory, key=f"smtp.listen[{i}].endpoint", description=listen.endpoint
        )
        listener.setName(f"smtp-{i}-{listen.mode.value}")
        listener.setServiceParent(top)
    # /metrics asks every process through the first process's dispatcher, made below.
    add_http(
        config,
        reactor,
        directory,
        portal,
        tls,
        top,
        reloaders,
        scrape=lambda: first[0].call(Metrics, {}),
    )
    links = ChildLinks(reactor, [spec.shard for spec in children])
    if children:
        config_path = str(config.path.absolute())
        supervisor = ShardSupervisor(
            reactor,
            shared,
            children,
            lambda spec, sockets: child_argv(config_path, spec, sockets, argv),
            link=links.attach,
            drained=links.finished,
            # A child drains its own sessions first (see mdtwist.drain).
            stop_grace=config.server.drain_timeout + DRAIN_GRACE + 5.0,
        )
        supervisor.setName("shards")
        supervisor.setServiceParent(top)
        # The children drain at the same time as this process, not after it.
        top.drains.append(supervisor.stopService)
    # Dequeue signals go from the first process; mail an ATRN releases enters its shard.
    turned = ListenConfig(endpoint="", mode=ListenerMode.MX)

    def atrn_server(domains: frozenset[str]) -> IProtocol:
        factory = smtp_factory(config, turned, directory, inbound, None, reactor, portal, tally)
        factory.policy = ReleasedDomainsPolicy(factory.policy, domains)
        return factory.buildProtocol(None)

    dequeue = build_dequeue(config, reactor, runner.add_run_observer, atrn_server)
    if config.dequeue.signals:
        dequeue.setServiceParent(top)
    register_commands(registry, dequeue)
    dispatcher = ControlDispatcher(registry, shard=0, children=links)
    first.append(dispatcher)
    register_release_command(registry, provider.release_targets, release)
    assert shard_links is not None
    shard_links.children = links
    if config.provider.odmr_listen:
        _add_odmr_listener(config, reactor, provider, directory, spool, portal, tls, top)
    _on_hangup_reload(on_hangup, dispatcher)
    control = ControlService(reactor, config.control_socket(), dispatcher)
    control.setName("control")
    control.setServiceParent(top)
    return top


def _add_odmr_listener(
    config: Config,
    reactor: Any,
    provider: GatewayProvider,
    directory: IDirectory,
    spool: SQLiteSpool,
    portal: LoginPortal,
    tls: IOpenSSLServerConnectionCreator | None,
    top: MultiService,
) -> None:
    # The ODMR listener (port 366): in the first process only, which reaches every shard;
    # STARTTLS with the [tls] context, as on the SMTP listeners.
    smtp_config = config.smtp
    settings = ServerSettings(
        hostname=config.server.hostname,
        max_command_line=smtp_config.max_command_line,
        max_errors=smtp_config.max_errors,
    )
    limits = SessionLimits(
        max_sessions_per_ip=smtp_config.max_sessions_per_ip,
        idle_timeout=config.provider.idle_timeout,
        data_timeout=config.provider.idle_timeout,
    )
    factory = odmr_factory(
        provider,
        settings=settings,
        policy=ReceivePolicy(directory),
        spool=spool,
        portal=portal,
        clock=reactor,
        limits=limits,
        tls=tls,
    )
    description = config.provider.odmr_listen
    listener = RequiredListener(
        server_endpoint(reactor, description),
        factory,
        key="provider.odmr_listen",
        description=description,
    )
    listener.setName("odmr")
    listener.setServiceParent(top)


def _load_held(directory: Path, queue_id: str) -> QueuedMessage | None:
    # On a reading thread: a held message of any shard, read-only, with its body.
    reader = SpoolReader(directory)
    try:
        return reader.load(queue_id, with_body=True)
    finally:
        reader.close()


def _on_hangup_reload(
    on_hangup: Callable[[Callable[[], object]], object] | None, dispatcher: ControlDispatcher
) -> None:
    # SIGHUP does what "mdtwistctl reload" does (in the first process: in every process).
    if on_hangup is None:
        return

    def reload() -> None:
        _log.info("SIGHUP: reloading")
        dispatcher.call(Reload, {}).addErrback(lambda f: _log.failure("Reload failed", f))

    on_hangup(reload)


def _run_queue(runner: QueueRunner, remote: RemoteDelivery) -> None:
    # An operator's queue run tries every message now, dead hosts included.
    remote.forget_failed_hosts()
    runner.run_now()


def _counts(spool: SQLiteSpool) -> Deferred[tuple[int, int, int]]:
    # The numbers of messages in the active queue, held, and in the bad queue (counted, not
    # listed).
    def count(counts: dict[Queue, int]) -> tuple[int, int, int]:
        return counts[Queue.ACTIVE], counts[Queue.HOLD], counts[Queue.BAD]

    return spool.counts().addCallback(count)


def peer_addresses(config: Config) -> list[str]:
    """
    Resolve the Domain Sharing peers' host names (at start-up, before the reactor runs).

    @param config: the configuration.
    @return: every IP address of every peer.
    @raise ConfigError: when a peer's name does not resolve.
    """
    found: list[str] = []
    for i, peer in enumerate(config.sharing.peers):
        try:
            infos = socket.getaddrinfo(peer.host, None, type=socket.SOCK_DGRAM)
        except OSError as e:
            raise ConfigError(
                [f"{config.path}: sharing.peers[{i}].host: cannot resolve {peer.host}: {e}"]
            ) from None
        found += [str(info[4][0]) for info in infos if str(info[4][0]) not in found]
    return found


def build_sharing(config: Config, reactor: Any, parent: MultiService) -> SharingService | None:
    """
    Build Domain Sharing: its cache (beside the spool, shared by every process), the Minger
    client and the service, all added to C{parent}.

    @param config: the configuration.
    @param reactor: the reactor (UDP, time, threads).
    @param parent: gets the cache's thread pool and the service (named C{sharing}).
    @return: the service, or L{None} when C{[sharing]} is not enabled.
    @raise ConfigError: when the cache cannot be opened or a peer's name does not resolve.
    """
    settings = config.sharing
    if not settings.enable:
        return None
    path = config.spool.directory / CACHE_NAME
    try:
        config.spool.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = CacheStore(path)
    except (OSError, sqlite3.Error) as e:
        raise ConfigError(
            [f"{config.path}: spool.directory: cannot use the sharing cache {path}: {e}"]
        ) from None
    pool = ThreadPoolService(reactor, "sharing-io", 1)
    pool.setServiceParent(parent)
    peers = [
        SharingPeer(
            route=peer.route,
            minger=Peer(peer.host, peer.minger_port, peer.password, peer.hardened),
        )
        for peer in settings.peers
    ]
    service = SharingService(
        peers,
        MingerClient(reactor, timeout=settings.timeout, attempts=settings.attempts),
        SharingCache(store, pool.run, reactor),
        peer_addresses=peer_addresses(config),
    )
    service.setServiceParent(parent)
    return service


def sharing_of(top: MultiService) -> SharingService | None:
    """
    @param top: the tree L{make_service} built.
    @return: its Domain Sharing service (the receive policy's sharing lookup), or L{None} when
        C{[sharing]} is not enabled.
    """
    try:
        service = top.getServiceNamed("sharing")
    except KeyError:
        return None
    assert isinstance(service, SharingService)
    return service


def build_minger_server(config: Config, reactor: Any, directory: IDirectory) -> UDPServer:
    """
    Build the Minger UDP server (run it in the first process only, so that its limits count
    once).

    @param config: the configuration.
    @param reactor: the reactor (UDP, time).
    @param directory: the local directory it answers from (never the sharing cache).
    @return: the service, named C{minger}.
    @raise ConfigError: when a peer's name does not resolve (for the default allow-list).
    """
    minger = config.minger
    if minger.allowed_sources is not None:
        allowed = parse_networks(minger.allowed_sources)
    else:
        allowed = tuple(ipaddress.ip_network(a) for a in peer_addresses(config))
    settings = MingerSettings(
        secret=minger.secret,
        anonymous=minger.anonymous,
        foreign_aliases_active=minger.foreign_aliases_active,
        allowed=allowed,
        hardened_sources=parse_networks(minger.hardened_sources),
        reply_to_denied=minger.reply_to_denied,
        limits=RateLimits(
            rate=minger.rate,
            burst=minger.burst,
            global_rate=minger.global_rate,
            unknown_budget=minger.unknown_budget,
            unknown_window=minger.unknown_window,
            unknown_pause=minger.unknown_pause,
        ),
    )
    protocol = MingerServerProtocol(MingerResponder(directory, settings, reactor))
    server = UDPServer(minger.port, protocol, interface=minger.interface, reactor=reactor)
    server.setName("minger")
    return server


def settings_config(config: Config) -> ClientSettingsConfig:
    """
    @param config: the configuration.
    @return: its C{[settings]}, or the defaults (documents beside the configuration file).
    """
    if config.settings is not None:
        return config.settings
    return ClientSettingsConfig(directory=config.path.parent / "client-settings")


def server_facts(config: Config, machine_name: str = "") -> ServerFacts:
    """
    What the server offers clients, from its own configuration: the defaults of the client
    settings, autoconfig, Autodiscover and the SRV advice.

    @param config: the configuration.
    @param machine_name: the machine's name (C{$MACHINENAME$}).
    @return: the facts; submission services prefer implicit TLS, then STARTTLS.
    """
    settings = settings_config(config)
    hostname = settings.hostname or config.server.hostname
    submission: list[tuple[Security, int]] = list(settings.submission)
    if not submission:
        for listen in config.smtp.listen:
            if listen.mode is ListenerMode.MX:
                continue
            spec = listen_spec(listen.endpoint)
            if spec is None or spec.port == 0:
                continue
            implicit = listen.mode is ListenerMode.SMTPS or spec.tls is not None
            security = Security.IMPLICIT_TLS if implicit else Security.STARTTLS
            if config.tls is None and not implicit:
                security = Security.NONE
            submission.append((security, spec.port))
        order = [Security.IMPLICIT_TLS, Security.STARTTLS, Security.NONE]
        submission.sort(key=lambda service: order.index(service[0]))
    return ServerFacts(
        hostname=hostname,
        imap=ClientService(
            settings.imap_host or hostname, settings.imap_port, settings.imap_security
        ),
        submission=tuple(ClientService(hostname, port, sec) for sec, port in submission),
        machine_name=machine_name,
    )


def load_settings(config: Config) -> SettingsStore:
    """
    Read the client-settings documents at start-up.

    @param config: the configuration.
    @return: the loaded store.
    @raise ConfigError: with a line per problem of the documents.
    """
    store = SettingsStore(settings_config(config).directory)
    try:
        store.load()
    except SettingsError as e:
        raise ConfigError(e.problems) from None
    return store


def add_http(
    config: Config,
    reactor: Any,
    directory: IDirectory,
    portal: LoginPortal,
    tls: IOpenSSLServerConnectionCreator | None,
    top: MultiService,
    reloaders: list[Callable[[], Sequence[str]]] | None = None,
    *,
    scrape: Callable[[], Deferred[Any]] | None = None,
) -> None:
    """
    Add the HTTP(S) listeners of client settings, autoconfig and Autodiscover, and of
    C{/metrics} when C{[metrics]} is enabled.

    They run in the first process only: the answers are small and rare (clients ask when
    they start), and the receipts then have one writer.

    @param config: the configuration.
    @param reactor: the reactor.
    @param directory: the directory (hosted domains).
    @param portal: the login portal (HTTP Basic logins, service C{"http"}).
    @param tls: the C{[tls]} context, for listeners with C{tls = true}.
    @param top: the service tree.
    @param reloaders: gets the reload of the client settings (C{mdtwistctl reload}, SIGHUP).
    @param scrape: runs the metrics command over every process (L{mdtwist.metricsweb}).
    """
    if not config.http.listen:
        return
    # twisted.web only for a server that serves HTTP (about 2.5 MiB less in the others), and
    # the profile signer's part of cryptography only with it (0.5 MiB).
    from mdtwist.metricsweb import MetricsResource, MetricsRoot
    from mdtwist.settings.signing import ProfileSigner
    from mdtwist.settings.web import SettingsResource, build_site

    settings = settings_config(config)
    source = SettingsSource(
        load_settings(config),
        server_facts(config, socket.gethostname()),
        Policy(push_enabled=settings.push_enabled, allow_override=settings.allow_override),
    )
    if reloaders is not None:
        reloaders.append(source.refresh)
    pool = ThreadPoolService(reactor, "settings-io", 1)
    pool.setServiceParent(top)
    try:
        receipts = ReceiptStore(config.spool.directory / RECEIPTS_NAME)
    except SettingsError as e:
        raise ConfigError([f"{config.path}: spool.directory: {p}" for p in e.problems]) from None
    OnStop("settings-receipts-close", receipts.close).setServiceParent(top)
    signer = None
    if settings.profile_certificate is not None and settings.profile_private_key is not None:
        try:
            signer = ProfileSigner(settings.profile_certificate, settings.profile_private_key)
        except SettingsError as e:
            raise ConfigError(
                [f"{config.path}: settings.profile_certificate: {p}" for p in e.problems]
            ) from None
    resource = SettingsResource(
        source,
        portal,
        directory.domains,
        receipts,
        pool.run,
        reactor,
        sign_profile=None if signer is None else signer.sign,
    )
    site = build_site(resource)
    if config.metrics.enable and scrape is not None:
        site.resource = MetricsRoot(
            MetricsResource(scrape, config.metrics.allowed_networks), resource
        )
    for i, listen in enumerate(config.http.listen):
        factory: Any = site
        if listen.tls:
            assert tls is not None
            factory = TLSMemoryBIOFactory(tls, False, site)
        service = RequiredListener(
            server_endpoint(reactor, listen.endpoint),
            factory,
            key=f"http.listen[{i}].endpoint",
            description=listen.endpoint,
        )
        service.setName(f"http-{i}")
        service.setServiceParent(top)


def _active(spool: SQLiteSpool) -> Deferred[int]:
    # The number of messages still to deliver: the active queue and held messages (a held
    # message keeps a draining process alive, so that the operator can release it).
    return spool.counts().addCallback(lambda counts: counts[Queue.ACTIVE] + counts[Queue.HOLD])


def _checked_spec(spec: ListenSpec | None) -> ListenSpec:
    # The configuration has checked that every listener is TCP when there are processes.
    assert spec is not None
    return spec


def _add_child_listeners(
    config: Config,
    reactor: Any,
    factories: Sequence[SMTPServerFactory],
    fds: Sequence[int],
    top: MultiService,
    dispatcher: ControlDispatcher,
) -> None:
    # A child serves the sockets its parent handed over, answers the parent's control commands
    # and stops when the parent is gone.
    if fds and len(fds) != len(factories):
        raise ConfigError(
            [
                f"{config.path}: smtp.listen: this child process was handed {len(fds)}"
                f" listening sockets for {len(factories)} listeners"
            ]
        )
    link = ParentLink(reactor, dispatcher)
    link.setName("parent-link")
    link.setServiceParent(top)
    if not fds:
        return  # a draining child: no listeners
    for i, (listen, factory, fd) in enumerate(
        zip(config.smtp.listen, factories, fds, strict=True)
    ):
        listener = AdoptedListener(reactor, fd, factory, tls_of(listen.endpoint))
        listener.setName(f"smtp-{i}-{listen.mode.value}")
        listener.setServiceParent(top)


def leftover_shards(config: Config) -> list[int]:
    """
    Find the spool shards beyond C{server.processes} that still hold mail to deliver.

    A shard whose database cannot be read counts as holding mail: its draining process will
    say what is wrong with it.

    @param config: the configuration.
    @return: their numbers.
    """
    found = []
    root = config.spool.directory
    for shard in existing_shards(root):
        if shard < config.server.processes:
            continue
        try:
            reader = SpoolReader(shard_directory(root, shard))
        except SpoolError:
            found.append(shard)
            continue
        try:
            if any(entry.queue is not Queue.BAD for entry in reader.list()):
                found.append(shard)
        except SpoolError:
            found.append(shard)
        finally:
            reader.close()
    return found


def _directory_threads(config: Config) -> int:
    ldap = config.directory.ldap
    return ldap.pool_size if ldap is not None else 2
