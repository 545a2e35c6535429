"""API keys: read scope for every path but /healthz, /login and /api/v1/write; write scope for
Prometheus' remote write (/api/v1/write); admin scope for every other write. The admin key also
reads and writes samples; a read key does neither, a write key does not read.

A key arrives as ``Authorization: Bearer <key>``; as the password of HTTP basic auth (any user
name), which is how most Prometheus clients send credentials (promtool and Grafana take them in
the URL, ``http://fleetpulse:<key>@host:8000``); or, from the dashboard in a browser, as the
``fleetpulse_key`` cookie that ``POST /login`` sets. Every configured key is compared in constant
time (hmac.compare_digest), all of them each time, so the answer's timing does not tell which
prefix matched or how many keys there are.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from fleetpulse.errors import Forbidden, Unauthenticated
from fleetpulse.settings import Settings

COOKIE = "fleetpulse_key"
# Paths anyone may reach: the load balancer's probe and the dashboard's login form.
OPEN_PATHS = frozenset({"/healthz", "/login"})
# The dashboard's pages (api/ui.py): they check the key themselves, so that a person without one
# gets a redirect to the login form instead of a 401.
PAGE_PATHS = frozenset({"/", "/ui", "/ui/", "/ui/host", "/ui/rollouts"})
# Paths that take a write key, not a read key (api/remotewrite.py checks it): a write key alone
# must reach them, and a read key alone must not.
WRITE_PATHS = frozenset({"/api/v1/write"})


def _keys(settings: Settings, admin: bool, write: bool = False) -> list[tuple[str, bytes]]:
    if admin:
        keys = []
    else:
        scoped = settings.named_write_keys() if write else settings.named_read_keys()
        keys = [(name, key.encode()) for name, key in scoped]
    named_admin = settings.named_admin_key()
    if named_admin is not None:
        keys.append((named_admin[0], named_admin[1].encode()))
    return keys


def key_name(
    presented: str | None, settings: Settings, *, admin: bool = False, write: bool = False
) -> str | None:
    """The name of the configured key of the scope that ``presented`` is (the read scope, or with
    ``write`` the write scope; admin keys are in every scope), or None. Every key is compared,
    whichever matches."""
    if presented is None:
        return None
    candidate = presented.encode()
    found = None
    for name, key in _keys(settings, admin, write):
        if hmac.compare_digest(candidate, key) and found is None:
            found = name
    return found


def matches(presented: str | None, settings: Settings, *, admin: bool = False) -> bool:
    """Whether ``presented`` is a configured key of the scope (admin keys also read)."""
    return key_name(presented, settings, admin=admin) is not None


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.partition(":")[2] or None
        return None
    return request.cookies.get(COOKIE)


def require_read(request: Request, settings: Settings) -> None:
    """`Unauthenticated` unless the request carries a read (or admin) key; open when the API is
    open."""
    if settings.api_open and not settings.read_keys() and settings.api_admin_key is None:
        return
    if not matches(presented_key(request), settings):
        raise Unauthenticated(
            "missing or wrong API key: send 'Authorization: Bearer <key>', or the key as the "
            "password of HTTP basic auth"
        )


def require_write(request: Request, settings: Settings) -> str:
    """The name of the write (or admin) key the request carries. `Forbidden` when no write key is
    configured or the key is a read key (which may not write), `Unauthenticated` without a key
    of any scope. Never open: ``api_open`` lets anyone read, not write."""
    if not settings.named_write_keys() and settings.api_admin_key is None:
        raise Forbidden(
            "remote write is off: set FLEETPULSE_API_WRITE_KEYS to the keys that may write"
        )
    presented = presented_key(request)
    name = key_name(presented, settings, write=True)
    if name is not None:
        return name
    if matches(presented, settings):
        raise Forbidden("this API key may read, not write: send a write key")
    raise Unauthenticated(
        "missing or wrong API key: send a write key as the password of HTTP basic auth "
        "(remote_write's basic_auth) or as 'Authorization: Bearer <key>'"
    )


def require_admin(request: Request, settings: Settings) -> str:
    """The admin key's name (who the audit log says acted); `Forbidden` when no admin key is
    configured (the API is read only), `Unauthenticated` unless the request carries it."""
    if settings.api_admin_key is None:
        raise Forbidden(
            "the API is read only: set FLEETPULSE_API_ADMIN_KEY to allow writes, "
            "or use `fleetpulse agents config`"
        )
    name = key_name(presented_key(request), settings, admin=True)
    if name is None:
        raise Unauthenticated("send the admin key as 'Authorization: Bearer <key>'")
    return name
