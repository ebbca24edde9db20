"""A real authoritative DNS server for the discovery tests: Knot DNS on loopback.

``KnotServer`` writes a configuration and a zone ``test.`` into a temp
directory and runs ``knotd`` in the foreground on ``127.0.0.1:<free port>``.
Records change through real RFC 2136 dynamic updates (dnspython's
``dns.update`` sent over TCP; the zone's ACL allows updates from 127.0.0.1),
exactly as ``knsupdate`` would send them. ``stop()``/``start()`` take the
server down and bring it back on the same port with the same data.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.update

from ._helpers import free_port, wait_until

ZONE = "test"

_CONF = """\
server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: warning
database:
    storage: "{d}/db"
control:
    listen: "{d}/knot.sock"
acl:
  - id: local_update
    address: 127.0.0.1
    action: update
template:
  - id: default
    storage: "{d}"
    file: "%s.zone"
zone:
  - domain: {zone}
    acl: local_update
  - domain: alt
    acl: local_update
"""

# SOA MINIMUM 1: negative answers (NXDOMAIN, no data) live one second (RFC 2308).
_ZONE = """\
$ORIGIN {zone}.
$TTL 1
@ SOA ns.{zone}. admin.{zone}. 1 60 60 3600 1
@ NS ns.{zone}.
ns A 127.0.0.1
{records}
"""


class KnotServer:
    def __init__(self, knotd: str, directory: Path, records: str = "") -> None:
        self.knotd = knotd
        self.dir = directory
        self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "db").mkdir(exist_ok=True)
        self.conf = self.dir / "knot.conf"
        self.conf.write_text(_CONF.format(d=self.dir, port=self.port, zone=ZONE))
        (self.dir / f"{ZONE}.zone").write_text(_ZONE.format(zone=ZONE, records=records))
        # a second zone: its names never come in the additional section of test.'s answers
        (self.dir / "alt.zone").write_text(_ZONE.format(zone="alt", records="web A 127.0.0.1"))
        self.log = self.dir / "knotd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def server(self) -> str:
        """The ``server:port`` part of a target."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.knotd, "-c", str(self.conf)],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, timeout=10, message=f"knotd on port {self.port}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"knotd exited: {self.log.read_text()}")
        query = dns.message.make_query(f"{ZONE}.", "SOA")
        try:
            response = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
        except (OSError, dns.exception.Timeout):
            return False
        return response.rcode() == dns.rcode.NOERROR

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def update(self, *, add: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
               delete: list[tuple[str, ...]] = ()) -> None:  # type: ignore[assignment]
        """Apply an RFC 2136 update: ``add`` (name, ttl, type, data), ``delete``
        (name,) for every record of a name, (name, type) for an RRset, or
        (name, type, data) for one record. Names are relative to the zone."""
        upd = dns.update.UpdateMessage(f"{ZONE}.")
        for item in delete:
            upd.delete(*item)
        for name, ttl, rdtype, data in add:
            upd.add(name, ttl, rdtype, data)
        response = dns.query.tcp(upd, "127.0.0.1", port=self.port, timeout=5)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())

    def close(self) -> None:
        self.stop()


class ScriptedDNSServer:
    """A tiny UDP DNS server on 127.0.0.1 whose answer a test sets: for the response codes
    Knot will not give on demand (SERVFAIL), and for answers that change mid-test.

    ``mode`` is ``"answer"`` (``addresses`` as A/AAAA records, TTL 1), ``"nxdomain"``,
    ``"nodata"`` (NOERROR, empty answer), ``"servfail"``, ``"refused"`` or ``"drop"``
    (no reply: a timeout). ``queries`` counts the questions received.
    """

    def __init__(self) -> None:
        import socket
        import threading

        self.mode = "answer"
        self.addresses: list[str] = ["127.0.0.1"]
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.server = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import ipaddress

        import dns.rdatatype
        import dns.rrset

        while True:
            try:
                data, peer = self._sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            mode = self.mode
            if mode == "drop":
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            if mode == "servfail":
                response.set_rcode(dns.rcode.SERVFAIL)
            elif mode == "refused":
                response.set_rcode(dns.rcode.REFUSED)
            elif mode == "nxdomain":
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif mode == "answer":
                question = query.question[0]
                version = 4 if question.rdtype == dns.rdatatype.A else 6
                found = [a for a in self.addresses if ipaddress.ip_address(a).version == version]
                if found:
                    response.answer.append(dns.rrset.from_text_list(
                        question.name, 1, "IN", dns.rdatatype.to_text(question.rdtype), found))
            try:
                self._sock.sendto(response.to_wire(), peer)
            except OSError:
                return

    def close(self) -> None:
        self._sock.close()
