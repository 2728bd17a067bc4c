# -*- test-case-name: tests.minger.test_codec -*-
"""
The Minger wire format (draft-hathcock-minger-06), without any I/O.

A query is one UDP datagram: the mailbox, then optionally C{d=} and the base64 of
MD5(secret ":" mailbox), then optionally C{name=value} tags, all separated by spaces. A reply is
one datagram: the mailbox as the query gave it, a space, and one status digit from 0 to 5.

Theory of operation. L{parse_query} is lenient about the shape of a datagram and strict about its
content, in this order:

  1. A datagram over L{MAX_DATAGRAM} bytes, an empty one, and one that looks like a reply (its
     second token is a lone digit) are L{Ignored}: no answer is sent, so two Minger servers can
     never keep answering each other.
  2. Trailing CR, LF, SP, TAB and NUL are stripped and the rest is split on runs of spaces.
  3. The mailbox is checked (printable ASCII, one C{@}, RFC 5321 lengths) B{before} any digest is
     looked at, so the MD5 length-extension trick (a forged mailbox would carry padding bytes)
     cannot get through. A bad mailbox, a bad digest token, a malformed tag, a repeated tag or a
     second C{d} make the query L{Malformed} (answered with status 0).
  4. The second token is the digest when it starts with C{d=}, or when it is exactly 22 base64
     characters and C{==} (the draft-02 form without C{d=}). Other tokens are tags; tags this
     module does not know are kept and ignored by the callers.

L{check_credentials} then decides whether a well-formed query is authenticated, comparing
digests with L{hmac.compare_digest}.

The hardened form (an mdtwist extension for pairs of mdtwist servers, off by default and chosen
per peer) replaces the digest by four tags: C{v=2}, C{t=} the sender's clock in whole seconds,
C{n=} a 128-bit random nonce in hex and C{m=} an HMAC-SHA256 in hex over the mailbox, time and
nonce, keyed with a key derived from the shared secret. Its replies carry C{m=} too, an HMAC over
the mailbox, status and the query's nonce, so a reply cannot be forged or replayed for another
query. A server refuses (status 2) a hardened query whose time is more than L{MAX_SKEW} seconds
from its own, whose nonce it has seen from that source within L{REPLAY_WINDOW} seconds (see
L{NonceCache}), or whose MAC is wrong. Addresses still travel in clear text.

Time is always a parameter; nothing here reads a clock or draws random numbers.
"""

from __future__ import annotations

import base64
import collections
import enum
import hashlib
import hmac
import re

import attrs

#: The UDP port IANA assigned to Minger.
DEFAULT_PORT = 4069
#: Datagrams larger than this are dropped unanswered.
MAX_DATAGRAM = 1024
#: The most bytes of a malformed query's first token echoed in the status 0 answer.
MAX_ECHO = 256
#: How far (seconds) a hardened query's clock may be from ours.
MAX_SKEW = 30.0
#: How long (seconds) a hardened query's nonce is remembered per source.
REPLAY_WINDOW = 120.0
#: The value of the C{v} tag of a hardened query.
HARDENED_VERSION = "2"

_TRAILING = b"\r\n \t\x00"
_BASE64_DIGEST = re.compile(rb"[A-Za-z0-9+/]{22}==")
_TAG = re.compile(r"([A-Za-z0-9_]+)=([A-Za-z0-9_]+)")
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?|\[[\x21-\x5a\x5e-\x7e]+\]")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,12}")
_QUERY_LABEL = b"mdtwist-minger-v2\n"
_REPLY_LABEL = b"mdtwist-minger-v2-resp\n"
_KEY_LABEL = b"mdtwist-minger-key"


class Status(enum.IntEnum):
    """
    The status digit of a Minger reply.
    """

    #: The query is malformed.
    BAD_REQUEST = 0
    #: The source may not ask.
    DENIED = 1
    #: The digest is missing or wrong.
    BAD_CREDENTIALS = 2
    #: No such address here.
    UNKNOWN = 3
    #: The address exists but cannot take mail now (disabled, over quota).
    INACTIVE = 4
    #: The address exists and takes mail.
    ACTIVE = 5


