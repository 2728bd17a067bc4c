# -*- test-case-name: tests.test_logging -*-
"""
Log output choices: text (twistd's default) or JSON, one object per line.

For JSON::

    twistd --logger mdtwist.logging.json_observer -n mdtwist --config etc/mdtwist.toml

Event fields use a fixed vocabulary: C{session}, C{peer}, C{listener}, C{helo}, C{tls}, C{user},
C{mail_from}, C{rcpt}, C{code}, C{enhanced}, C{queue_id}, C{msg_size}, C{mx}, C{attempt},
C{dn}, C{elapsed_ms}, C{status}, C{detail}. Passwords, SASL payloads and message bodies never
appear in any field.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer(stream: TextIO | None = None) -> ILogObserver:
    """
    The observer factory for C{twistd --logger}: JSON events, one per line.

    @param stream: where to write; standard output by default.
    @return: the observer.
    """
    return jsonFileLogObserver(stream if stream is not None else sys.stdout, recordSeparator="")
