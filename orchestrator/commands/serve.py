"""``cato serve``: the team service over managed replicas, until SIGINT or SIGTERM.

The HTTP port is bound first, so a port in use fails at once, before any replica
starts; ``/health`` answers 503 until every model has a ready replica. On SIGINT
(Ctrl-C) or SIGTERM the service stops taking requests and stops every replica it
started before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from orchestrator.config import CatoConfig, ConfigError, load_config
from orchestrator.engine_model import load_profile
from orchestrator.http_guard import HttpLimits
from orchestrator.runtime import Runtime
from orchestrator.server import ServiceOptions, bound_port, create_app, serve_app

log = logging.getLogger("cato.serve")


class PortInUse(Exception):
    """The service's address is taken (another ``cato serve``, or anything else)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="cato.toml (default: the built-in emulated setup)")
    parser.add_argument("--host", help="bind address (default from the config: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port (default from the config: 8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="folder for replica logs (default: a temp folder)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def service_options(config: CatoConfig) -> ServiceOptions:
    s = config.server
    return ServiceOptions(
        users=s.users,
        max_body_bytes=s.max_body_bytes,
        max_prompt_chars=s.max_prompt_chars,
        max_tokens_limit=s.max_tokens_limit,
        models=[m.name for m in config.models],
        sla_floors_ms=config.sla_floors_ms(),
        context_lengths=context_lengths(config),
        max_queued=s.max_queued,
        metrics_auth=s.metrics_auth,
        http=HttpLimits(
            keepalive_timeout_s=s.keepalive_timeout_s,
            header_timeout_s=s.header_timeout_s,
            body_timeout_s=s.body_timeout_s,
            max_connections=s.max_connections,
        ),
    )


def context_lengths(config: CatoConfig) -> dict[str, int]:
    """Per model, the context length its replicas enforce, where the config says it:
    ``max_model_len``, else the engine profile's (always for emulated replicas, which
    run it). A model with neither is left to its replicas to check."""
    lengths: dict[str, int] = {}
    for m in config.models:
        if m.max_model_len is not None:
            lengths[m.name] = m.max_model_len
        elif m.engine == "emulated" or "profile" in m.model_fields_set:
            lengths[m.name] = load_profile(m.profile).max_model_len
    return lengths


async def serve(config: CatoConfig, host: str, port: int, workdir: Path | None) -> None:
    """Run until SIGINT or SIGTERM; raises ``PortInUse`` before starting any replica."""
    runtime = Runtime(config, workdir=workdir)
    app = create_app(
        runtime.orchestrator,
        service_options(config),
        status=runtime.status,
        scale_events=runtime.scale_events,
    )
    try:
        runner = await _bind(app, host, port)
    except PortInUse:
        if workdir is None:
            runtime.workdir.rmdir()  # the empty log folder made for this run
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    url = f"http://{_url_host(host)}:{bound_port(runner)}"
    _announce(config, host, url, runtime)
    ready: asyncio.Task[None] | None = None
    try:
        await runtime.start(wait_ready_s=None)
        ready = asyncio.create_task(_announce_ready(runtime, url))
        await stop.wait()
    finally:
        if ready is not None:
            ready.cancel()
        log.info("shutting down: closing connections, then stopping replicas")
        await runner.cleanup()
        await runtime.stop()
        log.info("stopped; no replica is left running")


async def _bind(app: web.Application, host: str, port: int) -> web.AppRunner:
    try:
        return await serve_app(app, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use (another cato serve?); "
                "stop it or pick another port with --port"
            ) from None
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.info("%s again: still stopping replicas, please wait", sig.name)
        return
    log.info("%s received", sig.name)
    stop.set()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _announce(config: CatoConfig, host: str, url: str, runtime: Runtime) -> None:
    for m in config.models:
        if m.engine == "emulated":
            log.warning(
                "model %s: EMULATED replicas (engine profile %s, %gx speed): no real model "
                "is loaded, answers are synthetic text; name vllm models in a cato.toml "
                "(--config) to serve real ones",
                m.name,
                m.profile,
                m.speed,
            )
        else:
            what = m.model or m.url
            log.info(
                "model %s: %s %s, %d..%d replicas",
                m.name,
                m.engine,
                what,
                m.min_replicas,
                m.replicas_max,
            )
    if not config.server.users:
        log.info("no users configured: requests need no token")
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening beyond this machine without users: anyone can use it")
    log.info("cato serve listening on %s (OpenAI base URL %s/v1)", url, url)
    log.info(
        "replica logs under %s (removed at exit unless --workdir names it); "
        "Ctrl-C stops the service",
        runtime.workdir,
    )


async def _announce_ready(runtime: Runtime, url: str) -> None:
    try:
        await runtime.wait_ready(runtime.manager.settings.ready_timeout_s)
    except TimeoutError as exc:
        log.error("%s", exc)
    else:
        log.info("ready: every model has a ready replica; try `cato status --url %s`", url)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when uvloop is installed (about 10% less service CPU per
    streamed request in same-round runs of ``cato bench overhead``), else None (asyncio's
    own); ``CATO_UVLOOP=0`` keeps asyncio's."""
    if os.environ.get("CATO_UVLOOP", "1") == "0":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` on the loop of ``loop_factory``."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    try:
        run_service(serve(config, host, port, args.workdir))
    except PortInUse as exc:
        print(f"cato serve: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found at start: an unset api_key_env, Ray missing
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the service was up
        return 130
    return 0