@attrs.frozen
class Query:
    """
    A well-formed query.

    @ivar mailbox: the mailbox asked about, exactly as received.
    @ivar digest: the base64 digest token without C{d=}, or L{None} for an anonymous (or
        hardened) query.
    @ivar tags: the C{name=value} tags in the order given (unknown ones included).
    """

    mailbox: str
    digest: bytes | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def tag(self, name: str) -> str | None:
        """
        @param name: a tag name (case-sensitive).
        @return: its value, or L{None} when the query does not have it.
        """
        for key, value in self.tags:
            if key == name:
                return value
        return None

    @property
    def hardened(self) -> bool:
        """
        Whether the query uses the hardened form (it has C{v=2}).
        """
        return self.tag("v") == HARDENED_VERSION

    @property
    def echo(self) -> bytes:
        """
        The mailbox as the reply must repeat it.
        """
        return self.mailbox.encode("ascii")


@attrs.frozen
class Malformed:
    """
    A query that gets status 0.

    @ivar echo: the first token of the datagram (at most L{MAX_ECHO} bytes), to repeat in the
        answer as a server does for any query.
    @ivar reason: what is wrong, for the log.
    """

    echo: bytes
    reason: str


@attrs.frozen
class Ignored:
    """
    A datagram that gets no answer at all.

    @ivar reason: why, for the log.
    """

    reason: str


ParsedQuery = Query | Malformed | Ignored


@attrs.frozen
class Reply:
    """
    A reply, as a client reads it.

    @ivar mailbox: the mailbox the reply is about, as the server echoed it.
    @ivar status: the status.
    @ivar tags: C{name=value} tokens after the status (a hardened reply's C{m}); other tokens
        are ignored.
    """

    mailbox: str
    status: Status
    tags: tuple[tuple[str, str], ...] = ()


def valid_mailbox(mailbox: str) -> bool:
    """
    Check a mailbox strictly: printable ASCII, a dot-atom local part of at most 64 characters,
    one C{@}, a domain (or address literal) of at most 253 characters, at most 254 in all.

    The literal C{*} (a liveness probe some servers answer) is accepted too.

    @param mailbox: the mailbox.
    @return: whether it may be asked about.
    """
    if mailbox == "*":
        return True
    if len(mailbox) > 254 or mailbox.count("@") != 1:
        return False
    local, _, domain = mailbox.partition("@")
    return (
        0 < len(local) <= 64
        and 0 < len(domain) <= 253
        and _ATEXT.fullmatch(local) is not None
        and _DOMAIN.fullmatch(domain) is not None
    )


def digest(secret: str, mailbox: str) -> bytes:
    """
    Compute the draft-06 digest.

    @param secret: the shared secret.
    @param mailbox: the mailbox, exactly as it travels in the query.
    @return: the base64 of MD5(secret ":" mailbox), 24 ASCII bytes with C{==} at the end.
    """
    raw = hashlib.md5(f"{secret}:{mailbox}".encode(), usedforsecurity=False).digest()
    return base64.b64encode(raw)


def encode_query(mailbox: str, secret: str | None = None) -> bytes:
    """
    Build a draft-06 query: the mailbox, and C{d=} and the digest when a secret is given.

    No tags are sent and nothing ends the datagram, which is what every known server accepts.

    @param mailbox: a mailbox that passes L{valid_mailbox}.
    @param secret: the shared secret, or L{None} for an anonymous query.
    @return: the datagram.
    @raise ValueError: when the mailbox is not valid.
    """
    if not valid_mailbox(mailbox):
        raise ValueError("not a valid mailbox for a Minger query")
    if secret is None:
        return mailbox.encode("ascii")
    return mailbox.encode("ascii") + b" d=" + digest(secret, mailbox)


def parse_query(data: bytes) -> ParsedQuery:
    """
    Read one incoming datagram.

    @param data: the UDP payload.
    @return: the query, what is wrong with it (answer status 0), or why it gets no answer.
    """
    if len(data) > MAX_DATAGRAM:
        return Ignored("oversized datagram")
    tokens = data.rstrip(_TRAILING).split()
    # split() without an argument also splits on TAB, CR, LF and other ASCII whitespace; a
    # mailbox never contains any of them, so that only makes the reader more lenient.
    if not tokens:
        return Ignored("empty datagram")
    first = tokens[0][:MAX_ECHO]
    if len(tokens) >= 2 and len(tokens[1]) == 1 and tokens[1].isdigit():
        return Ignored("a reply, not a query")
    if not tokens[0].isascii():
        return Malformed(first, "mailbox is not ASCII")
    mailbox = tokens[0].decode("ascii")
    if not valid_mailbox(mailbox):
        return Malformed(first, "bad mailbox")
    rest = tokens[1:]
    token_digest: bytes | None = None
    if rest and rest[0].startswith(b"d="):
        token_digest = rest.pop(0)[2:]
        if _BASE64_DIGEST.fullmatch(token_digest) is None:
            return Malformed(first, "bad digest token")
    elif rest and _BASE64_DIGEST.fullmatch(rest[0]) is not None:
        token_digest = rest.pop(0)
    tags: list[tuple[str, str]] = []
    for token in rest:
        match = _TAG.fullmatch(token.decode("ascii", "replace"))
        if match is None:
            return Malformed(first, "malformed tag")
        name, value = match.groups()
        if name == "d":
            return Malformed(first, "digest given twice or out of place")
        if any(name == seen for seen, _ in tags):
            return Malformed(first, "tag repeated")
        tags.append((name, value))
    return Query(mailbox, token_digest, tuple(tags))


