"""The executor end to end against real emulator processes.

Emulators run with a huge mean output length, so every call generates exactly its
``max_tokens``: token counts, usage and the order of work are deterministic, and only
the wall-clock pace depends on the machine. Assertions are on events, counts and
results; the one timing-driven comparison (slack-aware vs round-robin under overload)
sets its SLA from a measured lone request and leaves a wide margin on both sides.
"""

from __future__ import annotations

import asyncio
import colorsys
import contextlib
import inspect
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import graphs
from orchestrator.api import SLA, SLAMetric, TaskEvent, TaskKind, TaskRequest
from orchestrator.emulator.process import RunningEmulator, StartEmulator, launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.graphs import TaskDefaults, TaskGraph
from orchestrator.policy.state import Rates
from orchestrator.replicas.openai_client import Finished, ReplicaClient

MODEL = "tiny"
SPEED = 2.0
FULL_LENGTH = ["--mean-output-tokens", "100000"]  # every call runs to its max_tokens
LAX_TTFT = SLA(metric=SLAMetric.TTFT, target_ms=120_000)
LAX_E2E = SLA(metric=SLAMetric.E2E, target_ms=120_000)
FIM_PROMPT = (
    "<fim_prefix>def clamp(value, low, high):\n    <fim_suffix>\n    return value\n<fim_middle>"
)
DEFAULTS = TaskDefaults(chunk_tokens=200)  # a small module still becomes several chunks
WAIT_S = 60.0  # bound on any single wait: generous, the machine may be busy


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pair() -> Iterator[list[RunningEmulator]]:
    """Two emulators shared by the tests that leave them idle when they end."""
    emulators: list[RunningEmulator] = []
    try:
        for _ in range(2):
            emulators.append(launch_emulator(model=MODEL, speed=SPEED, extra_args=FULL_LENGTH))
        yield emulators
    finally:
        for emulator in emulators:
            emulator.stop()


def specs(emulators: Sequence[RunningEmulator], limit: int = 4) -> list[ReplicaSpec]:
    return [
        ReplicaSpec(id=f"r{i}", url=e.url, model=MODEL, concurrency_limit=limit)
        for i, e in enumerate(emulators)
    ]


@contextlib.asynccontextmanager
async def running(
    replicas: Sequence[ReplicaSpec], scheduler: str = "cato"
) -> AsyncIterator[Orchestrator]:
    orch = Orchestrator(replicas, defaults=DEFAULTS, scheduler=scheduler)
    try:
        yield orch
    finally:
        await orch.close()


# --------------------------------------------------------------------------- helpers


async def collect(orch: Orchestrator, request: TaskRequest) -> list[TaskEvent]:
    """Every event of one task, bounded in time so that a hang fails the test."""

    async def drain() -> list[TaskEvent]:
        async with contextlib.aclosing(orch.submit(request)) as events:
            return [event async for event in events]

    return await asyncio.wait_for(drain(), WAIT_S)


async def scrape(url: str) -> dict[str, float]:
    """An emulator's ``/metrics``: sample name -> value summed over labels."""
    async with ReplicaClient(url) as client:
        text = await client.metrics_text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    async def poll() -> None:
        while not await check():  # noqa: ASYNC110 (polls another process)
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


async def idle(emulators: Sequence[RunningEmulator]) -> None:
    """Wait until no emulator has a request running or waiting."""

    async def check() -> bool:
        for e in emulators:
            m = await scrape(e.url)
            if m["vllm:num_requests_running"] or m["vllm:num_requests_waiting"]:
                return False
        return True

    await eventually(check, "the emulators are idle")


async def load_is(orch: Orchestrator, replica_id: str, load: tuple[int, int]) -> None:
    async def check() -> bool:
        return orch.replica_load(replica_id) == load

    await eventually(check, f"replica {replica_id} has (in flight, queued) == {load}")


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tokens_of(events: Sequence[TaskEvent]) -> list[TaskEvent]:
    return [e for e in events if e.type == "token"]


def node_events(events: Sequence[TaskEvent], node: str) -> list[TaskEvent]:
    return [e for e in events if e.type == "node" and e.node == node]


def summarize_request(code: str, max_tokens: int, sla: SLA = LAX_E2E) -> TaskRequest:
    return TaskRequest(
        kind=TaskKind.SUMMARIZE, code=code, model=MODEL, max_tokens=max_tokens, sla=sla
    )


