"""Discrete-event simulation of the orchestrator over ``EngineModel`` replicas.

The simulator plays the executor and the replica manager on a virtual clock: each task
becomes the graph ``build_graph`` gives it, its nodes get the profiler's slack deadlines,
each ``llm`` node becomes a ``Call`` that the SAME scheduler object routes and picks, and
each dispatched call runs as a sequence in its replica's ``EngineModel`` (one engine per
replica, stepped one forward pass at a time). Calls are placed, queued, started and
released by the executor's own dispatch core (``orchestrator.dispatch``), with the
engine in place of the HTTP stream. The SAME provisioner object decides every
``interval_s``; new replicas hold their GPUs while they cold-start and drained replicas
finish their calls before they stop. Runs are deterministic for a given seed.

Where the simulation is coarser than a live run (stated so results are read right):

* policy state hears of tokens at a call's first token, at its end and at least every
  ``sync_s`` (live: every streamed token); first tokens and finishes are exact;
* the profiler learns from every finished node, but a graph's deadlines are recomputed
  from it at most every ``profiler_refresh_s``;
* local nodes (``context``, ``split``, ``assemble``, ``validate``) take ``local_s``
  (zero by default), and there is no network latency.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from orchestrator.api import SLA_UNREACHABLE
from orchestrator.dispatch import DispatchCore, DispatchError
from orchestrator.engine_model import StepResult, TokenOutput
from orchestrator.metrics import (
    Outcome,
    UtilizationTracker,
    kind_stats,
)
from orchestrator.policy.admission import make_admission, resolve_admission
from orchestrator.policy.provisioner import (
    ClusterView,
    ModelView,
    ScaleDecision,
    make_provisioner,
)
from orchestrator.policy.scheduler import KIND_PRIORITY
from orchestrator.policy.state import Call, PrefixIndex, Rates, ReplicaState
from orchestrator.profiler import Profiler
from orchestrator.sim.clairvoyant import is_clairvoyant, make_sim_scheduler
from orchestrator.sim.config import ModelSpec, OutputModel, SimConfig, SimTask
from orchestrator.sim.engine import DecodeRun, FusedEngine
from orchestrator.sim.entities import (
    DRAINING,
    PENDING,
    READY,
    STOPPED,
    CallRun,
    SimModel,
    SimReplica,
    TaskState,
    replica_view,
    snapshot,
)
from orchestrator.sim.results import RecordStore, ScaleEvent, SimResult
from orchestrator.sim.templates import Template, Templates

__all__ = ["ModelSpec", "OutputModel", "SimConfig", "SimTask", "Simulator", "simulate"]

# Heap entries are (time, phase, order, kind, payload): at equal times, engine steps
# (phase 1) start after everything else (phase 0), so calls dispatched at ``t`` join the
# forward pass that starts at ``t``, as continuous batching does.
_EVENT, _STEP = 0, 1
_ARRIVAL, _STEP_START, _STEP_END, _READY, _TICK, _LOCAL_DONE, _EXPIRE = range(7)


class Simulator:
    """One run of a ``SimConfig`` over a stream of arrivals (single use)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.scheduler = make_sim_scheduler(
            config.scheduler,
            seed=config.seed,
            profiles={m.name: m.profile for m in config.models},
            **config.scheduler_options,
        )
        self.clairvoyant = is_clairvoyant(self.scheduler)
        self.admission = resolve_admission(config.admission, self.scheduler.name)
        admission = (
            make_admission(
                self.admission,
                profiles={m.name: m.profile for m in config.models},
                margin_s=config.admission_margin_s,
                **config.admission_options,
            )
            if self.admission != "none"
            else None
        )
        self.core = DispatchCore(
            self.scheduler,
            on_start=self._on_start,
            on_fail=self._on_fail,
            on_batch=self._on_batch,
            admission=admission,
            on_outcome=self._on_outcome,
        )
        self.provisioner = make_provisioner(config.provisioner, config.provisioner_config)
        priors = {m.name: m.rates or Rates.from_profile(m.profile) for m in config.models}
        self.profiler = Profiler(dict(priors))
        self._priors = priors
        self.tracker = UtilizationTracker()
        self.models = {m.name: SimModel(m) for m in config.models}
        self.replicas: dict[str, SimReplica] = {}
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._order = itertools.count()
        self._templates = Templates(
            config, {m.name: m.profile for m in config.models}, self.profiler
        )
        self._runs: dict[str, CallRun] = {}
        self._live: dict[int, TaskState] = {}
        self._task_ids = itertools.count()
        self._store = RecordStore()
        self._scale_events: list[ScaleEvent] = []
        self._free_gpus = config.total_gpus
        self._counters = {
            "tasks": 0,
            "calls": 0,
            "steps": 0,
            "fused_runs": 0,
            "events": 0,
            "rerouted": 0,
            "shed": 0,
        }
        self._ran = False
        self._cpu_s = 0.0
        # Read at every engine step or task: kept at hand.
        self._sync_s = config.sync_s
        self._max_fused = config.max_fused_steps if config.fuse_decode else 0
        self._refresh_s = config.profiler_refresh_s
        self._local_s = config.local_s
        self._send_priority = config.send_priority
        self._kind_priority = config.kind_priority
        self._sync_always = admission is not None

    # -- the event loop -----------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: Any, phase: int = _EVENT) -> None:
        heapq.heappush(self._heap, (t, phase, next(self._order), kind, payload))

    def run(
        self,
        arrivals: Iterable[tuple[float, SimTask]],
        *,
        progress: Callable[[int], None] | None = None,
        progress_every: int = 1000,
    ) -> SimResult:
        """Simulate until every task is done (or ``drain_s`` after the last arrival).

        ``progress`` is told how many tasks arrived, every ``progress_every`` arrivals.
        """
        if self._ran:
            raise RuntimeError("a Simulator runs once; build a new one")
        self._ran = True
        wall = time.perf_counter()
        cpu = time.process_time()
        for model in self.models.values():
            for _ in range(model.spec.replicas):
                self._ready(self._add_replica(model, 0.0), 0.0)
            snapshot(model, 0.0)
        interval = self.config.provisioner_config.interval_s
        self._push(interval, _TICK, None)
        source = iter(arrivals)
        pending = next(source, None)
        if pending is not None:
            self._push(pending[0], _ARRIVAL, pending[1])
        last_arrival = pending[0] if pending is not None else 0.0
        hard_end = math.inf
        arrived = 0
        heap = self._heap
        pop, push = heapq.heappop, heapq.heappush
        order = self._order
        while heap:
            t, _, _, kind, payload = pop(heap)
            if t > hard_end:
                self.now = hard_end
                break
            self.now = t
            if kind == _STEP_END:
                rep = payload[0]
                if self._step_end(rep, payload[1], payload[2], t):
                    if (heap and heap[0][0] <= t) or (pending is None and not self._live):
                        push(heap, (t, _STEP, next(order), _STEP_START, rep))
                    else:  # it would be the next event: take it now (and its number)
                        next(order)
                        self._step_start(rep, t)
            elif kind == _ARRIVAL:
                self._arrive(payload, t)
                arrived += 1
                if progress is not None and arrived % progress_every == 0:
                    progress(arrived)
                pending = next(source, None)
                if pending is None:
                    hard_end = t + self.config.drain_s
                else:
                    if pending[0] < t:
                        raise ValueError(f"arrivals out of order: {pending[0]} after {t}")
                    last_arrival = pending[0]
                    push(heap, (last_arrival, _EVENT, next(order), _ARRIVAL, pending[1]))
            elif kind == _STEP_START:
                self._step_start(payload, t)
            elif kind == _TICK:
                self._tick(t)
                self._push(t + interval, _TICK, None)
            elif kind == _READY:
                self._ready(payload, t)
            elif kind == _EXPIRE:
                self._expire(payload, t)
            else:
                self._local_done(payload[0], payload[1], t, payload[2])
            if pending is None and not self._live:
                break
        if progress is not None:
            progress(arrived)
        self._counters["events"] = next(self._order)
        self._cpu_s = time.process_time() - cpu
        return self._result(last_arrival, time.perf_counter() - wall)

    # -- tasks --------------------------------------------------------------------------

    def _deadline_offsets(self, tpl: Template, now: float) -> list[float]:
        if now - tpl.offsets_at >= self._refresh_s or not tpl.offsets:
            tpl.offsets = self.profiler.deadline_list(tpl.plan, 0.0)
            tpl.offsets_at = now
        return tpl.offsets

    def _arrive(self, sim_task: SimTask, now: float) -> None:
        tpl = self._templates.cache.get(sim_task.key)
        if tpl is None:
            tpl = self._templates.get(sim_task)
        task = TaskState(next(self._task_ids), tpl, now)
        self._counters["tasks"] += 1
        self._live[task.id] = task
        if tpl.error is not None:
            self._fail(task, now)
            return
        offsets = tpl.offsets
        if now - tpl.offsets_at >= self._refresh_s or not offsets:
            offsets = self._deadline_offsets(tpl, now)
        task.deadlines = [now + o for o in offsets]
        for i in tpl.roots:
            self._start_node(task, i, now)

    def _start_node(self, task: TaskState, index: int, now: float) -> None:
        node = task.tpl.nodes[index]
        if node.op == "llm":
            self._start_call(task, index, now)
            return
        duration = self._local_s.get(node.op, 0.0)
        if duration > 0:
            self._push(now + duration, _LOCAL_DONE, (task, index, duration))
        else:
            self._local_done(task, index, now, 0.0)

    def _local_done(self, task: TaskState, index: int, now: float, duration: float) -> None:
        if task.failed:
            return
        self.profiler.observe_planned(task.tpl.plan, index, duration)
        self._node_done(task, index, now)

    def _node_done(self, task: TaskState, index: int, now: float) -> None:
        tpl = task.tpl
        if tpl.final[index] and task.first_token is None:
            task.first_token = now
        task.left -= 1
        if task.left == 0:
            self._record(task, now, "ok")
            return
        waiting = task.waiting
        for nxt in tpl.succ[index]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                self._start_node(task, nxt, now)

    def _fail(self, task: TaskState, now: float) -> None:
        if not task.failed:
            task.failed = True
            self._record(task, now, "error")

    def _record(self, task: TaskState, now: float, outcome: Outcome) -> None:
        tpl = task.tpl
        del self._live[task.id]
        self._store.add(
            tpl.kind,
            tpl.ttft_metric,
            tpl.target_ms,
            task.arrival,
            task.first_token,
            now,
            outcome,
        )

    # -- calls --------------------------------------------------------------------------

    def _start_call(self, task: TaskState, index: int, now: float) -> None:
        tpl = task.tpl
        node = tpl.nodes[index]
        out = tpl.outputs[index]
        call = Call(
            id=f"{task.id}:{node.id}",
            model=tpl.model,
            deadline=task.deadlines[index],
            prompt_tokens=node.prompt_tokens,
            expected_output_tokens=out if self.clairvoyant else node.expected_output_tokens,
            arrival=now,
            metric=node.metric,
            task_id=str(task.id),
            kind=tpl.kind,
            shed_late=tpl.shed_late,
            block_hashes=tpl.hashes[index],
        )
        self._counters["calls"] += 1
        self._runs[call.id] = CallRun(task, index, out, call)
        try:
            self.core.place(call, now)
        except DispatchError as exc:
            self._on_fail(call, exc)
            return
        if call.shed_late:
            self._push(call.deadline, _EXPIRE, call)

    def _expire(self, call: Call, now: float) -> None:
        """The executor's ``on_late="shed"`` past routing: a call that has not reached its
        SLA point by its deadline ends there, wherever it is; its engine drops it when
        the step under way ends (as vLLM aborts between steps)."""
        run = self._runs.get(call.id)
        if run is None or run.call is not call:
            return  # over already
        if call.metric == "ttft" and call.first_token_at is not None:
            return
        rep = self.replicas.get(call.replica or "")
        in_engine = rep is not None and call.id in rep.state.in_flight
        del self._runs[call.id]
        self.core.release(call, now, queued_only=True)  # off its queue, else out of flight
        self.core.ended(call, now, finished=False)
        if in_engine:
            assert rep is not None
            st = rep.state
            st.observe_unanswered(call, now)
            self.tracker.running(rep.id, len(st.in_flight), st.concurrency_limit, now)
            rep.aborting.add(call.id)
            if rep.run is not None:
                self._cut_run(rep, rep.run, now)
            if rep.phase == DRAINING and not st.in_flight:
                self._stop(rep, now)
        if not run.task.failed:
            self._counters["shed"] += 1
            self._counters["expired"] = self._counters.get("expired", 0) + 1
        self._fail(run.task, now)

    def _on_fail(self, call: Call, exc: DispatchError) -> None:
        """No replica of the call's model is ready or starting, or the call was shed
        (late, and its request asked to end rather than answer late): its task ends
        as an error, which never meets its SLA; shed tasks are counted apart."""
        run = self._runs.pop(call.id)
        self.core.ended(call, self.now, finished=False)
        if exc.code == SLA_UNREACHABLE and not run.task.failed:
            self._counters["shed"] += 1
        self._fail(run.task, self.now)

    def _on_outcome(self, call: Call, violated: bool, now: float) -> None:
        self.provisioner.observe_task(call.model, violated, now)

    def _on_start(self, call: Call, st: ReplicaState, now: float) -> None:
        """The core started ``call`` on ``st``: it joins that replica's engine."""
        if st.prefixes is not None:
            # what the router's index expected the engine to hold, to set beside the
            # engine's own ``prefix_cache_hits`` (the index cannot see evictions)
            held = self._counters.get("prefix_index_hits", 0) + call.cached_tokens
            self._counters["prefix_index_hits"] = held
        priority = call.priority if self._send_priority else 0
        if self._kind_priority:
            priority = KIND_PRIORITY.get(call.kind, 0)
        self.replicas[st.id].engine.add(
            call.id, call.prompt_tokens, self._runs[call.id].out, priority, now, call.block_hashes
        )

    def _on_batch(self, st: ReplicaState, now: float) -> None:
        """Calls joined ``st``'s engine: they join the first step that starts at ``now``."""
        rep = self.replicas[st.id]
        self.tracker.running(rep.id, len(st.in_flight), st.concurrency_limit, now)
        if not rep.stepping:
            rep.stepping = True
            self._push(now, _STEP_START, rep, _STEP)
        elif rep.run is not None:
            self._cut_run(rep, rep.run, now)

    def _cut_run(self, rep: SimReplica, run: DecodeRun, now: float) -> None:
        """New work joins the first step that starts at or after ``now``."""
        steps = run.steps_before(now)
        if steps < run.steps:
            rep.run = run.cut(steps)
            rep.version += 1
            self._push(run.end(steps), _STEP_END, (rep, None, rep.version))

    def _step_start(self, rep: SimReplica, now: float) -> None:
        engine = rep.engine
        if self._max_fused:
            run = engine.decode_run(now, self._max_fused)
            if run is not None:
                # Token counts only move the wait estimate of a full replica (or one
                # with a queue), and what admission predicts: then end the run in time
                # for the next sync.
                st = rep.state
                if (
                    self._sync_always
                    or len(st.in_flight) >= st.concurrency_limit
                    or len(st.queue) > 0
                ):
                    run = run.cut(max(run.steps_before(now + self._sync_s), 2))
                rep.run = run
                version = rep.version = rep.version + 1
                self._counters["fused_runs"] += 1
                entry: tuple[float, int, int, int, Any] = (
                    run.end(run.steps),
                    _EVENT,
                    next(self._order),
                    _STEP_END,
                    (rep, None, version),
                )
                heapq.heappush(self._heap, entry)
                return
        result = engine.step(now)
        if result is None:
            rep.stepping = False
            return
        self._counters["steps"] += 1
        entry = (engine.busy_until, _EVENT, next(self._order), _STEP_END, (rep, result, 0))
        heapq.heappush(self._heap, entry)

    def _step_end(
        self, rep: SimReplica, result: StepResult | None, version: int, now: float
    ) -> bool:
        """Deliver a step's outputs; whether the replica's next step starts at ``now``."""
        fused = rep.run
        if result is None and (version != rep.version or fused is None):
            return False  # a run cut short since: its new end is another event
        st = rep.state
        model = rep.model
        in_flight = st.in_flight
        sync = (
            self._sync_always or len(in_flight) >= st.concurrency_limit or len(st.queue) > 0
        ) and (
            now - model.synced_at.get(rep.id, -math.inf) >= self._sync_s
        )  # a full replica (or one with a queue) whose last sync is ``sync_s`` old
        if result is None:
            assert fused is not None
            rep.run = None
            # Without a sync only the calls that finish have news (no first tokens here).
            result = rep.engine.apply_run(fused, fused.steps, finished_only=not sync)
            self._counters["steps"] += fused.steps
        outputs = result.outputs
        if sync and result.sampled is not None:
            # The step reported plain decode tokens by id: a sync wants them all, in order
            # (their counts have not moved since the step began).
            shown = {out.seq_id: out for out in outputs}
            count = rep.engine.output_tokens
            outputs = [
                shown.get(seq_id) or TokenOutput(seq_id, 1, count(seq_id), False, False)
                for seq_id in result.sampled
            ]
        aborting = rep.aborting
        if aborting:  # calls ended at their deadline while this step ran: drop them
            outputs = [out for out in outputs if out.seq_id not in aborting]
            for seq_id in aborting:
                rep.engine.abort(seq_id)
            aborting.clear()
        for out in outputs:
            if out.first_token:
                self.core.first_token(st, out.seq_id, now)
                owner = self._runs[out.seq_id]
                task = owner.task
                if task.first_token is None and task.tpl.final[owner.node]:
                    task.first_token = now
            if out.finished:
                self._finish_call(rep, self._runs.pop(out.seq_id), out.output_tokens, now)
            elif sync:
                call = in_flight[out.seq_id]
                if out.output_tokens > call.tokens_done:
                    st.tokens(out.seq_id, out.output_tokens - call.tokens_done)
        if sync:
            model.synced_at[rep.id] = now
        return True

    def _finish_call(self, rep: SimReplica, run: CallRun, produced: int, now: float) -> None:
        """The executor's order: rates, release (and dispatch), provisioner, profiler."""
        call = run.call
        st = rep.state
        started = call.started_at if call.started_at is not None else now
        first = call.first_token_at if call.first_token_at is not None else now
        # ``tokens``, ``observe`` and ``finish`` of the executor, with the one refresh
        # of the replica's wait estimate (in ``finish``) that the end state needs.
        st.rates.observe_call(call, started, first, now, produced)
        if not self.core.finish(st, call.id, now, produced):  # else it told the tracker
            self.tracker.running(rep.id, len(st.in_flight), st.concurrency_limit, now)
        reached = first if call.metric == "ttft" else now
        self.core.ended(call, now, finished=True)
        task = run.task
        self.profiler.observe_planned(task.tpl.plan, run.node, max(reached - started, 0.0))
        if rep.phase == DRAINING and not st.in_flight:
            self._stop(rep, now)
        if not task.failed:
            self._node_done(task, run.node, now)

    # -- replicas and autoscaling -------------------------------------------------------

    def _add_replica(self, model: SimModel, now: float) -> SimReplica:
        spec = model.spec
        rid = f"{spec.name}-{next(model.count)}"
        prior = self._priors[spec.name]
        state = ReplicaState(
            id=rid,
            model=spec.name,
            concurrency_limit=spec.limit,
            rates=Rates(prior.overhead_s, prior.prefill_s_per_token, prior.tpot_s, prior.alpha),
            accepting=False,
            idle_since=None,
        )
        if spec.prefix_caching and self.scheduler.tracks_prefixes:
            state.prefixes = PrefixIndex(spec.profile.block_size, spec.profile.num_kv_blocks)
        engine = FusedEngine(
            spec.profile,
            self.config.engine_policy,
            every_token=False,
            prefix_caching=spec.prefix_caching,
        )
        rep = SimReplica(rid, model, state, engine, now)
        self.replicas[rid] = rep
        model.replicas.append(rep)
        self._free_gpus -= spec.gpus_per_replica
        self.tracker.replica_state(rid, True, now)
        self.core.add(state, now, starting=True)
        return rep

    def _ready(self, rep: SimReplica, now: float) -> None:
        if rep.phase != PENDING:
            return  # removed while it was starting
        rep.phase = READY
        rep.ready_at = now
        self.core.set_phase(rep.id, now, accepting=True, starting=False)
        snapshot(rep.model, now)

    def _drain(self, rep: SimReplica, now: float) -> None:
        if rep.phase == PENDING:
            self._stop(rep, now)
            return
        if rep.phase != READY:
            return
        rep.phase = DRAINING
        self.core.set_phase(rep.id, now, accepting=False, starting=False)  # queue moves
        if not rep.state.in_flight:
            self._stop(rep, now)

    def _stop(self, rep: SimReplica, now: float) -> None:
        rep.phase = STOPPED
        model = rep.model
        model.replicas.remove(rep)
        self._free_gpus += model.spec.gpus_per_replica
        self.tracker.replica_state(rep.id, False, now)
        snapshot(model, now)
        self.core.remove(rep.id, now)  # parked calls fail if nothing else starts

    def cluster_view(self, now: float) -> ClusterView:
        """The provisioner's view, as the runtime builds it (draining replicas left out)."""
        views = []
        for model in self.models.values():
            spec = model.spec
            replicas = [replica_view(r) for r in model.replicas if r.phase != DRAINING]
            views.append(
                ModelView(
                    name=spec.name,
                    replicas=tuple(replicas),
                    gpus_per_replica=spec.gpus_per_replica,
                    min_replicas=spec.floor,
                    max_replicas=spec.ceiling,
                )
            )
        return ClusterView(models=tuple(views), free_gpus=max(self._free_gpus, 0))

    def _tick(self, now: float) -> None:
        for decision in self.provisioner.decide(self.cluster_view(now), now):
            if not decision.empty:
                self._apply(decision, now)

    def _apply(self, decision: ScaleDecision, now: float) -> None:
        model = self.models.get(decision.model)
        if model is None:
            return
        before = sum(1 for r in model.replicas if r.phase != DRAINING)
        cold = model.spec.profile.cold_start_s
        for _ in range(decision.add):
            rep = self._add_replica(model, now)
            if cold > 0:
                self._push(now + cold, _READY, rep)
            else:
                self._ready(rep, now)
        for rid in decision.remove:
            rep_to_drain = self.replicas.get(rid)
            if rep_to_drain is not None and rep_to_drain.model is model:
                self._drain(rep_to_drain, now)
        snapshot(model, now)
        after = sum(1 for r in model.replicas if r.phase != DRAINING)
        self._scale_events.append(ScaleEvent(now, model.spec.name, before, after, decision.reason))

    # -- the result ---------------------------------------------------------------------

    def _result(self, last_arrival: float, wall_s: float) -> SimResult:
        end = self.now
        for task in list(self._live.values()):
            self._fail(task, end)
        self._runs.clear()
        for model in self.models.values():
            snapshot(model, end)
        util = self.tracker.summary(end)
        self._counters["rerouted"] = self.core.rerouted
        if self.core.admission is not None:
            self._counters["moved"] = self.core.moved
        self._counters["preemptions"] = sum(
            r.engine.num_preemptions for r in self.replicas.values()
        )
        if any(m.spec.prefix_caching for m in self.models.values()):
            engines = [r.engine for r in self.replicas.values()]
            self._counters["prefix_cache_queries"] = sum(e.prefix_cache_queries for e in engines)
            self._counters["prefix_cache_hits"] = sum(e.prefix_cache_hits for e in engines)
        per_model: dict[str, float] = {m: 0.0 for m in self.models}
        for rid, u in util.replicas.items():
            per_model[self.replicas[rid].model.spec.name] += u.provisioned_s
        warm = self.config.warmup_s
        return SimResult(
            scheduler=self.scheduler.name,
            provisioner=self.provisioner.name,
            seed=self.config.seed,
            kinds={k: kind_stats(self._store.records(warm, k)) for k in self._store.kinds},
            overall=kind_stats(self._store.records(warm)),
            utilization=util,
            start=0.0,
            end=end,
            last_arrival=last_arrival,
            replica_series={m.spec.name: list(m.series) for m in self.models.values()},
            scale_events=list(self._scale_events),
            counters=dict(self._counters),
            wall_s=wall_s,
            cpu_s=self._cpu_s,
            replica_seconds=per_model,
            store=self._store,
            warmup_s=warm,
        )


def simulate(
    config: SimConfig,
    arrivals: Iterable[tuple[float, SimTask]],
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Run ``config`` over ``arrivals`` ((time, task) pairs in time order)."""
    return Simulator(config).run(arrivals, progress=progress)