def encode_reply(echo: bytes, status: Status, *, mac: str | None = None) -> bytes:
    """
    Build a reply: the echoed mailbox, a space, the status digit (and C{m=} for a hardened
    reply).

    @param echo: the mailbox as the query gave it (L{Query.echo} or L{Malformed.echo}).
    @param status: the status.
    @param mac: the hex MAC of a hardened reply (see L{encode_hardened_reply}).
    @return: the datagram, with no line end.
    """
    reply = b"%s %d" % (echo, status)
    if mac is not None:
        reply += b" m=" + mac.encode("ascii")
    return reply


def parse_reply(data: bytes, mailbox: str) -> Reply | None:
    """
    Read a reply to a query about C{mailbox}.

    Trailing CR, LF, SP, TAB and NUL are stripped; the first token must be the mailbox (ASCII
    letters compared without regard to case) and the second a single digit from 0 to 5.
    C{name=value} tokens after it are kept as tags; anything else after it is ignored, in case
    a later draft adds fields.

    @param data: the UDP payload.
    @param mailbox: the mailbox that was asked about.
    @return: the reply, or L{None} when the datagram is not a reply about that mailbox.
    """
    if len(data) > MAX_DATAGRAM:
        return None
    tokens = data.rstrip(_TRAILING).split()
    if len(tokens) < 2 or not tokens[0].isascii():
        return None
    if tokens[0].decode("ascii").lower() != mailbox.lower():
        return None
    if len(tokens[1]) != 1 or tokens[1] not in b"012345":
        return None
    tags = []
    for token in tokens[2:]:
        match = _TAG.fullmatch(token.decode("ascii", "replace"))
        if match is not None:
            tags.append((match.group(1), match.group(2)))
    return Reply(tokens[0].decode("ascii"), Status(int(tokens[1])), tuple(tags))


def check_digest(query: Query, secret: str) -> bool:
    """
    Check a draft-06 digest in constant time.

    @param query: a well-formed query.
    @param secret: the shared secret.
    @return: whether the query has a digest and it is right.
    """
    if query.digest is None:
        return False
    return hmac.compare_digest(query.digest, digest(secret, query.mailbox))


class NonceCache:
    """
    The nonces of hardened queries seen lately, per source, to refuse replays.

    Entries older than the window are forgotten as new ones come in. The cache holds at most
    C{size} entries; when it is full of fresh ones it refuses new nonces (failing closed) until
    some age out.
    """

    def __init__(self, window: float = REPLAY_WINDOW, size: int = 100_000) -> None:
        """
        @param window: seconds a nonce is remembered.
        @param size: the most nonces remembered.
        """
        self._window = window
        self._size = size
        self._seen: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, source: str, nonce: str, now: float) -> bool:
        """
        Record a nonce.

        @param source: who sent it (an IP address).
        @param nonce: the nonce.
        @param now: the current time, in seconds.
        @return: whether this is its first use from that source within the window (C{False}
            also when the cache is full).
        """
        while self._seen:
            key, when = next(iter(self._seen.items()))
            if when > now - self._window:
                break
            del self._seen[key]
        key = (source, nonce)
        if key in self._seen or len(self._seen) >= self._size:
            return False
        self._seen[key] = now
        return True