def complete_request(
    prompt: str = FIM_PROMPT,
    sla: SLA = LAX_TTFT,
    *,
    model: str = MODEL,
    max_tokens: int | None = None,
    id: str | None = None,
) -> TaskRequest:
    request = TaskRequest(
        kind=TaskKind.COMPLETE, prompt=prompt, model=model, sla=sla, max_tokens=max_tokens
    )
    return request if id is None else request.model_copy(update={"id": id})


# --------------------------------------------------------------------------- stream shape


def check_stream(events: Sequence[TaskEvent], graph: TaskGraph, replica_ids: set[str]) -> None:
    """``started``, node events in dependency order, tokens of the final node only
    while it runs, then exactly one ``done``."""
    assert events[0].type == "started"
    assert events[-1].type == "done"
    assert [e.type for e in events].count("done") == 1
    assert not [e for e in events if e.type == "error"]
    assert {e.task_id for e in events} == {graph.request.id}
    index = {id(e): i for i, e in enumerate(events)}
    finished_at: dict[str, int] = {}
    for node in graph.nodes:
        evs = node_events(events, node.id)
        states = [e.state for e in evs]
        assert states[-1] == "finished" and states.count("finished") == 1, (node.id, states)
        assert set(states[:-1]) == {"running"}, (node.id, states)
        if node.op == "llm":
            assert all(e.replica in replica_ids and e.priority in (0, 1, 2) for e in evs)
        else:
            assert len(evs) == 2 and evs[0].replica is None
        finished_at[node.id] = index[id(evs[-1])]
        first = index[id(evs[0])]
        assert all(finished_at[d] < first for d in node.deps), node.id
    tokens = tokens_of(events)
    if graph.final_node is None:
        assert tokens == []
        return
    final = node_events(events, graph.final_node)
    assert tokens, "the final llm node streams its tokens"
    assert all(e.node == graph.final_node for e in tokens)
    assert index[id(final[-2])] < index[id(tokens[0])]
    assert index[id(tokens[-1])] < index[id(final[-1])]


async def expected_translation(url: str, graph: TaskGraph) -> str:
    """The chunks translated by calling the emulator directly, then assembled."""

    async def one(client: ReplicaClient, node: graphs.Node) -> str:
        stream = client.stream_completion(
            MODEL, node.prompt, max_tokens=node.max_tokens, stop=node.stop
        )
        async with contextlib.aclosing(stream) as events:
            finished = [ev async for ev in events if isinstance(ev, Finished)]
        return finished[0].text

    async with ReplicaClient(url) as client:
        parts = await asyncio.gather(*(one(client, n) for n in graph.llm_nodes()))
    return graphs.assemble(parts)


# --------------------------------------------------------------------------- tests


async def test_all_four_kinds_stream_their_events_and_results(
    pair: list[RunningEmulator],
) -> None:
    requests = [
        complete_request(),
        TaskRequest(
            kind=TaskKind.GENERATE,
            code="# parse a CSV line into a list of fields, honouring quotes",
            model=MODEL,
            sla=LAX_TTFT,
        ),
        summarize_request(inspect.getsource(textwrap.dedent), 120),
        TaskRequest(
            kind=TaskKind.TRANSLATE,
            code=inspect.getsource(colorsys),
            target_language="rust",
            model=MODEL,
            sla=LAX_E2E,
        ),
    ]
    async with running(specs(pair)) as orch:
        runs = await asyncio.gather(*(collect(orch, r) for r in requests))
        status = orch.status()
    built = [graphs.build_graph(r, DEFAULTS) for r in requests]
    for graph, events in zip(built, runs, strict=True):
        check_stream(events, graph, {"r0", "r1"})
        done = events[-1]
        llms = graph.llm_nodes()
        assert done.usage is not None
        assert done.usage.prompt_tokens == sum(n.prompt_tokens for n in llms)
        assert done.usage.completion_tokens == sum(n.max_tokens for n in llms)
        assert done.e2e_ms is not None and done.e2e_ms > 0
        assert done.sla_met is True
        if graph.final_node is not None:
            assert done.result == "".join(e.text or "" for e in tokens_of(events))
            assert done.ttft_ms is not None and 0 < done.ttft_ms <= done.e2e_ms

    complete, generate, _summarize, translate = runs
    assert complete[-1].diagnostics == []
    assert generate[-1].diagnostics == list(graphs.validate(generate[-1].result or "", "python"))

    graph = built[3]
    chunks = graph.llm_nodes()
    assert len(chunks) >= 3, "the module is translated in several chunks"
    result = translate[-1].result or ""
    assert result == await expected_translation(pair[0].url, graph)
    assert translate[-1].diagnostics == list(graphs.validate(result, "rust"))
    assert translate[-1].ttft_ms is None
    running_llms = [e for e in translate if e.type == "node" and e.state == "running"]
    assert {e.replica for e in running_llms if e.node and e.node.startswith("llm")} == {
        "r0",
        "r1",
    }, "the chunks run on both replicas in parallel"
    finished = [e for e in translate if e.state == "finished" and e.node in {n.id for n in chunks}]
    n = len(chunks)
    assert [e.progress for e in finished] == pytest.approx([(i + 1) / n for i in range(n)])

    assert status.scheduler == "cato" and status.ok
    assert status.queued == 0 and status.in_flight == 0
    assert [(r.id, r.state, r.url) for r in status.replicas] == [
        ("r0", "ready", pair[0].url),
        ("r1", "ready", pair[1].url),
    ]
    for request in requests:
        stats = status.kinds[request.kind.value]
        assert (stats.requests, stats.sla_met, stats.errors, stats.cancelled) == (1, 1, 0, 0)
        assert stats.e2e_p50_ms is not None


