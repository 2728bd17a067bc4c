# -*- test-case-name: tests.settings.test_render -*-
"""
The standard client-configuration formats, from the same merged settings as the MC document:
Thunderbird autoconfig, Outlook's POX Autodiscover (and its JSON shim), Apple configuration
profiles, and the DNS SRV records an administrator should publish (RFC 6186, RFC 8314).

Every renderer is a pure function of a L{ClientProfile}: what a client needs to reach the
mailbox (servers, ports, security, login name, names), made by L{client_profile} from a domain's
merged settings and either one user's macro values or, for the public autoconfig answer, the
placeholders Thunderbird fills in itself (so the answer is the same for every local part of a
hosted domain, and says nothing about who has a mailbox).

Security wording follows each format: implicit TLS is autoconfig's C{SSL}, Autodiscover's
C{SSL=on} with C{Encryption=SSL} (C{Encryption=TLS} would make Outlook expect STARTTLS) and an
C{_imaps}/C{_submissions} record; STARTTLS is C{STARTTLS}, C{Encryption=TLS}, C{_imap}/
C{_submission}.
"""

from __future__ import annotations

import hashlib
import plistlib
import uuid
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree as ET

import attrs

from mdtwist.settings.model import (
    MACROS,
    MacroContext,
    Merged,
    Security,
    ServerFacts,
    Service,
    expand,
)

_SOCKET_TYPES = {
    Security.IMPLICIT_TLS: "SSL",
    Security.STARTTLS: "STARTTLS",
    Security.NONE: "plain",
}


@attrs.frozen
class ClientProfile:
    """
    What a mail client needs to reach one mailbox (or, with placeholders, any mailbox of a
    domain).

    @ivar domain: the mail domain.
    @ivar email: the address (or C{%EMAILADDRESS%}).
    @ivar display_name: the user's name (or a placeholder, or C{""}).
    @ivar account_name: the label of the account in the client.
    @ivar organization: the organisation, if any.
    @ivar login_name: the IMAP login.
    @ivar imap: the IMAP service.
    @ivar smtp: the SMTP submission services, preferred first.
    @ivar smtp_auth: whether SMTP needs authentication.
    @ivar smtp_login_name: the SMTP login (the IMAP login unless the settings give another).
    @ivar smtp_same_as_incoming: whether SMTP uses the IMAP credentials.
    """

    domain: str
    email: str
    display_name: str
    account_name: str
    organization: str
    login_name: str
    imap: Service
    smtp: tuple[Service, ...]
    smtp_auth: bool
    smtp_login_name: str
    smtp_same_as_incoming: bool


def placeholders(domain: str, facts: ServerFacts) -> dict[str, str]:
    """
    Macro values for the public autoconfig answer: Thunderbird's placeholders for the user's
    own values, the domain's values for the rest, and nothing for what has no placeholder.

    @param domain: the domain asked about.
    @param facts: what the server offers.
    @return: a replacement for every macro name.
    """
    values = {m.name: "" for m in MACROS if not m.name.endswith("n")}
    values.update({f"MAILBOXFIRSTCHARS{n}": "" for n in range(1, 11)})
    values.update(
        EMAIL="%EMAILADDRESS%",
        MAILBOX="%EMAILLOCALPART%",
        USERNAME="%REALNAME%",
        DOMAIN=domain,
        FQDN=facts.hostname,
        DOMAINIP=facts.domain_ips.get(domain, ""),
        MACHINENAME=facts.machine_name,
    )
    return values


def client_profile(
    merged: Merged,
    domain: str,
    facts: ServerFacts,
    context: MacroContext | Mapping[str, str],
) -> ClientProfile:
    """
    Make the profile of a domain's settings for one user (or for placeholders).

    @param merged: the domain's merged settings.
    @param domain: the domain.
    @param facts: what the server offers (the other submission services are alternatives).
    @param context: one user's macro values, or L{placeholders}.
    @return: the profile.
    """
    values = merged.values

    def text(path: str) -> str:
        return expand(str(values[path]), context)

    incoming = text("general.incoming_server") or facts.hostname
    outgoing = text("general.outgoing_server") or incoming
    imap = Service(incoming, merged.port("imap"), merged.security("imap"))
    preferred = Service(outgoing, merged.port("smtp"), merged.security("smtp"))
    smtp = [preferred]
    for other in facts.submission:
        candidate = Service(outgoing, other.port, other.security)
        if candidate not in smtp:
            smtp.append(candidate)
    login = text("general.login_name")
    same = bool(values["advanced.smtp_auth.same_as_incoming"])
    smtp_login = login if same else (text("advanced.smtp_auth.login_name") or login)
    return ClientProfile(
        domain=domain,
        email=text("general.email"),
        display_name=text("general.display_name"),
        account_name=text("general.account_name"),
        organization=text("general.organization"),
        login_name=login,
        imap=imap,
        smtp=tuple(smtp),
        smtp_auth=bool(values["advanced.smtp_auth.required"]),
        smtp_login_name=smtp_login,
        smtp_same_as_incoming=same,
    )


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    text: str = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="utf-8"?>\n' + text + "\n").encode("utf-8")


