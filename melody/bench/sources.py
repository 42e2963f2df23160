"""Source addresses for the client connections of a run past the ephemeral-port range.

A TCP connection is named by (source address, source port, destination address, destination
port). Against one server every connection shares the destination, so with one source address
a client machine has at most one connection per ephemeral port: ``net.ipv4.ip_local_port_range``
(32768-60999 by default on Linux, 28,232 ports; 49152-65535 on macOS, 16,384). 100,000
connections to one server need several source addresses. On Linux every address of
127.0.0.0/8 is the loopback interface's, so 127.0.0.2, 127.0.0.3, ... work with no setup; on
macOS only 127.0.0.1 does until an alias is added (``sudo ifconfig lo0 alias 127.0.0.2``), and
:func:`check_bindable` says so instead of failing connection by connection.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["ephemeral_ports", "parse_sources", "plan_sources", "check_bindable"]

#: The share of the ephemeral range a run plans to use per source address: the rest is left to
#: the machine (TIME_WAIT sockets of an earlier phase, other programs).
_USABLE_SHARE = 0.8


def ephemeral_ports() -> int:
    """How many ephemeral ports one source address has (Linux's setting, else a guess)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return max(high - low + 1, 1)
    except (OSError, ValueError):
        return 16_384  # the IANA range, macOS's and Windows' default


def parse_sources(spec: str) -> list[str]:
    """``"127.0.0.2-127.0.0.9"`` (a range), ``"127.0.0.2,127.0.0.3"`` (a list), or a count
    ``"8"`` (that many loopback addresses from 127.0.0.1 on). ValueError when malformed."""
    spec = spec.strip()
    if spec.isdigit():
        count = int(spec)
        if not 1 <= count <= 65_000:
            raise ValueError(f"source address count {count} out of range")
        return [str(ipaddress.IPv4Address("127.0.0.1") + k) for k in range(count)]
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            first_text, _, last_text = part.partition("-")
            first = ipaddress.ip_address(first_text.strip())
            last = ipaddress.ip_address(last_text.strip())
            if first.version != last.version or int(last) < int(first):
                raise ValueError(f"bad source address range {part!r}")
            if int(last) - int(first) >= 65_000:
                raise ValueError(f"source address range {part!r} is too long")
            out.extend(str(first + k) for k in range(int(last) - int(first) + 1))
        else:
            out.append(str(ipaddress.ip_address(part)))
    if not out:
        raise ValueError("no source address given")
    return out


def plan_sources(host: str, connections: int, spec: str | None) -> list[str] | None:
    """The source addresses for ``connections`` connections to ``host``: those of ``spec``
    when given; otherwise, for an IPv4 loopback target that one address's ports cannot hold,
    enough loopback addresses from 127.0.0.1 on; None when the kernel's choice is enough."""
    if spec:
        return parse_sources(spec)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version != 4 or not address.is_loopback:
        return None
    per_address = max(int(ephemeral_ports() * _USABLE_SHARE), 1)
    needed = -(-connections // per_address)
    if needed <= 1:
        return None
    return [str(ipaddress.IPv4Address("127.0.0.1") + k) for k in range(needed)]


def check_bindable(sources: list[str]) -> list[str]:
    """The addresses of ``sources`` that this machine cannot bind (not configured on any
    interface): empty when all can be used."""
    missing: list[str] = []
    for source in sources:
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((source, 0))
            except OSError:
                missing.append(source)
    return missing