async def test_sla_met_follows_the_requested_target(pair: list[RunningEmulator]) -> None:
    impossible = SLA(metric=SLAMetric.TTFT, target_ms=0.001)
    async with running(specs(pair)) as orch:
        missed = await collect(orch, complete_request(sla=impossible))
        met = await collect(orch, complete_request())
        stats = orch.status().kinds["complete"]
    assert missed[-1].type == met[-1].type == "done"
    assert missed[-1].sla_met is False
    assert met[-1].sla_met is True
    assert (stats.requests, stats.sla_met) == (2, 1)


async def test_unknown_model_and_bad_requests_end_in_error_events(
    pair: list[RunningEmulator],
) -> None:
    async with running(specs(pair)) as orch:
        unknown = await collect(orch, complete_request(model="no-such-model"))
        too_long = await collect(orch, complete_request("x = 1\n" * 4_000))
        no_prompt = await collect(orch, TaskRequest(kind=TaskKind.COMPLETE, model=MODEL))
        no_target = await collect(
            orch, TaskRequest(kind=TaskKind.TRANSLATE, code="x = 1\n", model=MODEL)
        )
        stats = orch.status().kinds
    assert unknown[0].type == "started"
    assert unknown[-1].type == "error" and unknown[-1].code == "unknown_model"
    assert MODEL in (unknown[-1].error or ""), "the error names the served models"
    assert [e.state for e in node_events(unknown, "llm")] == ["failed"]
    assert [e.type for e in unknown].count("error") == 1
    assert "done" not in [e.type for e in unknown]
    assert too_long[-1].type == "error" and too_long[-1].code == "bad_request"
    assert "context length" in (too_long[-1].error or "")
    assert [e.state for e in node_events(too_long, "llm")] == ["running", "failed"], (
        "a request every replica would reject is not retried"
    )
    for events in (no_prompt, no_target):
        assert [(e.type, e.code) for e in events] == [("error", "bad_request")]
    assert "prompt" in (no_prompt[0].error or "")
    assert "target_language" in (no_target[0].error or "")
    assert stats["complete"].errors == 3
    assert stats["translate"].errors == 1


async def test_tasks_reusing_an_id_both_complete(pair: list[RunningEmulator]) -> None:
    async with running(specs(pair[:1], limit=1)) as orch:
        first, second = await asyncio.gather(
            collect(orch, complete_request(id="same")), collect(orch, complete_request(id="same"))
        )
    assert first[-1].type == second[-1].type == "done"
    assert first[-1].result == second[-1].result


async def test_ttft_requests_overtake_queued_e2e_requests(pair: list[RunningEmulator]) -> None:
    """Two replicas of 2 slots, 16 long summaries queued, then 8 completions.

    Round-robin serves in arrival order, so completions wait for ~4 rounds of
    summaries; CATO puts their earlier deadlines first, so they wait for the round in
    progress at most. The TTFT target sits between the two, ~2.5 lone summaries.
    """
    code = inspect.getsource(textwrap.dedent)
    async with running(specs(pair[:1])) as orch:
        lone = await collect(orch, summarize_request(code, 120))
    target_ms = 2.5 * (lone[-1].e2e_ms or 0.0)
    met = {}
    for scheduler in ("round_robin", "cato"):
        await idle(pair)
        met[scheduler] = await overload_run(pair, scheduler, code, target_ms)
    assert met["cato"] >= met["round_robin"] + 4, met