def _sub(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def autoconfig_xml(profile: ClientProfile) -> bytes:
    """
    Thunderbird's C{config-v1.1.xml}: the preferred servers first, then the alternatives the
    server really offers; password authentication; never C{useGlobalPreferredServer} and never
    a password.

    @param profile: the domain's profile with placeholders.
    @return: the XML document (UTF-8).
    """
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider")
    provider.set("id", profile.domain)
    _sub(provider, "domain", profile.domain)
    _sub(provider, "displayName", profile.account_name or profile.domain)
    _sub(provider, "displayShortName", profile.domain)
    server = _sub(provider, "incomingServer")
    server.set("type", "imap")
    _server(server, profile.imap, profile.login_name, True)
    for service in profile.smtp:
        server = _sub(provider, "outgoingServer")
        server.set("type", "smtp")
        _server(server, service, profile.smtp_login_name, profile.smtp_auth)
    return _xml(root)


def _server(element: ET.Element, service: Service, login: str, auth: bool) -> None:
    _sub(element, "hostname", service.host)
    _sub(element, "port", service.port)
    _sub(element, "socketType", _SOCKET_TYPES[service.security])
    if auth:
        _sub(element, "username", login)
        _sub(element, "authentication", "password-cleartext")
    else:
        _sub(element, "authentication", "none")


AUTODISCOVER_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
OUTLOOK_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def autodiscover_xml(profile: ClientProfile, *, personal: bool) -> bytes:
    """
    The POX Autodiscover answer for Outlook: one C{Protocol} for IMAP, one per SMTP service.

    @param profile: the user's profile.
    @param personal: whether the caller authenticated, so its display name may be given.
    @return: the XML document (UTF-8).
    """
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE)
    response = _sub(root, "Response")
    response.set("xmlns", OUTLOOK_RESPONSE)
    if personal and profile.display_name:
        user = _sub(response, "User")
        _sub(user, "DisplayName", profile.display_name)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    _protocol(account, "IMAP", profile.imap, profile.login_name, True)
    for service in profile.smtp:
        protocol = _protocol(account, "SMTP", service, profile.smtp_login_name, profile.smtp_auth)
        _sub(protocol, "UsePOPAuth", _on(profile.smtp_same_as_incoming))
        _sub(protocol, "SMTPLast", "off")
    return _xml(root)


def _protocol(
    account: ET.Element, kind: str, service: Service, login: str, auth: bool
) -> ET.Element:
    protocol = _sub(account, "Protocol")
    _sub(protocol, "Type", kind)
    _sub(protocol, "Server", service.host)
    _sub(protocol, "Port", service.port)
    _sub(protocol, "LoginName", login)
    _sub(protocol, "DomainRequired", "off")
    _sub(protocol, "SPA", "off")
    _sub(protocol, "SSL", _on(service.security is not Security.NONE))
    _sub(
        protocol,
        "Encryption",
        {Security.IMPLICIT_TLS: "SSL", Security.STARTTLS: "TLS", Security.NONE: "None"}[
            service.security
        ],
    )
    _sub(protocol, "AuthRequired", _on(auth))
    _sub(protocol, "TTL", 1)
    return protocol


def autodiscover_error(code: int, message: str, *, time: str, error_id: str) -> bytes:
    """
    An Autodiscover error answer (600: invalid request; 601: no provider for that schema).

    @param code: the error code.
    @param message: its message.
    @param time: the time of day as text (C{Time} attribute).
    @param error_id: an identifier (C{Id} attribute).
    @return: the XML document (UTF-8).
    """
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE)
    response = _sub(root, "Response")
    error = _sub(response, "Error")
    error.set("Time", time)
    error.set("Id", error_id)
    _sub(error, "ErrorCode", code)
    _sub(error, "Message", message)
    _sub(error, "DebugData", "")
    return _xml(root)


def autodiscover_json(xml_url: str) -> dict[str, str]:
    """
    The JSON ("v2") Autodiscover answer for the C{AutodiscoverV1} protocol.

    @param xml_url: the URL of the POX Autodiscover service.
    @return: the JSON object.
    """
    return {"Protocol": "AutodiscoverV1", "Url": xml_url}


