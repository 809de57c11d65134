"""The client address of a request: the one value the access log, the failed-login
limiter and the activity log name a client by.

It is the TCP peer's address, unless that peer is one of `gateway.trusted_proxies` (a
list of CIDRs, empty by default): then `X-Forwarded-For` is read from the right (the
entry the trusted peer appended last) and the first entry that is not itself a trusted
proxy is the client. Entries left of it were written by the client or by proxies nobody
vouches for, so they are never used: a client that sends its own `X-Forwarded-For`
straight to a gateway, or through a trusted proxy that appends, cannot choose the address
it is logged and limited by. When every entry is trusted the left-most one is taken; an
entry that is not an IP address (with an optional port) ends the walk at the last
trusted hop.

`client_address(request)` computes it once per request (kept on the request) from the
`TrustedProxies` stored on the application under `TRUSTED_PROXIES`; without one (tests,
the metrics listener) it is the peer. Connection limits per client
(`gateway.max_connections_per_client`, gateway/connection.py) stay per TCP peer: a
connection exists before any header is read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from cargohold.errors import ConfigError

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CLIENT_KEY: web.RequestKey[str] = web.RequestKey("cargohold_client_address", str)
HEADER = "X-Forwarded-For"


def parse_networks(cidrs: Iterable[str]) -> list[_Network]:
    """`gateway.trusted_proxies` -> networks; a bad entry is a ConfigError."""
    networks: list[_Network] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"gateway.trusted_proxies: bad CIDR {cidr!r}") from exc
    return networks


def parse_address(entry: str) -> _Address | None:
    """An XFF entry or peer address -> an IP address, or None. Accepts `1.2.3.4:80`,
    `[::1]:80`, `[::1]` and a zone-less IPv6 address; an IPv4-mapped IPv6 address is
    read as the IPv4 one."""
    text = entry.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = parse_networks(cidrs)

    def trusts(self, address: _Address | None) -> bool:
        return address is not None and any(address in net for net in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        """The client address given the TCP peer and the `X-Forwarded-For` header values
        (in the order received; each may hold a comma-separated list)."""
        if not peer:
            return "-"
        peer_address = parse_address(peer)
        if not self.networks or not self.trusts(peer_address):
            return str(peer_address) if peer_address is not None else peer
        entries = [e for value in forwarded_for for e in value.split(",") if e.strip()]
        client: _Address = peer_address  # type: ignore[assignment]  # trusted: not None
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                break
            client = address
            if not self.trusts(address):
                break
        return str(client)


TRUSTED_PROXIES: web.AppKey[TrustedProxies] = web.AppKey(
    "cargohold_trusted_proxies", TrustedProxies
)


def client_address(request: Any, proxies: TrustedProxies | None = None) -> str:
    """This request's client address (module docstring); "-" when it has no peer.
    `proxies` defaults to the application's `TRUSTED_PROXIES`."""
    cached = request.get(CLIENT_KEY)
    if cached is not None:
        return str(cached)
    if proxies is None:
        proxies = _app_proxies(request)
    peer = request.remote
    if proxies is None:
        address = peer or "-"
    else:
        address = proxies.client(peer, _forwarded_for(request.headers))
    request[CLIENT_KEY] = address
    return address


def _forwarded_for(headers: Any) -> list[str]:
    """Every X-Forwarded-For value; the stand-in request aiohttp logs a malformed request
    with has a plain dict of headers."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(HEADER, ()))
    value = headers.get(HEADER)
    return [value] if value else []


def _app_proxies(request: Any) -> TrustedProxies | None:
    """The routed application's `TRUSTED_PROXIES`, if any (an unrouted request, e.g. a
    400 on a malformed request line, has no application)."""
    try:
        app = request.app
    except (AttributeError, AssertionError, RuntimeError):
        return None
    return app.get(TRUSTED_PROXIES) if isinstance(app, web.Application) else None
