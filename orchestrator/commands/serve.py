"""``cato serve``: the team service over managed replicas, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from orchestrator.config import CatoConfig, ConfigError, load_config
from orchestrator.runtime import Runtime
from orchestrator.server import ServiceOptions, create_app, serve_app

log = logging.getLogger("cato.serve")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="cato.toml (default: the built-in emulated setup)")
    parser.add_argument("--host", help="bind address (default from the config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default from the config: 8000)")
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
    )


async def serve(config: CatoConfig, host: str, port: int, workdir: Path | None) -> None:
    runtime = Runtime(config, workdir=workdir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for m in config.models:
        if m.engine == "emulated":
            log.warning(
                "model %s: EMULATED replicas (profile %s), no real model is loaded",
                m.name,
                m.profile,
            )
    log.info("starting replicas (logs under %s)", runtime.workdir)
    runner = None
    try:
        await runtime.start(wait_ready_s=None)
        runner = await serve_app(
            create_app(runtime.orchestrator, service_options(config), status=runtime.status),
            host,
            port,
        )
        log.info("cato serve listening on http://%s:%d (OpenAI API under /v1)", host, port)
        ready = asyncio.create_task(_announce_ready(runtime))
        await stop.wait()
        ready.cancel()
        log.info("shutting down")
    finally:
        if runner is not None:
            await runner.cleanup()
        await runtime.stop()


async def _announce_ready(runtime: Runtime) -> None:
    try:
        await runtime.wait_ready(900)
    except TimeoutError as exc:
        log.error("%s", exc)
    else:
        log.info("every model has a ready replica")


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
    asyncio.run(serve(config, host, port, args.workdir))
    return 0