async def overload_run(
    emulators: Sequence[RunningEmulator], scheduler: str, code: str, target_ms: float
) -> int:
    """How many of 8 completions met their TTFT target behind 16 queued summaries."""
    ttft = SLA(metric=SLAMetric.TTFT, target_ms=target_ms)
    async with running(specs(emulators, limit=2), scheduler) as orch:
        summaries = [
            asyncio.create_task(collect(orch, summarize_request(code, 120))) for _ in range(16)
        ]
        await asyncio.sleep(0.1)
        completions = []
        for i in range(8):
            request = complete_request(f"def f{i}(x):\n    return", ttft, max_tokens=32)
            completions.append(asyncio.create_task(collect(orch, request)))
            await asyncio.sleep(0.02)
        done = [events[-1] for events in await asyncio.gather(*completions)]
        for task in summaries:
            task.cancel()  # their outcome is not what this measures
        await asyncio.gather(*summaries, return_exceptions=True)
    assert all(e.type == "done" for e in done)
    return sum(bool(e.sla_met) for e in done)


async def test_closing_the_stream_aborts_the_request_at_the_emulator(
    pair: list[RunningEmulator],
) -> None:
    emulator = pair[0]
    await idle([emulator])
    before = await scrape(emulator.url)
    code = inspect.getsource(textwrap.dedent)
    async with running(specs([emulator], limit=1)) as orch:
        stream = orch.submit(summarize_request(code, 3_000))
        seen = []
        async for event in stream:
            seen.append(event)
            if len(tokens_of(seen)) == 3:
                break
        assert orch.replica_load("r0") == (1, 0)
        await stream.aclose()
        assert orch.replica_load("r0") == (0, 0)

        async def aborted() -> bool:
            m = await scrape(emulator.url)
            return (
                m["cato_emulator_aborted_total"] == before["cato_emulator_aborted_total"] + 1
                and m["vllm:num_requests_running"] == 0
            )

        await eventually(aborted, "the emulator aborted the request")
        stats = orch.status().kinds["summarize"]
    assert (stats.cancelled, stats.requests) == (1, 0)
    assert "done" not in [e.type for e in seen]


async def test_cancelling_a_queued_request_never_reaches_a_replica(
    pair: list[RunningEmulator],
) -> None:
    emulator = pair[0]
    await idle([emulator])
    code = inspect.getsource(textwrap.dedent)
    async with running(specs([emulator], limit=1)) as orch:
        long = orch.submit(summarize_request(code, 3_000))
        assert (await anext(long)).type == "started"
        await load_is(orch, "r0", (1, 0))
        before = await scrape(emulator.url)

        queued_events: list[TaskEvent] = []

        async def consume() -> None:
            async for event in orch.submit(complete_request()):
                queued_events.append(event)

        consumer = asyncio.create_task(consume())
        await load_is(orch, "r0", (1, 1))
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        assert orch.replica_load("r0") == (1, 0)
        assert orch.status().queued == 0
        await long.aclose()
        assert orch.replica_load("r0") == (0, 0)
        await idle([emulator])
        after = await scrape(emulator.url)
        stats = orch.status().kinds["complete"]
    assert after["vllm:prompt_tokens_total"] == before["vllm:prompt_tokens_total"]
    assert [e.state for e in node_events(queued_events, "llm")] == []
    assert stats.cancelled == 1


# Rates far faster than the emulator: routing expects every call to meet its deadline.
OPTIMISTIC = Rates(overhead_s=0.001, prefill_s_per_token=1e-6, tpot_s=1e-4)


