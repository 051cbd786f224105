"""The systems ``bench peers`` puts in front of the emulators, as processes.

Each front end is started the way its users start it (CATO's ``cato serve`` with a
``cato.toml`` written for the load, the Rust routers' own executables, a Ray Serve
app) on a free port, and is ready once a small completion through it succeeds.
``direct`` is no process: the client's own round robin over the emulators.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pydantic

from orchestrator.bench.processes import free_port
from orchestrator.calibrate import profile_toml
from orchestrator.config import SchedulerConfig
from orchestrator.engine_model import load_profile, sped_up
from orchestrator.graphs import TaskDefaults


@dataclass
class Frontend:
    """A router process (group) in front of the emulators; ``pid`` None for ``direct``."""

    name: str
    targets: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    cato: bool = False

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Unavailable(RuntimeError):
    """A peer that is not installed here, or that did not come up."""


def _spawn(name: str, argv: list[str], folder: Path, *, cato: bool = False) -> Frontend:
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Frontend(name, [], proc, log, cato)


def _wait_http(front: Frontend, url: str, timeout_s: float, probe: dict[str, Any]) -> None:
    """Until a small completion through ``url`` succeeds (health alone is not enough for
    routers that discover their workers in the background)."""
    deadline = time.monotonic() + timeout_s
    data = json.dumps(probe).encode()
    while time.monotonic() < deadline:
        if front.proc is not None and front.proc.poll() is not None:
            raise Unavailable(f"{front.name} exited: {_tail(front.log)}")
        req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
        answer = _post(req)
        if answer is None:
            return
        # A 404 while starting is a route not yet registered (Ray Serve's proxy is up
        # before the app); any other 4xx is a refusal of the request itself.
        if answer.startswith("HTTP 4") and not answer.startswith("HTTP 404"):
            front.stop()
            raise Unavailable(f"{front.name} rejects a plain completion: {answer}")
        time.sleep(0.5)
    front.stop()
    raise Unavailable(f"{front.name} not ready after {timeout_s:.0f} s: {_tail(front.log)}")


def _post(req: urllib.request.Request) -> str | None:
    """None when the request succeeded, else what went wrong."""
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return None
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} {err.read()[:300].decode(errors='replace')}"
    except (OSError, TimeoutError) as exc:
        return str(exc)


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-800:]


@dataclass(frozen=True)
class CatoSetup:
    """What CATO is told of the load, as its operator would write it in ``cato.toml``:
    the task kinds' SLAs and budgets (in the profile's time) and the replicas' engine
    profile (its rate prior), both stretched to the emulators' ``speed``, and whether
    the replicas cache prompt prefixes."""

    defaults: TaskDefaults
    profile: str
    speed: float = 1.0
    prefix_cache: bool = False
    scheduler: tuple[str, ...] = ()  # more ``[scheduler]`` lines (``key = value``)


def start_frontend(
    name: str,
    urls: Sequence[str],
    model: str,
    folder: Path,
    timeout_s: float,
    setup: CatoSetup | None = None,
) -> Frontend:
    """Start ``name`` in front of ``urls``; raises ``Unavailable`` where it cannot run."""
    if name == "direct":
        return Frontend(name, [u + "/v1/completions" for u in urls])
    port = free_port()
    argv = _argv(name, urls, model, port, folder, setup)
    front = _spawn(name, argv, folder, cato=is_cato(name))
    url = f"http://127.0.0.1:{port}/v1/completions"
    probe: dict[str, Any] = {"model": model, "prompt": "def f():", "max_tokens": 2}
    if front.cato:
        probe["cato"] = {"task": "complete"}
    _wait_http(front, url, timeout_s, probe)
    front.targets = [url]
    return front


def is_cato(name: str) -> bool:
    return name in ("cato", "cato-triage")


def _argv(
    name: str,
    urls: Sequence[str],
    model: str,
    port: int,
    folder: Path,
    setup: CatoSetup | None,
) -> list[str]:
    py = sys.executable
    if is_cato(name):
        config = folder / f"{name}.toml"
        policy = "cato_triage" if name == "cato-triage" else "cato"
        config.write_text(cato_config(model, urls, policy, setup, folder))
        return [py, "-m", "orchestrator.bench.peers", "serve-cato", str(config), str(port)]
    if name.startswith("vllm-router"):
        policy = {"pow2": "power_of_two", "cache": "cache_aware"}.get(
            name.rsplit("-", 1)[1], "round_robin"
        )
        exe = _exe("vllm-router")
        return [
            exe,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--policy",
            policy,
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(free_port()),
            "--worker-urls",
            *urls,
        ]
    if name == "sglang-router":
        exe = _exe("sglang-router")
        # Both Rust routers export metrics on port 29000 by default: a second router on
        # the machine (another comparison running) would then fail to start.
        metrics = ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
        return [
            exe,
            "launch",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *metrics,
            "--worker-urls",
            *urls,
        ]
    if name.startswith("ray-serve"):
        _require_module("ray.serve", "ray[serve]")
        tuned = ["--tuned"] if name.endswith("tuned") else []
        ongoing = load_profile(setup.profile).max_num_seqs if setup is not None else 256
        return [
            py, "-m", "orchestrator.bench.peers", "serve-ray", str(port), *urls, *tuned,
            "--max-ongoing", str(ongoing),
        ]  # fmt: skip
    raise ValueError(f"unknown system {name!r}")


def _exe(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise Unavailable(f"{name} is not installed (scripts/install-peers)")
    return found


def _require_module(module: str, package: str) -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is None:
        raise Unavailable(f"{package} is not installed (scripts/install-peers)")


def cato_config(
    model: str,
    urls: Sequence[str],
    policy: str = "cato",
    setup: CatoSetup | None = None,
    folder: Path | None = None,
) -> str:
    """A ``cato.toml`` with one external model over a pool of ``urls`` (a replica each);
    with a ``setup``, its SLAs and a rate-prior profile (written to ``folder``) in wall
    time, and whether the replicas cache prefixes (without one, they do not)."""
    text = (
        '[server]\nhost = "127.0.0.1"\n\n'
        f'[[models]]\nname = "{model}"\nengine = "external"\nurls = {json.dumps(list(urls))}\n'
        "concurrency_limit = 256\n"
    )
    if setup is not None:
        stretched = sped_up(load_profile(setup.profile), setup.speed)
        where = (folder or Path(".")) / "replica-profile.toml"
        where.write_text(profile_toml(stretched, [f"{setup.profile} at speed {setup.speed:g}"]))
        text += f"profile = {json.dumps(str(where))}\n"
    text += f"prefix_cache = {str(setup is not None and setup.prefix_cache).lower()}\n"
    if setup is not None:
        for kind, d in setup.defaults.kinds.items():
            text += (
                f"\n[tasks.{kind.value}]\nsla_metric = {json.dumps(d.sla.metric.value)}\n"
                f"sla_ms = {d.sla.target_ms / setup.speed:g}\nmax_tokens = {d.max_tokens}\n"
            )
    text += f'\n[scheduler]\npolicy = "{policy}"\n'
    return text + "".join(f"{line}\n" for line in (setup.scheduler if setup else ()))


def scheduler_lines(settings: Sequence[str]) -> tuple[str, ...]:
    """``KEY=VALUE`` settings as ``[scheduler]`` lines of a config, checked as CATO's
    config checks them (a ValueError says what is wrong)."""
    lines = []
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{setting!r} is not KEY=VALUE")
        lines.append(f"{key.strip()} = {value.strip()}")
    try:
        table = tomllib.loads("".join(f"{line}\n" for line in lines))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not TOML ({exc}); a string needs quotes: admission='none'") from None
    try:
        SchedulerConfig.model_validate({"policy": "cato", **table})
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return tuple(lines)


# ----------------------------------------------------- run in the front end's own process


def serve_cato(config_path: str, port: int) -> None:
    """``cato serve`` on 127.0.0.1 (its config's ``urls`` pool: one replica per engine)."""
    from orchestrator.commands.serve import run_service, serve
    from orchestrator.config import load_config

    run_service(serve(load_config(config_path), "127.0.0.1", port, None))


def serve_ray(
    port: int, urls: Sequence[str], tuned: bool, max_ongoing: int = 256
) -> None:  # pragma: no cover
    """A Ray Serve app: one deployment replica per emulator (by replica rank) behind
    Ray's power-of-two router; runs until SIGTERM.

    Set up so that the comparison measures Ray's routing, not its defaults: every
    replica fits on the machine's CPUs at once (a fractional ``num_cpus`` each; with
    the default of one CPU a replica past the CPU count waits unplaced), and a replica
    takes as many requests at a time as the engine behind it (``max_ongoing_requests``;
    Ray's default of 5 queues the rest in its router). Without ``tuned`` the replica
    count is fixed, one per engine; ``tuned`` compares Ray's autoscaling on top
    (ongoing-requests target 2, fast up- and downscaling)."""
    import ray
    from ray import serve

    cpus = max(os.cpu_count() or 2, 2)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": round(cpus / len(urls), 3)},
        "max_ongoing_requests": max_ongoing,
    }
    if tuned:
        options["autoscaling_config"] = {
            "min_replicas": 1,
            "max_replicas": len(urls),
            "initial_replicas": len(urls),
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 4,
            "look_back_period_s": 2,
        }
    else:
        options["num_replicas"] = len(urls)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = _ray_proxy().options(**options).bind(list(urls))
    serve.run(app, route_prefix="/")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        time.sleep(0.5)
    serve.shutdown()  # type: ignore[no-untyped-call, unused-ignore]
    ray.shutdown()


def _ray_proxy() -> Any:  # pragma: no cover
    """The deployment: each replica forwards to the emulator of its rank."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    @serve.deployment
    class Proxy:
        def __init__(self, urls: list[str]) -> None:
            rank = serve.get_replica_context().rank
            index = rank if isinstance(rank, int) else rank.rank
            self.url = urls[index % len(urls)] + "/v1/completions"
            self.session: aiohttp.ClientSession | None = None

        async def __call__(self, request: Request) -> StreamingResponse:
            if self.session is None:
                timeout = aiohttp.ClientTimeout(total=None)
                self.session = aiohttp.ClientSession(
                    timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
                )
            body = await request.body()
            resp = await self.session.post(
                self.url, data=body, headers={"Content-Type": "application/json"}
            )

            async def relay() -> Any:
                async with resp:
                    async for chunk in resp.content.iter_any():
                        yield chunk

            kind = "text/event-stream" if resp.status == 200 else "application/json"
            return StreamingResponse(relay(), status_code=resp.status, media_type=kind)

    return Proxy
