"""The one guarded URL fetcher: every image given as a URL (``p3m matte https://...``,
``url=`` on the server) is downloaded here.

Only http and https; the body is capped in size and the whole download in
time; and unless ``allow_private`` no request goes to a loopback, private,
link-local or otherwise non-global address. Addresses are checked after DNS
resolution, the connection is made to the checked address (a second lookup
cannot swap it), and redirects are followed by hand so that every hop is
checked the same way.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from p3m import __version__

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_TIMEOUT = 20.0
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class FetchError(ValueError):
    """A URL could not be fetched; the message names the URL and the problem."""


class URLRefused(FetchError):
    """The URL itself is not allowed: another scheme, or a non-public address."""


class ResponseTooLarge(FetchError):
    """The response body is over the size cap."""


@dataclass(frozen=True)
class Fetched:
    """A downloaded body and the URL it finally came from (after redirects)."""

    url: str
    content: bytes
    content_type: str


def fetch_url(url: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT,
              allow_private: bool = False) -> Fetched:
    """GET ``url`` with the guards above.

    Args:
        url: an ``http://`` or ``https://`` URL.
        max_bytes: the largest body accepted.
        timeout: seconds for the whole download, redirects included.
        allow_private: also allow loopback, private and link-local addresses.

    Raises:
        URLRefused: not http(s), no host, or a host resolving to a refused address.
        ResponseTooLarge: the body is larger than ``max_bytes``.
        FetchError: DNS failure, connection error, timeout, an HTTP error
            status, or too many redirects.
    """
    deadline = time.monotonic() + timeout
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        status, location, content_type, content = _get_once(current, max_bytes, deadline, allow_private)
        if status in _REDIRECTS:
            if not location:
                raise FetchError(f"{current}: redirect ({status}) without a Location")
            try:
                current = urljoin(current, location)
            except ValueError:
                raise FetchError(f"{current}: redirect to an invalid URL {location!r}") from None
            continue
        if status != 200:
            raise FetchError(f"{current}: the server answered HTTP {status}")
        return Fetched(current, content, content_type)
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def is_refused_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is not a public unicast address, or is an IPv6
    address carrying a non-public IPv4 one (mapped, IPv4-compatible, 6to4 or NAT64)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (not embedded.is_global or embedded.is_multicast):
            return True
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address):
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _get_once(url: str, max_bytes: int, deadline: float, allow_private: bool):
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise URLRefused(f"{url}: not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise URLRefused(f"{url}: only http and https URLs are fetched")
    if not parts.hostname:
        raise URLRefused(f"{url}: no host in the URL")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise URLRefused(f"{url}: invalid port") from None
    address = _checked_address(url, parts.hostname, port, allow_private)
    connection_class = _GuardedHTTPSConnection if scheme == "https" else _GuardedHTTPConnection
    connection = connection_class(parts.hostname, port, address, timeout=_remaining(url, deadline))
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    try:
        connection.request("GET", target, headers={"User-Agent": f"p3m/{__version__}",
                                                   "Accept": "image/*", "Accept-Encoding": "identity"})
        sock = connection.sock  # the response keeps reading from it after a "Connection: close"
        response = connection.getresponse()
        location = response.getheader("Location")
        content_type = response.getheader("Content-Type", "")
        if response.status != 200:
            return response.status, location, content_type, b""
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise ResponseTooLarge(f"{url}: {declared} bytes, over the {max_bytes}-byte limit")
        chunks, size = [], 0
        while True:
            sock.settimeout(_remaining(url, deadline))
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(f"{url}: more than {max_bytes} bytes, over the limit")
            chunks.append(chunk)
        return response.status, location, content_type, b"".join(chunks)
    except (socket.timeout, TimeoutError):
        raise FetchError(f"{url}: timed out") from None
    except ssl.SSLError as error:
        raise FetchError(f"{url}: TLS error ({error.reason or error})") from None
    except (OSError, http.client.HTTPException) as error:
        raise FetchError(f"{url}: {type(error).__name__}: {error}") from None
    finally:
        connection.close()


def _remaining(url: str, deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"{url}: timed out")
    return left


def _checked_address(url: str, host: str, port: int, allow_private: bool) -> tuple:
    """Resolve ``host`` and return one socket address, refusing the host if any of its
    addresses is not public (so that no answer of a multi-address name can be private)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise FetchError(f"{url}: cannot resolve {host} ({error})") from None
    if not infos:
        raise FetchError(f"{url}: cannot resolve {host}")
    if not allow_private:
        for *_, sockaddr in infos:
            if is_refused_address(sockaddr[0]):
                raise URLRefused(f"{url}: {host} resolves to {sockaddr[0]}, a loopback, private or "
                                 f"link-local address (refused)")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _connect(address: tuple, timeout: float) -> socket.socket:
    family, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class _GuardedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address checked beforehand instead of resolving the host again."""

    def __init__(self, host: str, port: int, address: tuple, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = _connect(self._address, self.timeout)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    """As :class:`_GuardedHTTPConnection`, with certificate and host name verification."""

    def __init__(self, host: str, port: int, address: tuple, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._tls_context = ssl.create_default_context()

    def connect(self):
        self.sock = self._tls_context.wrap_socket(_connect(self._address, self.timeout), server_hostname=self.host)
