"""Web origins (RFC 6454) compared the way browsers serialise them.

A browser's `Origin` header is `scheme://host[:port]`: the host lower-cased
and, for an internationalised name, in its ASCII form (UTS #46 as browsers
apply it: `bücher.example` → `xn--bcher-kva.example`, "ß" kept), and no port
when it is the scheme's default.  Configured URLs (`[site] url`, `[web]
public_url`, `[signup] allowed_origins`) are written however their owner
likes (`https://blog.example:443`, `https://Bücher.example`), so both sides
go through `origin_of` before they are compared.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL, as a browser would send it; None if
    it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = _ascii_host(parts.hostname)
    if host is None:
        return None
    suffix = f":{port}" if port is not None and port != DEFAULT_PORTS[scheme] else ""
    return f"{scheme}://{host}{suffix}"


def _ascii_host(hostname: str) -> str | None:
    """The host as a browser puts it in `Origin`; None if it cannot be one."""
    if ":" in hostname:  # an IPv6 literal (urlsplit took its brackets off)
        return f"[{hostname.lower()}]"
    if hostname.isascii():
        # Left as it is: IDNA 2008 would refuse an "_" that DNS and browsers take.
        return hostname.lower()
    try:
        return idna.encode(hostname, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        return None


def host_origin(scheme: str, host_header: str) -> str | None:
    """The origin a request's `Host` header names under `scheme`."""
    return origin_of(f"{scheme}://{host_header}") if host_header else None
