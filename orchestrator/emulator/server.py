"""A vLLM-compatible HTTP server whose "GPU" is ``engine_model`` run in real time.

One task on the event loop plays the engine: it asks the model for the next step,
sleeps for the step's duration (divided by ``speed``), then hands each sequence its
token. Request handlers only validate, enqueue and wait for their tokens, so the
emulator behaves like vLLM under load (queueing, batching, preemption) while costing
a few microseconds of CPU per streamed token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.emulator.lengths import LengthTable
from orchestrator.emulator.protocol import (
    DONE,
    ApiError,
    ChunkWriter,
    GenerationRequest,
    full_response,
    models_list,
    parse_body,
    parse_request,
    usage_json,
)
from orchestrator.emulator.textgen import Completion, TextGenerator
from orchestrator.engine_model import (
    EngineModel,
    EngineProfile,
    Policy,
    StepResult,
    block_hashes,
)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# vLLM's histogram buckets (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# Late wake-ups shorter than this are caught up on the next steps; longer ones are not.
MAX_CATCH_UP_S = 0.05


@dataclass(frozen=True)
class EmulatorConfig:
    """What one emulator process serves and how fast it runs."""

    profile: EngineProfile
    models: tuple[str, ...]
    policy: Policy = "priority"
    speed: float = 1.0
    seed: int = 0
    cold_start_s: float = 0.0  # wall-clock seconds before /health answers 200
    # Exact output lengths of known prompts (see ``lengths.py``); None: drawn lengths.
    lengths: LengthTable | None = None
    # As vLLM's --api-key (or VLLM_API_KEY): every /v1 path wants this bearer token.
    api_key: str | None = None
    # As vLLM's --enable-prefix-caching. Off unless asked: vLLM V1 turns it on by
    # default, but the simulated twins of rq1-rq3 run without it (see engine_model).
    prefix_caching: bool = False

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("serve at least one model name")
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        if self.cold_start_s < 0:
            raise ValueError("cold_start_s must be >= 0")


@dataclass(eq=False, slots=True)
class _Live:
    """A request the engine is working on, as its handler waits for it."""

    request_id: str
    arrival: float
    prompt_tokens: int
    plan: Completion
    event: asyncio.Event = field(default_factory=asyncio.Event)
    produced: int = 0
    finished: bool = False


class _Metrics:
    """vLLM's Prometheus metrics (and the emulator's own) in a private registry."""

    def __init__(self, model: str, engine: EngineModel) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        reg = self.registry

        def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
            Gauge(name, doc, labels, registry=reg).labels(model_name=model).set_function(fn)

        gauge(
            "vllm:num_requests_running",
            "Requests in the running batch.",
            lambda: engine.num_running,
        )
        gauge("vllm:num_requests_waiting", "Requests waiting to run.", lambda: engine.num_waiting)
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100%.", lambda: engine.kv_usage)
        gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (pre-V1 name).", lambda: engine.kv_usage)
        info = Gauge(
            "vllm:cache_config_info",
            "KV cache configuration.",
            ["block_size", "num_gpu_blocks"],
            registry=reg,
        )
        profile = engine.profile
        info.labels(str(profile.block_size), str(profile.num_kv_blocks)).set(1)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", labels,
            buckets=TTFT_BUCKETS, registry=reg,
        ).labels(model_name=model)  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", labels,
            buckets=E2E_BUCKETS, registry=reg,
        ).labels(model_name=model)  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=reg
        ).labels(model_name=model)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", labels, registry=reg
        ).labels(model_name=model)
        self.preemptions = Counter(
            "vllm:num_preemptions", "Sequences preempted.", labels, registry=reg
        ).labels(model_name=model)
        success = Counter(
            "vllm:request_success",
            "Requests finished, by reason.",
            [*labels, "finished_reason"],
            registry=reg,
        )
        self.success = {r: success.labels(model, r) for r in ("stop", "length", "abort")}
        self.aborted = Counter(
            "cato_emulator_aborted", "Requests aborted by their client.", labels, registry=reg
        ).labels(model_name=model)
        fixed = Counter(
            "cato_emulator_fixed_lengths",
            "Requests whose prompt the output-length table listed (hit) or not (miss).",
            [*labels, "result"],
            registry=reg,
        )
        self.fixed_lengths = {r: fixed.labels(model, r) for r in ("hit", "miss")}
        reg.register(_PrefixCacheCounters(model, engine))


class _PrefixCacheCounters(Collector):
    """vLLM's prefix-cache counters, read from the engine when scraped (in tokens:
    prompt tokens looked up at admission, and those found in the cache)."""

    def __init__(self, model: str, engine: EngineModel) -> None:
        self.model = model
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        for name, doc, value in (
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                self.engine.prefix_cache_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                self.engine.prefix_cache_hits,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model], value)
            yield family


class Emulator:
    """The engine loop, the live requests and the HTTP handlers of one emulated replica."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.profile = config.profile
        self.engine = EngineModel(
            config.profile, config.policy, prefix_caching=config.prefix_caching
        )
        self.textgen = TextGenerator(
            config.seed, config.profile.output_mean_tokens, config.profile.output_sigma
        )
        self.metrics = _Metrics(config.models[0], self.engine)
        self._live: dict[str, _Live] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._created = int(time.time())

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine loop and the cold-start clock (call on the running loop)."""
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._loop_task = loop.create_task(self._engine_loop(), name="emulated-engine")
        self._loop_task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    @property
    def ready(self) -> bool:
        loop = asyncio.get_running_loop()
        return loop.time() - self._started_at >= self.config.cold_start_s

    def app(self) -> web.Application:
        middlewares = [self._require_key] if self.config.api_key else []
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=middlewares)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_handler)
        return app

    @web.middleware
    async def _require_key(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """vLLM's authentication: /v1 paths need the key, /health and /metrics do not."""
        if request.path.startswith("/v1"):
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            wanted = f"Bearer {self.config.api_key}".encode()
            if not hmac.compare_digest(given, wanted):
                return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    # -- engine loop --------------------------------------------------------------------

    def _virtual_now(self) -> float:
        """The engine's clock: wall time since start, sped up by ``speed``."""
        elapsed = asyncio.get_running_loop().time() - self._started_at
        return max(elapsed * self.config.speed, self.engine.busy_until)

    async def _engine_loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            result = self.engine.step(self._virtual_now())
            if result is None:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            deadline = max(deadline, loop.time() - MAX_CATCH_UP_S)
            deadline += result.duration_s / self.config.speed
            await asyncio.sleep(max(deadline - loop.time(), 0.0))
            self._deliver(result, loop.time())

    def _deliver(self, result: StepResult, now: float) -> None:
        metrics = self.metrics
        delivered = 0
        for out in result.outputs:
            live = self._live.get(out.seq_id)
            if live is None:
                continue  # aborted while the step ran
            delivered += 1
            live.produced = out.output_tokens
            if out.first_token:
                metrics.ttft.observe(now - live.arrival)
            if out.finished:
                live.finished = True
                del self._live[out.seq_id]
                metrics.e2e.observe(now - live.arrival)
                metrics.success[live.plan.finish_reason].inc()
            live.event.set()
        metrics.generation_tokens.inc(delivered)
        if result.preempted:
            metrics.preemptions.inc(len(result.preempted))

    # -- requests -----------------------------------------------------------------------

    def _admit(self, req: GenerationRequest) -> _Live:
        """Check the request against the engine's limits, plan its output, enqueue it."""
        if req.model not in self.config.models:
            raise ApiError(404, f"The model `{req.model}` does not exist.", "model")
        if req.priority != 0 and self.config.policy != "priority":
            raise ApiError(
                400,
                f"Got priority {req.priority} but Priority scheduling is not enabled.",
                "priority",
            )
        max_len = self.profile.max_model_len
        if req.prompt_tokens >= max_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {max_len} tokens. However, your "
                f"request has {req.prompt_tokens} input tokens. Please reduce the length of "
                "the input messages.",
                "messages" if req.chat else "prompt",
            )
        room = max_len - req.prompt_tokens
        if req.max_tokens is not None and req.max_tokens > room:
            raise ApiError(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {req.max_tokens}. "
                f"This model's maximum context length is {max_len} tokens and your request "
                f"has {req.prompt_tokens} input tokens ({req.max_tokens} > {max_len} - "
                f"{req.prompt_tokens}).",
                "max_tokens",
            )
        max_tokens = req.max_tokens if req.max_tokens is not None else room
        min_tokens = req.min_tokens
        if min_tokens > max_tokens:
            raise ApiError(
                400,
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {min_tokens}.",
            )
        if self.config.lengths is not None:
            fixed = self.config.lengths.get(req.prompt)
            self.metrics.fixed_lengths["miss" if fixed is None else "hit"].inc()
            if fixed is not None:
                max_tokens = min_tokens = min(fixed, max_tokens)
        plan = self.textgen.plan(
            req.prompt,
            max_tokens,
            request_seed=req.seed,
            temperature=req.temperature,
            stop=req.stop,
            ignore_eos=req.ignore_eos,
            min_tokens=min_tokens,
            include_stop=req.include_stop,
        )
        prefix = "chatcmpl-" if req.chat else "cmpl-"
        live = _Live(
            prefix + uuid.uuid4().hex, asyncio.get_running_loop().time(), req.prompt_tokens, plan
        )
        hashes = (
            block_hashes(req.prompt, self.profile.block_size) if self.config.prefix_caching else ()
        )
        self.engine.add(
            live.request_id,
            req.prompt_tokens,
            plan.num_tokens,
            req.priority,
            self._virtual_now(),
            block_hashes=hashes,
        )
        self._live[live.request_id] = live
        self.metrics.prompt_tokens.inc(req.prompt_tokens)
        self._wake.set()
        return live

    def _abort(self, live: _Live) -> None:
        """The client went away before its response was complete: free its sequence now."""
        self._live.pop(live.request_id, None)
        self.metrics.aborted.inc()
        if self.engine.abort(live.request_id):
            self.metrics.success["abort"].inc()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            if not self.ready:
                raise ApiError(503, "The engine is still starting up.")
            req = parse_request(parse_body(await request.read()), chat)
            if not req.model:
                req.model = self.config.models[0]
            live = self._admit(req)
        except ApiError as err:
            return web.json_response(err.body(), status=err.status, dumps=_compact_json)
        done = False
        try:
            if req.stream:
                response = await self._stream(request, req, live)
            else:
                response = await self._complete(req, live)
            done = True
            return response
        finally:
            if not done:
                self._abort(live)

    async def _complete(self, req: GenerationRequest, live: _Live) -> web.Response:
        while not live.finished:
            await live.event.wait()
            live.event.clear()
        plan = live.plan
        body = full_response(
            live.request_id, int(time.time()), req.model, req.chat, plan.text,
            plan.finish_reason, plan.stop_reason, live.prompt_tokens, plan.num_tokens,
        )  # fmt: skip
        return web.json_response(body, dumps=_compact_json)

    async def _stream(
        self, request: web.Request, req: GenerationRequest, live: _Live
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        chunks = ChunkWriter(live.request_id, int(time.time()), req.model, req.chat)
        plan, deltas, total = live.plan, live.plan.deltas, live.plan.num_tokens
        sent = 0
        while sent < total:
            if live.produced == sent:
                live.event.clear()
                await live.event.wait()
                continue
            upto = live.produced
            parts = [chunks.role()] if req.chat and sent == 0 else []
            for i in range(sent, upto):
                usage = usage_json(live.prompt_tokens, i + 1) if req.continuous_usage else ""
                if i == total - 1:
                    parts.append(
                        chunks.last(deltas[i], plan.finish_reason, plan.stop_reason, usage)
                    )
                elif usage:
                    parts.append(chunks.with_usage(deltas[i], usage))
                else:
                    parts.append(chunks.token(deltas[i]))
            sent = upto
            await response.write("".join(parts).encode())
        tail = chunks.usage(live.prompt_tokens, total) if req.include_usage else ""
        await response.write((tail + DONE).encode())
        await response.write_eof()
        return response

    # -- plain endpoints ----------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        if not self.ready:
            return _starting()
        body = models_list(self.config.models, self._created, self.profile.max_model_len)
        return web.json_response(body, dumps=_compact_json)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200) if self.ready else _starting()

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _compact_json(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _starting() -> web.Response:
    err = ApiError(503, "The engine is still starting up.")
    return web.json_response(err.body(), status=503, dumps=_compact_json)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the emulated engine loop stopped", exc_info=task.exception())


async def serve(
    config: EmulatorConfig,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_listening: Callable[[str], None] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set; report the URL when listening and when ready.

    ``port=0`` picks a free port; the URL given to the callbacks has the real one.
    Handlers are cancelled when their client disconnects, which is how an abandoned
    stream leaves the engine at once.
    """
    emulator = Emulator(config)
    runner = web.AppRunner(
        emulator.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    emulator.start()
    bound = runner.addresses[0]
    url = f"http://{_url_host(host)}:{bound[1]}"
    if on_listening is not None:
        on_listening(url)
    ready_timer = None
    if on_ready is not None:
        loop = asyncio.get_running_loop()
        ready_timer = loop.call_later(config.cold_start_s, on_ready, url)
    try:
        await stop.wait()
    finally:
        if ready_timer is not None:
            ready_timer.cancel()
        await emulator.stop()
        await runner.cleanup()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