def profile_identifier(hostname: str, address: str) -> str:
    """
    The stable C{PayloadIdentifier} of a user's Apple profile, so that installing it again
    replaces the old one.

    @param hostname: the mail server's host name.
    @param address: the user's address.
    @return: a reverse-DNS identifier.
    """
    reverse = ".".join(reversed(hostname.lower().split("."))) or "mdtwist"
    digest = hashlib.sha256(address.lower().encode("utf-8")).hexdigest()[:16]
    return f"{reverse}.mdtwist.mail.{digest}"


def mobileconfig(profile: ClientProfile, hostname: str) -> bytes:
    """
    An Apple configuration profile with one mail account (unsigned, so devices show it as not
    verified). Identifiers and UUIDs derive from the host name and the address, so they are
    the same on every download. No password is included: the device asks for it.

    @param profile: the user's profile.
    @param hostname: the mail server's host name.
    @return: the property list (XML).
    """
    identifier = profile_identifier(hostname, profile.email)
    smtp = profile.smtp[0]

    def auth(required: bool) -> str:
        return "EmailAuthPassword" if required else "EmailAuthNone"

    mail: dict[str, Any] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier + ".account",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, identifier + ".account")).upper(),
        "PayloadDisplayName": profile.account_name or profile.email,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAccountDescription": profile.account_name or profile.email,
        "EmailAccountName": profile.display_name,
        "EmailAddress": profile.email,
        "IncomingMailServerHostName": profile.imap.host,
        "IncomingMailServerPortNumber": profile.imap.port,
        "IncomingMailServerUsername": profile.login_name,
        "IncomingMailServerAuthentication": auth(True),
        "IncomingMailServerUseSSL": profile.imap.security is not Security.NONE,
        "OutgoingMailServerHostName": smtp.host,
        "OutgoingMailServerPortNumber": smtp.port,
        "OutgoingMailServerUsername": profile.smtp_login_name,
        "OutgoingMailServerAuthentication": auth(profile.smtp_auth),
        "OutgoingMailServerUseSSL": smtp.security is not Security.NONE,
        "OutgoingPasswordSameAsIncomingPassword": profile.smtp_same_as_incoming,
    }
    top: dict[str, Any] = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, identifier)).upper(),
        "PayloadDisplayName": f"Mail: {profile.email}",
        "PayloadDescription": f"The mail account {profile.email} on {hostname}",
        "PayloadOrganization": profile.organization or profile.domain,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(top, fmt=plistlib.FMT_XML, sort_keys=True)


def srv_records(
    profile: ClientProfile, *, https_port: int | None = None, ttl: int = 3600
) -> list[str]:
    """
    The SRV records to publish for a domain (RFC 6186, RFC 8314 7.1), as zone-file lines.

    The preferred security of each service gets priority 0, the other priority 5; a service
    the server does not offer (POP3, or a port it lacks) gets the target C{.}, which says so.
    Plaintext services are not published.

    @param profile: the domain's profile (host names must be plain, without placeholders).
    @param https_port: the port of the HTTPS listener for C{_autodiscover._tcp}, if any.
    @param ttl: the records' time to live.
    @return: the lines.
    """
    domain = profile.domain.rstrip(".") + "."
    found: dict[str, tuple[int, int, str]] = {}
    imap = profile.imap
    if imap.security is Security.IMPLICIT_TLS:
        found["_imaps"] = (0, imap.port, imap.host)
    elif imap.security is Security.STARTTLS:
        found["_imap"] = (0, imap.port, imap.host)
    preferred = profile.smtp[0].security
    for service in profile.smtp:
        name = {Security.IMPLICIT_TLS: "_submissions", Security.STARTTLS: "_submission"}.get(
            service.security
        )
        if name is None or name in found:
            continue
        found[name] = (0 if service.security is preferred else 5, service.port, service.host)
    lines = []
    width = max(len(f"{n}._tcp.{domain}") for n in (*_SERVICES, "_autodiscover"))
    for name in _SERVICES:
        owner = f"{name}._tcp.{domain}".ljust(width)
        if name in found:
            priority, port, host = found[name]
            lines.append(f"{owner} {ttl} IN SRV {priority} 1 {port} {host.rstrip('.')}.")
        else:
            lines.append(f"{owner} {ttl} IN SRV 0 0 0 .")
    if https_port is not None:
        owner = f"_autodiscover._tcp.{domain}".ljust(width)
        lines.append(f"{owner} {ttl} IN SRV 0 1 {https_port} {imap.host.rstrip('.')}.")
    return lines


_SERVICES = ("_imaps", "_imap", "_submissions", "_submission", "_pop3s", "_pop3")
