"""The guarded URL fetcher: schemes, address checks after DNS and on redirects, size and time caps."""
from __future__ import annotations

import socket

import pytest

from p3m.io import fetch
from p3m.io.fetch import FetchError, ResponseTooLarge, URLRefused, fetch_url, is_refused_address
from web_fixtures import FakeWeb, slow_body


@pytest.fixture()
def web():
    with FakeWeb() as server:
        yield server


@pytest.fixture()
def loopback_is_public(monkeypatch):
    """Treat 127.0.0.1 as a public address, so the fake web stands in for the internet
    while every other non-public address stays refused."""
    real = fetch.is_refused_address
    monkeypatch.setattr(fetch, "is_refused_address", lambda address: address != "127.0.0.1" and real(address))


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                     "169.254.169.254", "0.0.0.0", "100.64.0.1", "224.0.0.1", "::1", "fe80::1",
                                     "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::",
                                     "::7f00:1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
                                     "2002:a00:1::1"])
def test_non_public_addresses_are_refused(address):
    assert is_refused_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_pass(address):
    assert not is_refused_address(address)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.jpg", "gopher://x", "data:,hi",
                                 "http:///nohost", "javascript:alert(1)", "http://[::1/x.jpg"])
def test_other_schemes_and_hostless_urls_are_refused(url):
    with pytest.raises(URLRefused):
        fetch_url(url)


def test_loopback_is_refused_unless_allowed(web):
    web.routes["/a.jpg"] = (200, {"Content-Type": "image/jpeg"}, b"payload")
    with pytest.raises(URLRefused, match="127.0.0.1.*refused"):
        fetch_url(web.url("/a.jpg"))
    assert web.requests == []  # refused before connecting
    fetched = fetch_url(web.url("/a.jpg"), allow_private=True)
    assert fetched.content == b"payload" and fetched.content_type == "image/jpeg"
    web.routes["/closing.jpg"] = (200, {"Connection": "close"}, b"last words")
    assert fetch_url(web.url("/closing.jpg"), allow_private=True).content == b"last words"


def test_names_are_checked_after_resolution(monkeypatch):
    def resolve(host, port, *args, **kwargs):
        assert host == "photos.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.7.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(URLRefused, match="photos.example resolves to 192.168.7.7"):
        fetch_url("https://photos.example/me.jpg")


def test_a_name_with_any_private_address_is_refused(monkeypatch):
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 80)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 80))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
    with pytest.raises(URLRefused, match="10.0.0.5"):
        fetch_url("http://mixed.example/x.jpg")


def test_connection_goes_to_the_checked_address(web, loopback_is_public, monkeypatch):
    """The host is resolved once; a second lookup (DNS rebinding) could not change the target."""
    web.routes["/a.jpg"] = (200, {}, b"ok")
    real = socket.getaddrinfo
    lookups = []

    def resolve_once(host, port, *args, **kwargs):
        lookups.append(host)
        if len(lookups) > 1:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve_once)
    assert fetch_url(f"http://rebind.example:{web.port}/a.jpg").content == b"ok"
    assert lookups == ["rebind.example"]


def test_every_redirect_is_checked(web, loopback_is_public):
    web.routes["/start"] = (302, {"Location": "/next"}, b"")
    web.routes["/next"] = (301, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    with pytest.raises(URLRefused, match="169.254.169.254"):
        fetch_url(web.url("/start"))
    assert web.requests == ["/start", "/next"]


def test_redirects_are_followed_and_bounded(web):
    web.routes["/start"] = (302, {"Location": "/photo.png"}, b"")
    web.routes["/photo.png"] = (200, {}, b"png bytes")
    fetched = fetch_url(web.url("/start"), allow_private=True)
    assert fetched.content == b"png bytes" and fetched.url == web.url("/photo.png")
    web.routes["/loop"] = (307, {"Location": "/loop"}, b"")
    with pytest.raises(FetchError, match="redirects"):
        fetch_url(web.url("/loop"), allow_private=True)
    assert web.requests.count("/loop") == fetch.MAX_REDIRECTS + 1
    web.routes["/to-file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    with pytest.raises(URLRefused, match="only http and https"):
        fetch_url(web.url("/to-file"), allow_private=True)


def test_size_cap_with_and_without_a_declared_length(web):
    web.routes["/big"] = (200, {}, b"x" * 5000)
    web.routes["/big-chunked"] = lambda: (200, {}, [b"x" * 1000] * 5)
    with pytest.raises(ResponseTooLarge, match="5000 bytes"):
        fetch_url(web.url("/big"), max_bytes=4096, allow_private=True)
    with pytest.raises(ResponseTooLarge, match="4096"):
        fetch_url(web.url("/big-chunked"), max_bytes=4096, allow_private=True)
    assert len(fetch_url(web.url("/big-chunked"), max_bytes=5000, allow_private=True).content) == 5000


def test_odd_headers_are_fetch_errors(web):
    web.routes["/superscript-length"] = lambda: (200, {"Content-Length": "\u00b2"}, [b"xy"])
    web.routes["/bad-location"] = (302, {"Location": "http://[::1/x.jpg"}, b"")
    assert fetch_url(web.url("/superscript-length"), allow_private=True).content == b"xy"
    with pytest.raises(FetchError, match="invalid URL"):
        fetch_url(web.url("/bad-location"), allow_private=True)


def test_timeout_and_http_errors(web):
    web.routes["/slow"] = lambda: (200, {}, slow_body(3.0))
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(web.url("/slow"), timeout=0.5, allow_private=True)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(web.url("/missing"), allow_private=True)
    with pytest.raises(FetchError, match="cannot resolve"):
        fetch_url("http://no-such-host.invalid/x.jpg")
