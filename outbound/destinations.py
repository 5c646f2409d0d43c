"""Where deliveries may go (server-side request forgery): the operator's allowed hosts and networks.

A URL is checked twice: by its text when it is registered (scheme, host name, a literal address), and by the
address it resolves to when a delivery connects (transport.py connects to exactly the address checked here, so a
name that resolves elsewhere between the two looks cannot slip through). By default only global addresses are
allowed: no private, loopback, link-local, shared, reserved or multicast one, unless OUTBOUND_ALLOWED_NETWORKS
lists its network.
"""
import ipaddress
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

from core.errors import DomainError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(DomainError):
    code = "destination_not_allowed"


@lru_cache(maxsize=16)
def _networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in spec)


def address_allowed(address: Address) -> bool:
    """Whether a delivery may connect to `address`."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in _networks(tuple(settings.OUTBOUND_ALLOWED_NETWORKS))):
        return True
    return address.is_global and not address.is_multicast


def host_allowed(host: str) -> bool:
    """Whether OUTBOUND_ALLOWED_HOSTS lets deliveries go to host name (or literal address) `host`."""
    allowed = settings.OUTBOUND_ALLOWED_HOSTS
    host = host.lower().rstrip(".")
    if not allowed:
        return True
    return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed)


def check_url(url: str) -> tuple[str, str, int]:
    """The scheme, host and port of `url`, which a delivery may be sent to as far as its text tells; raises
    DestinationRefused otherwise. A host name's addresses are checked when a delivery connects (`resolve`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefused(f"{url!r} is not a URL.", code="invalid_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("Only http and https URLs with a host can receive events.", code="invalid_url")
    if parts.username or parts.password:
        raise DestinationRefused("A URL that receives events may not carry credentials.", code="invalid_url")
    host = parts.hostname
    if not host_allowed(host):
        raise DestinationRefused(f"Events may not be sent to {host}: it is not an allowed host.")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not address_allowed(literal):
        raise DestinationRefused(f"Events may not be sent to {host}: a private, loopback or link-local address.")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> tuple[int, str]:
    """The family and text of the first address of `host` a delivery may connect to; raises DestinationRefused when
    none may (or the name does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DestinationRefused(f"{host} does not resolve: {exc}", code="destination_unresolved") from None
    for family, _, _, _, sockaddr in infos:
        if address_allowed(ipaddress.ip_address(sockaddr[0].split("%")[0])):
            return family, sockaddr[0]
    raise DestinationRefused(f"Events may not be sent to {host}: it resolves only to addresses that are not allowed "
                             f"({', '.join(sorted({info[4][0] for info in infos}))}).")
