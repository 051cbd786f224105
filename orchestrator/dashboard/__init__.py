"""``GET /dashboard``: live charts of ``/v1/status/history``, served by the service itself.

The page and its charting library (uPlot, built from npm by ``scripts/build-dashboard``
and shipped as package data) come from the installed package, so the dashboard needs
no network. The page holds no data: its script asks ``/v1/status/history`` with the
bearer token the user types (kept in the tab's session storage), so the page itself
needs no auth.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

# Only these files are served (no path from the request reaches the file system).
_TYPES = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}
# Scripts and styles from this origin only; data from this origin only.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def asset(name: str) -> bytes:
    """One file of the dashboard, from the installed package."""
    return (resources.files(__package__) / "static" / name).read_bytes()


async def _page(request: web.Request) -> web.StreamResponse:
    if not request.path.endswith("/"):
        raise web.HTTPFound("/dashboard/")  # the page's relative asset paths need the slash
    return _response("index.html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _TYPES:
        raise web.HTTPNotFound(text=f"no dashboard file {name!r}")
    return _response(name)


def _response(name: str) -> web.Response:
    return web.Response(
        body=asset(name),
        content_type=_TYPES[name],
        charset="utf-8",
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
    )


def add_routes(app: web.Application) -> None:
    """``/dashboard`` (redirected to ``/dashboard/``) and its static files."""
    app.router.add_get("/dashboard", _page)
    app.router.add_get("/dashboard/", _page)
    app.router.add_get("/dashboard/static/{name}", _static)


__all__ = ["add_routes", "asset"]
