"""The floor of a router written on aiohttp, for ``cato bench overhead``: read the body,
take the next backend in turn, copy the stream back read by read. No validation, no
scheduling, no accounting: what is left is what aiohttp (server and client) and the
event loop cost, which no router on this stack can go below. It runs on the event loop
``cato serve`` runs on (uvloop's when installed).

Run with ``python -m orchestrator.bench.overhead_floor PORT URL [URL...]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from orchestrator.commands.serve import run_service


def make_app(urls: Sequence[str]) -> web.Application:
    targets = itertools.cycle([u.rstrip("/") + "/v1/completions" for u in urls])
    headers = {"Content-Type": "application/json"}
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        app[SESSION] = session
        yield
        await session.close()

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with app[SESSION].post(next(targets), data=body, headers=headers) as upstream:
            if upstream.content_type != "text/event-stream":
                data = await upstream.read()
                return web.Response(body=data, status=upstream.status, headers=headers)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/completions", completions)
    return app


SESSION = web.AppKey("session", aiohttp.ClientSession)


async def serve(port: int, urls: Sequence[str]) -> None:
    runner = web.AppRunner(make_app(urls), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m orchestrator.bench.overhead_floor PORT URL [URL...]")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        run_service(serve(int(args[0]), args[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
