"""The dashboard: fleet, host and rollouts pages, served as static files next to the JSON API.

The pages are plain HTML and JavaScript that call the read API from the browser (same origin, the
``fleetpulse_key`` cookie set by ``POST /login``); the charts are uPlot, vendored under
``static/vendor`` (VENDORED.md names the exact version). Nothing is fetched from elsewhere at run
time and nothing is built at run time.

The app-level key check answers 401 to a request without a key; a person opening the dashboard
should get the login form instead, so the page paths (``auth.PAGE_PATHS``) are skipped by that
check and checked here, where a missing key is a redirect to ``/login``. The assets under ``/ui/static`` stay
behind the app-level check (the browser sends the cookie with them).
"""

from __future__ import annotations

from html import escape
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from fleetpulse.api import auth
from fleetpulse.errors import NotFound, Unauthenticated
from fleetpulse.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"

# A login form is a few dozen bytes; anything much larger is not one.
MAX_LOGIN_BODY = 4096

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}
# Everything the pages load comes from this origin; no inline script, no framing.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _asset_index() -> dict[str, Path]:
    """Every servable file by its path under /ui/static: a fixed set, so no path is ever joined."""
    return {
        path.relative_to(STATIC_DIR).as_posix(): path
        for path in sorted(STATIC_DIR.rglob("*"))
        if path.is_file() and path.suffix in _MEDIA_TYPES
    }


_ASSETS = _asset_index()

router = APIRouter(include_in_schema=False)


def _authorized(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    try:
        auth.require_read(request, settings)
    except Unauthenticated:
        return False
    return True


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: only a dashboard path of this server (no open redirect)."""
    if value and value.startswith("/ui/") and "//" not in value and "\\" not in value:
        return value
    return "/ui/"


def _page(name: str, request: Request) -> Response:
    if not _authorized(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", HTTPStatus.SEE_OTHER)
    return FileResponse(STATIC_DIR / name, media_type=_MEDIA_TYPES[".html"], headers=_PAGE_HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", HTTPStatus.TEMPORARY_REDIRECT)


@router.get("/ui")
async def ui_no_slash() -> RedirectResponse:
    return RedirectResponse("/ui/", HTTPStatus.TEMPORARY_REDIRECT)


@router.get("/ui/")
async def fleet_page(request: Request) -> Response:
    """Every agent with status, OS, version, last seen, CPU and memory; refreshed every 5 s."""
    return _page("index.html", request)


@router.get("/ui/host")
async def host_page(request: Request) -> Response:
    """One agent (``?agent=ID``): CPU, memory, disk and network charts over a chosen range."""
    return _page("host.html", request)


@router.get("/ui/rollouts")
async def rollouts_page(request: Request) -> Response:
    """Staged rollouts, newest first, with their waves and (on a click) their agents; read only."""
    return _page("rollouts.html", request)


@router.get("/ui/static/{path:path}")
async def static_asset(path: str) -> Response:
    file = _ASSETS.get(path)
    if file is None:
        raise NotFound("no such asset")
    return FileResponse(
        file,
        media_type=_MEDIA_TYPES[file.suffix],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


# Inline: the stylesheet under /ui/static needs the key this form asks for.
_LOGIN_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; background: #f4f6f9; color: #1d2430; margin: 0;
  display: grid; place-items: center; min-height: 100vh; }
form { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 24px 28px;
  width: min(380px, 90vw); box-shadow: 0 2px 8px rgb(0 0 0 / 6%); }
h1 { margin: 0 0 8px; font-size: 20px; }
label { display: block; font-weight: 600; margin: 12px 0 4px; }
input[type=password] { width: 100%; box-sizing: border-box; padding: 8px; font: inherit;
  border: 1px solid #c5ccd8; border-radius: 4px; }
button { margin-top: 14px; padding: 8px 16px; font: inherit; border: 0; border-radius: 4px;
  background: #2563eb; color: #fff; cursor: pointer; }
.error { color: #b42318; font-weight: 600; }
code { background: #eef1f5; padding: 0 3px; border-radius: 3px; }
"""


def _login_html(next_path: str, error: str | None = None) -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>fleetpulse: log in</title>
<style>{_LOGIN_CSS}</style>
</head>
<body class="login">
<form method="post" action="/login" class="login-form">
  <h1>fleetpulse</h1>
  <p>Enter an API key (a read key; <code>fleetpulse up</code> prints one and keeps it in
  <code>data_dir/api-key</code>).</p>
  {message}
  <label for="key">API key</label>
  <input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
  <input type="hidden" name="next" value="{escape(next_path)}">
  <button type="submit">Log in</button>
</form>
</body>
</html>
"""


@router.get("/login")
async def login_form(next: str | None = None) -> HTMLResponse:
    return HTMLResponse(_login_html(_safe_next(next)), headers=_PAGE_HEADERS)


@router.post("/login")
async def login(request: Request) -> Response:
    """Form field ``key``: a configured key sets the ``fleetpulse_key`` cookie; else 401."""
    settings: Settings = request.app.state.settings
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            return HTMLResponse(
                _login_html("/ui/", "The form is too large."),
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                headers=_PAGE_HEADERS,
            )
    try:
        form = parse_qs(body.decode(), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        form = {}
    key = (form.get("key") or [""])[0].strip()
    next_path = _safe_next(form["next"][0] if form.get("next") else None)
    if not auth.matches(key, settings):
        return HTMLResponse(
            _login_html(next_path, "That key is not a configured API key."),
            HTTPStatus.UNAUTHORIZED,
            headers=_PAGE_HEADERS,
        )
    response = RedirectResponse(next_path, HTTPStatus.SEE_OTHER)
    response.set_cookie(
        auth.COOKIE,
        key,
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )
    return response