def hardened_key(secret: str) -> bytes:
    """
    Derive the key of the hardened form from the shared secret.

    @param secret: the shared secret.
    @return: HMAC-SHA256(secret, "mdtwist-minger-key").
    """
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _query_mac(key: bytes, mailbox: str, when: str, nonce: str) -> str:
    message = _QUERY_LABEL + f"{mailbox}\n{when}\n{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _reply_mac(key: bytes, mailbox: str, status: int, nonce: str) -> str:
    message = _REPLY_LABEL + f"{mailbox}\n{status}\n{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def encode_hardened_query(mailbox: str, key: bytes, now: float, nonce: bytes) -> bytes:
    """
    Build a hardened query.

    @param mailbox: a mailbox that passes L{valid_mailbox}.
    @param key: the key from L{hardened_key}.
    @param now: the current time, in seconds since the epoch.
    @param nonce: 16 random bytes, new for every datagram sent.
    @return: the datagram.
    @raise ValueError: when the mailbox is not valid or the nonce is not 16 bytes.
    """
    if not valid_mailbox(mailbox) or len(nonce) != 16:
        raise ValueError("not a valid mailbox, or a nonce that is not 16 bytes")
    when = str(int(now))
    hex_nonce = nonce.hex()
    mac = _query_mac(key, mailbox, when, hex_nonce)
    return f"{mailbox} v={HARDENED_VERSION} t={when} n={hex_nonce} m={mac}".encode("ascii")


def check_hardened(
    query: Query, key: bytes, now: float, nonces: NonceCache, source: str
) -> str | None:
    """
    Check a hardened query.

    The MAC is checked first, so a forged query cannot fill the nonce cache.

    @param query: a well-formed query.
    @param key: the key from L{hardened_key}.
    @param now: the current time, in seconds since the epoch.
    @param nonces: the nonces seen lately; a good query's nonce is added.
    @param source: the sender's IP address.
    @return: L{None} when the query is good, else why not (for the log).
    """
    when, nonce, mac = query.tag("t"), query.tag("n"), query.tag("m")
    if not query.hardened or when is None or nonce is None or mac is None:
        return "not a hardened query"
    if (
        _DIGITS.fullmatch(when) is None
        or _HEX32.fullmatch(nonce) is None
        or _HEX64.fullmatch(mac) is None
    ):
        return "malformed hardened tags"
    if not hmac.compare_digest(mac, _query_mac(key, query.mailbox, when, nonce)):
        return "wrong MAC"
    if abs(now - int(when)) > MAX_SKEW:
        return "clock skew"
    if not nonces.first_use(source, nonce, now):
        return "replayed nonce"
    return None


def encode_hardened_reply(query: Query, status: Status, key: bytes) -> bytes:
    """
    Build the reply to a hardened query, with its MAC.

    @param query: the hardened query (its nonce is bound into the MAC).
    @param status: the status.
    @param key: the key from L{hardened_key}.
    @return: the datagram.
    """
    nonce = query.tag("n") or ""
    return encode_reply(query.echo, status, mac=_reply_mac(key, query.mailbox, int(status), nonce))


def check_hardened_reply(reply: Reply, key: bytes, nonce: bytes) -> bool:
    """
    Check the MAC of a reply to a hardened query.

    @param reply: the reply, from L{parse_reply}.
    @param key: the key from L{hardened_key}.
    @param nonce: the 16-byte nonce of the query it answers.
    @return: whether the reply is authentic.
    """
    mac = dict(reply.tags).get("m")
    if mac is None or _HEX64.fullmatch(mac) is None:
        return False
    expected = _reply_mac(key, reply.mailbox, int(reply.status), nonce.hex())
    return hmac.compare_digest(mac, expected)


def check_credentials(
    query: Query,
    *,
    secret: str | None,
    anonymous: bool,
    hardened_required: bool,
    now: float,
    nonces: NonceCache,
    source: str,
) -> str | None:
    """
    Decide whether a server answers a well-formed query or refuses it with status 2.

      - A hardened query needs a secret and must pass L{check_hardened}.
      - A source that must use the hardened form gets nothing else (no downgrade).
      - A digest must be right, even when anonymous queries are allowed.
      - A query without a digest is answered only when anonymous queries are allowed.

    @param query: the query.
    @param secret: the shared secret, or L{None} when none is configured.
    @param anonymous: whether queries without credentials are answered.
    @param hardened_required: whether this source must use the hardened form.
    @param now: the current time, in seconds since the epoch.
    @param nonces: the nonces of hardened queries seen lately.
    @param source: the sender's IP address.
    @return: L{None} when the query is answered, else why not (for the log; never the secret
        or the digest).
    """
    if query.hardened:
        if secret is None:
            return "hardened query but no secret configured"
        return check_hardened(query, hardened_key(secret), now, nonces, source)
    if hardened_required:
        return "this source must use the hardened form"
    if query.digest is not None:
        if secret is None or not check_digest(query, secret):
            return "wrong digest"
        return None
    return None if anonymous else "no credentials"