async def test_a_call_that_asked_to_be_shed_ends_at_its_deadline_wherever_it_is(
    pair: list[RunningEmulator],
) -> None:
    """``on_late="shed"`` holds past routing: a completion on time when routed but with
    no first token by its deadline ends then with ``sla_unreachable``, whether it is
    still queued (it never reaches the replica) or prefilling (the replica aborts it).
    Without opting in, the same request is answered late."""
    emulator = pair[0]
    await idle([emulator])
    spec = ReplicaSpec(id="r0", url=emulator.url, model=MODEL, concurrency_limit=1)
    spec.rates = OPTIMISTIC
    ttft = SLA(metric=SLAMetric.TTFT, target_ms=150)
    long_prompt = "x = 1\n" * 2_000  # ~3,000 tokens: about 0.6 s of prefill here
    shed = complete_request(long_prompt, ttft, max_tokens=4).model_copy(update={"on_late": "shed"})
    orch = Orchestrator([spec], defaults=DEFAULTS)
    try:
        before = await scrape(emulator.url)
        events = await collect(orch, shed)  # in flight, prefilling, at its deadline
        assert events[-1].type == "error" and events[-1].code == "sla_unreachable"
        assert "deadline" in (events[-1].error or "") and not tokens_of(events)

        async def aborted() -> bool:
            m = await scrape(emulator.url)
            return m["cato_emulator_aborted_total"] == before["cato_emulator_aborted_total"] + 1

        await eventually(aborted, "the emulator aborted the shed call")
        # It ran alone for its whole budget without a first token: the replica's prefill
        # rate learns that much (a lower bound), or it would route the next one as on
        # time too, and shed it, for ever.
        learned = orch._replicas["r0"].state.rates.prefill_s_per_token
        assert learned > 5 * OPTIMISTIC.prefill_s_per_token  # ~10x after one such call
        late = await collect(orch, shed.model_copy(update={"on_late": None, "id": "late"}))
        assert late[-1].type == "done" and late[-1].sla_met is False and tokens_of(late)

        # Queued behind a summary that routing expects to end at once: it never starts.
        code = inspect.getsource(textwrap.dedent)
        long = orch.submit(summarize_request(code, 3_000))
        assert (await anext(long)).type == "started"
        await load_is(orch, "r0", (1, 0))
        prompts = (await scrape(emulator.url))["vllm:prompt_tokens_total"]
        queued = complete_request(sla=ttft, max_tokens=4, id="queued")
        events = await collect(orch, queued.model_copy(update={"on_late": "shed"}))
        assert events[-1].code == "sla_unreachable" and not tokens_of(events)
        assert orch.replica_load("r0") == (1, 0)
        await long.aclose()
        await idle([emulator])
        assert (await scrape(emulator.url))["vllm:prompt_tokens_total"] == prompts
        outcomes = [r.outcome for r in orch.recorder.records()]
        assert outcomes == ["error", "ok", "error", "cancelled"]
    finally:
        await orch.close()


async def test_a_replica_refusing_connections_is_routed_around(
    pair: list[RunningEmulator],
) -> None:
    dead = ReplicaSpec(id="dead", url=f"http://127.0.0.1:{free_port()}", model=MODEL)
    live = ReplicaSpec(id="live", url=pair[0].url, model=MODEL)
    async with running([dead, live]) as orch:  # idle replicas tie: the first one is tried
        first = await collect(orch, complete_request())
        second = await collect(orch, complete_request())
    assert first[-1].type == second[-1].type == "done"
    assert [(e.state, e.replica) for e in node_events(first, "llm")] == [
        ("running", "dead"),
        ("running", "live"),
        ("finished", "live"),
    ]
    assert [(e.state, e.replica) for e in node_events(second, "llm")] == [
        ("running", "live"),
        ("finished", "live"),
    ], "a replica that failed is avoided afterwards"


async def test_a_replica_killed_mid_stream_fails_cleanly_and_retries_the_rest(
    start_emulator: StartEmulator,
) -> None:
    """On A (one engine slot, two orchestrator slots): a summary streaming, a completion
    waiting in the engine, a completion queued in the orchestrator. Kill -9 A."""
    doomed = start_emulator(model=MODEL, speed=SPEED, max_num_seqs=1, extra_args=FULL_LENGTH)
    spare = start_emulator(model=MODEL, speed=SPEED, extra_args=FULL_LENGTH)
    code = inspect.getsource(textwrap.dedent)
    async with running(specs([doomed], limit=2)) as orch:
        long = orch.submit(summarize_request(code, 3_000))
        long_events = []
        async for event in long:
            long_events.append(event)
            if event.type == "token":
                break
        in_engine = asyncio.create_task(collect(orch, complete_request(id="in-engine")))
        await load_is(orch, "r0", (2, 0))
        in_queue = asyncio.create_task(collect(orch, complete_request(id="in-queue")))
        await load_is(orch, "r0", (2, 1))
        orch.add_replica(ReplicaSpec(id="spare", url=spare.url, model=MODEL))

        doomed.proc.kill()
        long_events += await asyncio.wait_for(_rest(long), WAIT_S)
        retried, moved = await asyncio.wait_for(asyncio.gather(in_engine, in_queue), WAIT_S)
        status = orch.status()

    assert long_events[-1].type == "error" and long_events[-1].code == "replica_error"
    assert "r0" in (long_events[-1].error or "")
    assert [(e.state, e.replica) for e in node_events(long_events, "llm")][-1] == ("failed", "r0")
    assert tokens_of(long_events), "the failure came after tokens were streamed"

    assert retried[-1].type == "done"
    assert [(e.state, e.replica) for e in node_events(retried, "llm")] == [
        ("running", "r0"),
        ("running", "spare"),
        ("finished", "spare"),
    ]
    assert moved[-1].type == "done"
    assert [(e.state, e.replica) for e in node_events(moved, "llm")] == [
        ("running", "spare"),
        ("finished", "spare"),
    ], "calls queued on the failed replica move before trying it"
    assert status.kinds["summarize"].errors == 1
    assert status.kinds["complete"].requests == 2
    assert status.kinds["complete"].errors == 0


