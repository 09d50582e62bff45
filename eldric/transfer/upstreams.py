"""Which hosts outside the cluster may be contacted, and at which addresses (issue 11).

Two rules, both applied before a byte leaves the node:

- **Registry hosts.** A model name may name any host (`169.254.169.254/library/x`), and
  any API user chooses the name. Only the hosts of `RegistryAllowList` are contacted:
  registry.ollama.ai, hf.co (Hugging Face serves GGUF repositories over the same
  protocol), the configured mirror, the hosts configured as insecure registries, and
  those of ELDRIC_ALLOWED_REGISTRIES. The controller refuses other names with 400; the
  agent refuses them again, so a task that reaches it some other way still cannot.
- **Addresses.** A connection to a host outside the cluster (a `url` source or URL
  import, a registry's redirect to its CDN, a token realm) may reach public addresses
  only: loopback, private, link-local (cloud metadata at 169.254.169.254), shared and
  reserved ones are refused unless `AddressPolicy` names the address, its network or
  the host. The check runs on the addresses DNS gave for the connection being opened
  (eldric.transfer.http guards every connection of an upstream session), so each
  redirect hop is checked, and a name cannot resolve to one address for the check and
  another for the connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from eldric.core.names import ModelName
from eldric.transfer.errors import HostNotAllowedError

DEFAULT_REGISTRIES = ("registry.ollama.ai", "hf.co")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
HostPort = tuple[str, int | None]  # port None: any port

_HOST_PORT = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)(?::(\d{1,5}))?$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _host_port(entry: str) -> HostPort:
    """`host` or `host:port`, lower case; ValueError for anything else."""
    match = _HOST_PORT.match(entry.strip())
    if not match or (match.group(2) and not 0 < int(match.group(2)) < 65536):
        raise ValueError(f"not a host or host:port: {entry!r}")
    return match.group(1).lower(), int(match.group(2)) if match.group(2) else None


def _matches(entries: Iterable[HostPort], host: str, port: int | None) -> bool:
    host = host.lower()
    return any(h == host and (p is None or p == port) for h, p in entries)


def is_http_url(url: object) -> bool:
    """An absolute http(s) URL with a host and a valid port (urlsplit raises on `[::1` or port 99999)."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _url_host_port(url: str) -> HostPort:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class RegistryAllowList:
    """The registry hosts model names may name; an entry without a port allows the host on any port."""

    entries: frozenset[HostPort]

    @classmethod
    def build(cls, extra: Iterable[str] = (), *, mirror: str = "", insecure: Iterable[str] = ()) -> RegistryAllowList:
        """The defaults, the mirror's host:port, the insecure registries and `extra`; ValueError on a bad entry."""
        entries = {_host_port(h) for h in (*DEFAULT_REGISTRIES, *extra)}
        for host in insecure:  # checked nowhere else; one that could never match a name's host is skipped
            try:
                entries.add(_host_port(host))
            except ValueError:
                continue
        mirror_host = urlsplit(mirror).hostname if mirror else None
        if mirror_host:
            entries.add((mirror_host.lower(), urlsplit(mirror).port))
        return cls(frozenset(entries))

    def allows(self, host: str) -> bool:
        try:
            name, port = _host_port(host)
        except ValueError:
            return False
        return _matches(self.entries, name, port)

    def check(self, name: ModelName) -> None:
        """Raise HostNotAllowedError unless the host `name` names may be contacted."""
        if not self.allows(name.host):
            raise HostNotAllowedError(
                f"registry {name.host} is not allowed: model names may name {self.describe()} "
                "(ELDRIC_ALLOWED_REGISTRIES adds hosts)")

    def describe(self) -> str:
        return ", ".join(sorted(h if p is None else f"{h}:{p}" for h, p in self.entries))


def checked_registry_hosts(entries: tuple[str, ...]) -> tuple[str, ...]:
    """`entries` if each is a host or host:port (a settings validator); ValueError naming the bad one."""
    RegistryAllowList.build(entries)
    return entries


def checked_address_entries(entries: tuple[str, ...]) -> tuple[str, ...]:
    """`entries` if each is an address, a network or a host name (a settings validator)."""
    AddressPolicy.parse(entries)
    return entries


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where it leads."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public_address(ip: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local, shared (CGNAT), reserved or multicast."""
    ip = _embedded_ipv4(ip)
    return ip.is_global and not ip.is_multicast


def describe_address(ip: IPAddress) -> str:
    ip = _embedded_ipv4(ip)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if ip.is_private:
        return "a private address"
    return "not a public address"


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus what the allow-list names: addresses, networks (CIDR), host names.

    A host name entry (`files.lan`, `minio.lan:9000`) trusts whatever the name resolves to.
    """

    networks: tuple[Network, ...] = ()
    hosts: frozenset[HostPort] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AddressPolicy:
        """From ELDRIC_URL_ALLOWLIST's entries: `10.0.0.5`, `10.0.0.0/8`, `fd00::/8`, `files.lan[:port]`."""
        networks: list[Network] = []
        hosts: set[HostPort] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            try:
                hosts.add(_host_port(entry))
            except ValueError:
                raise ValueError(f"not an address, network or host name: {entry!r}") from None
        return cls(tuple(networks), frozenset(hosts))

    def trusting(self, url: str) -> AddressPolicy:
        """This policy, plus the host and port of `url` (an origin the operator configured, such as a mirror)."""
        host, port = _url_host_port(url)
        return AddressPolicy(self.networks, self.hosts | {(host, port)}) if host else self

    def is_trusted_host(self, host: str, port: int | None) -> bool:
        return _matches(self.hosts, host, port)

    def allows_address(self, ip: IPAddress) -> bool:
        if is_public_address(ip):
            return True
        inner = _embedded_ipv4(ip)
        return any(ip in net or inner in net for net in self.networks if net.version in (ip.version, inner.version))

    def check_literal(self, url: str) -> None:
        """HostNotAllowedError for a URL whose host is an address this policy refuses, without any lookup.

        For a service that only queues the work (the controller): a name is judged when the
        fetching node connects, after DNS resolution.
        """
        host, port = _url_host_port(url)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        if not self.allows_address(ip) and not self.is_trusted_host(host, port):
            raise HostNotAllowedError(f"refused: {host} is {describe_address(ip)}; ELDRIC_URL_ALLOWLIST may allow it")

    def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple]:
        """getaddrinfo for a connection to host:port; HostNotAllowedError if any address it gives is refused.

        One refused address refuses the host: a name that also resolves to an internal
        address is not one to trust. socket.gaierror passes through (a transient failure).
        """
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        if self.is_trusted_host(host, port):
            return infos
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if not self.allows_address(ip):
                shown = host if host == str(ip) else f"{host} ({ip})"
                raise HostNotAllowedError(f"refused to connect to {shown}: {describe_address(ip)}; "
                                          "ELDRIC_URL_ALLOWLIST may allow it")
        return infos


PUBLIC_ONLY = AddressPolicy()  # no allow-list: public addresses only
