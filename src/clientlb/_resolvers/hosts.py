"""The hosts file: what the system resolver answers before it asks DNS.

``dns:///name:port`` without a server means "resolve as this machine does", and
on every common system that is the hosts file first, then DNS (``hosts: files
dns`` in ``/etc/nsswitch.conf``). dnspython only speaks DNS, so without this
module ``dns:///localhost:8080`` or a name pinned in ``/etc/hosts`` went to the
DNS server, which knows nothing of it.

**Why hand-written.** Neither the standard library nor dnspython has an API
that reads *only* the hosts file: ``socket.getaddrinfo`` walks the whole NSS
chain (so a name missing from the file becomes a blocking DNS query with no
TTL, in a thread), and dnspython never reads the file. The format is small
and stable (``hosts(5)``): one line per address, the address then its names,
``#`` to the end of the line is a comment, fields are separated by blanks.
The parser is strict where it matters: a line whose first field is not an IP
address is skipped (as glibc does), names compare case-insensitively and
without a trailing dot, an address listed twice for a name counts once, and
an IPv6 zone (``fe80::1%eth0``) is kept.

Rules (``DNSResolver`` applies them when its target names no server):

* a name in the file is answered from the file alone: its IPv4 addresses as
  ``A``, its IPv6 addresses as ``AAAA`` (filtered by ``record_types``); DNS
  is not asked, as the system resolver would not ask it;
* ``localhost`` and names under ``.localhost`` that the file does not list
  are loopback (RFC 6761, section 6.3), never a DNS question;
* the file is read again when its modification time changes, so an edit is
  followed at the next refresh (the TTL floor, ``min_ttl``);
* a missing or unreadable file is an empty one (one debug line), as it is
  for the system resolver.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import Iterable

from .._core.errors import ConfigError

__all__ = ["DEFAULT_HOSTS_FILE", "HostsFile", "check_hosts_file", "parse_hosts"]

logger = logging.getLogger("clientlb.discovery")

DEFAULT_HOSTS_FILE = (os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32",
                                   "drivers", "etc", "hosts")
                      if sys.platform == "win32" else "/etc/hosts")
_LOOPBACK = ("127.0.0.1", "::1")


def _canonical(name: str) -> str:
    return name.rstrip(".").lower()


def parse_hosts(lines: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``{name: (address, ...)}`` from the lines of a hosts file, in file order."""
    table: dict[str, list[str]] = {}
    for line in lines:
        fields = line.partition("#")[0].split()
        if len(fields) < 2:
            continue
        address = fields[0]
        try:
            ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            continue  # not an address line: glibc skips it too
        for name in fields[1:]:
            addresses = table.setdefault(_canonical(name), [])
            if address not in addresses:
                addresses.append(address)
    return {name: tuple(addresses) for name, addresses in table.items()}


def check_hosts_file(value: object) -> str | None:
    if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value)):
        raise ConfigError(f"must be the path of a hosts file or None, got {value!r}",
                          field="hosts_file")
    return None if value is None else os.fspath(value)


class HostsFile:
    """One hosts file, read again when it changes. ``lookup(name)`` → addresses or None."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._table: dict[str, tuple[str, ...]] = {}

    def _load(self) -> dict[str, tuple[str, ...]]:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    self._table = parse_hosts(f)
                self._stamp = stamp
        except OSError as exc:
            if self._stamp is not None or not self._table:
                logger.debug("hosts file %s not read: %s", self.path, exc)
            self._stamp, self._table = None, {}
        return self._table

    def lookup(self, name: str) -> tuple[str, ...] | None:
        """The addresses the file gives ``name`` (loopback for an unlisted
        ``localhost``), or None when the system resolver would go on to DNS."""
        name = _canonical(name)
        found = self._load().get(name)
        if found is not None:
            return found
        if name == "localhost" or name.endswith(".localhost"):
            return _LOOPBACK
        return None

    def __repr__(self) -> str:
        return f"<HostsFile {self.path}>"