async def _rest(stream: AsyncIterator[TaskEvent]) -> list[TaskEvent]:
    return [event async for event in stream]


async def test_translate_chunks_cut_mid_stream_are_redone_elsewhere(
    start_emulator: StartEmulator,
) -> None:
    """Chunk outputs are not streamed to the user, so a chunk may restart elsewhere even
    after its replica sent tokens."""
    doomed = start_emulator(model=MODEL, speed=1.0, extra_args=FULL_LENGTH)
    spare = start_emulator(model=MODEL, speed=4 * SPEED, extra_args=FULL_LENGTH)
    request = TaskRequest(
        kind=TaskKind.TRANSLATE,
        code=inspect.getsource(colorsys),
        target_language="rust",
        model=MODEL,
        sla=LAX_E2E,
    )
    graph = graphs.build_graph(request, DEFAULTS)
    async with running(specs([doomed])) as orch:
        task = asyncio.create_task(collect(orch, request))
        await load_is(orch, "r0", (4, len(graph.llm_nodes()) - 4))

        async def generating() -> bool:
            return (await scrape(doomed.url))["vllm:generation_tokens_total"] >= 20

        await eventually(generating, "the chunks are generating")
        orch.add_replica(ReplicaSpec(id="spare", url=spare.url, model=MODEL))
        doomed.proc.kill()
        events = await asyncio.wait_for(task, WAIT_S)
    assert events[-1].type == "done", events[-1]
    assert events[-1].result == await expected_translation(spare.url, graph)
    moved = [
        n.id
        for n in graph.llm_nodes()
        if [(e.state, e.replica) for e in node_events(events, n.id)]
        == [("running", "r0"), ("running", "spare"), ("finished", "spare")]
    ]
    assert moved, "chunks cut on the killed replica were redone on the spare one"


async def test_calls_wait_for_a_starting_replica(pair: list[RunningEmulator]) -> None:
    async with running([]) as orch:
        orch.add_replica(ReplicaSpec(id="r0", url=pair[0].url, model=MODEL), ready=False)
        waiting = asyncio.create_task(collect(orch, complete_request()))

        async def parked() -> bool:
            return orch.status().queued == 1

        await eventually(parked, "the call waits for the replica")
        orch.set_lifecycle("r0", "ready")
        events = await waiting

        orch.set_lifecycle("r0", "pending")
        stuck = asyncio.create_task(collect(orch, complete_request()))
        await eventually(parked, "the call waits for the replica")
        orch.set_lifecycle("r0", "failed")
        failed = await stuck
    assert events[-1].type == "done"
    assert failed[-1].type == "error" and failed[-1].code == "no_replica"


async def test_calls_cancelled_after_their_deadline_count_as_violations(
    pair: list[RunningEmulator],
) -> None:
    """Algorithm 2 hears of a call the user gave up on once its deadline has passed
    (and not of one cancelled in time): the provisioner sees every miss. The clock is
    pushed past the deadline instead of waiting for it."""
    emulator = pair[0]
    await idle([emulator])
    code = inspect.getsource(textwrap.dedent)
    told: list[tuple[str, bool]] = []
    skew = [0.0]
    orch = Orchestrator(
        specs([emulator], limit=1), defaults=DEFAULTS, clock=lambda: time.monotonic() + skew[0]
    )
    orch.on_call_done = lambda call, violated, now: told.append((call.kind, violated))
    try:
        for late in (False, True):
            stream = orch.submit(summarize_request(code, 3_000, LAX_E2E))
            async for event in stream:
                if event.type == "token":
                    break
            assert told == []  # on time so far: nothing to tell yet
            skew[0] += 1_000.0 if late else 0.0
            await stream.aclose()
            assert told == ([("summarize", True)] if late else [])
    finally:
        await orch.close()
