"""Iteration-level timing model of one vLLM engine.

One ``step`` is one forward pass of a vLLM V1 engine with chunked prefill: running
sequences decode one token each, the rest of the token budget goes to prompt chunks,
new sequences are admitted while ``max_num_seqs`` and the KV cache allow, and sequences
are preempted (by recompute) when the KV cache runs out. The emulator (real time) and
the simulator (virtual clock) both drive this class, so live and simulated runs agree.

With ``prefix_caching`` (vLLM's ``--enable-prefix-caching``), full KV blocks of a
prompt are identified by a chained hash of their content (``block_hashes``): a block is
reused by any later request whose prompt starts with the same blocks while it is
resident, and blocks no sequence holds stay resident until the allocator needs them,
least recently freed first. A request's prefill computes only what the cache lacks.

The model is PURE: the caller passes ``now`` and arrivals in, advances its own clock by
``StepResult.duration_s`` and then delivers the outputs. Nothing here sleeps, reads a
clock or does I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import tomllib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Policy = Literal["fcfs", "priority"]
POLICIES: tuple[Policy, ...] = ("fcfs", "priority")

_WAITING, _RUNNING, _DONE = 0, 1, 2
# Characters per token of the prompts hashed by ``block_hashes`` (as ``count_tokens``).
CHARS_PER_TOKEN = 4


def block_hashes(text: str, block_size: int) -> tuple[int, ...]:
    """The chained hashes of ``text``'s full KV blocks, as vLLM keys its prefix cache.

    Block ``i`` covers ``block_size`` tokens (``CHARS_PER_TOKEN`` characters each) and
    its hash covers the hash of block ``i - 1`` too, so two prompts share block ``i``
    only if they agree on everything up to its end. A stable digest (not ``hash``),
    so runs and processes agree.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    span = block_size * CHARS_PER_TOKEN
    data = text.encode("utf-8", "surrogatepass")
    if len(data) != len(text):  # multi-byte characters: cut the text, then encode
        pieces = [
            text[i : i + span].encode("utf-8", "surrogatepass") for i in range(0, len(text), span)
        ]
    else:
        pieces = [data[i : i + span] for i in range(0, len(data), span)]
    found: list[int] = []
    parent = b""
    for piece in pieces[: len(text) // span]:
        parent = hashlib.blake2b(parent + piece, digest_size=8).digest()
        found.append(int.from_bytes(parent, "big"))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """Limits and step costs of one model on one accelerator, calibrated from public figures.

    Step time = ``step_overhead_s`` (weights read once per step, scheduling, sampling)
    + ``prefill_s_per_token`` per prompt token computed + ``decode_s_per_seq`` per
    decoding sequence + ``kv_read_s_per_token`` per context token attended. Times are
    seconds on the engine's own clock. ``cold_start_s`` is the time from process start
    to a ready server; the output length of a request (when the caller samples one) is
    lognormal with mean ``output_mean_tokens`` and shape ``output_sigma``.
    """

    name: str
    step_overhead_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    kv_read_s_per_token: float
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    num_kv_blocks: int
    max_model_len: int
    cold_start_s: float = 0.0
    output_mean_tokens: float = 128.0
    output_sigma: float = 0.8
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("step_overhead_s", "prefill_s_per_token", "decode_s_per_seq"):
            if getattr(self, name) < 0:
                raise ValueError(f"profile {self.name!r}: {name} must be >= 0")
        if self.kv_read_s_per_token < 0 or self.cold_start_s < 0:
            raise ValueError(f"profile {self.name!r}: times must be >= 0")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_kv_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"profile {self.name!r}: {name} must be >= 1")
        if self.max_model_len < 2:
            raise ValueError(f"profile {self.name!r}: max_model_len must be >= 2")
        if self.kv_capacity_tokens < self.max_model_len:
            raise ValueError(
                f"profile {self.name!r}: the KV cache ({self.kv_capacity_tokens} tokens) "
                f"cannot hold one sequence of max_model_len={self.max_model_len}"
            )
        if self.output_mean_tokens <= 0 or self.output_sigma < 0:
            raise ValueError(f"profile {self.name!r}: bad output length distribution")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    def step_time_s(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """Duration of one forward pass with this much work in the batch."""
        return (
            self.step_overhead_s
            + prefill_tokens * self.prefill_s_per_token
            + decode_seqs * self.decode_s_per_seq
            + context_tokens * self.kv_read_s_per_token
        )

    def with_overrides(self, **changes: Any) -> EngineProfile:
        """A copy with some fields changed (``None`` values are ignored), re-validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_PROFILE_FIELDS = {f.name for f in dataclasses.fields(EngineProfile)}


def profile_from_toml(text: str, origin: str = "<string>") -> EngineProfile:
    """Parse a profile from TOML text: flat keys named like ``EngineProfile`` fields."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: invalid TOML: {exc}") from exc
    unknown = sorted(set(data) - _PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"{origin}: unknown profile key(s): {', '.join(unknown)}")
    try:
        return EngineProfile(**data)
    except TypeError as exc:
        raise ValueError(f"{origin}: {exc}") from exc


@cache
def builtin_profiles() -> dict[str, EngineProfile]:
    """The profiles shipped in ``orchestrator/profiles/*.toml``, by name."""
    found: dict[str, EngineProfile] = {}
    folder = resources.files("orchestrator").joinpath("profiles")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            profile = profile_from_toml(entry.read_text(encoding="utf-8"), entry.name)
            found[profile.name] = profile
    return found


def sped_up(profile: EngineProfile, speed: float) -> EngineProfile:
    """The profile an emulator started with ``--speed`` runs: every step ``speed`` times
    shorter (replaying a live run against sped-up emulators needs this profile)."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    return profile.with_overrides(
        step_overhead_s=profile.step_overhead_s / speed,
        prefill_s_per_token=profile.prefill_s_per_token / speed,
        decode_s_per_seq=profile.decode_s_per_seq / speed,
        kv_read_s_per_token=profile.kv_read_s_per_token / speed,
    )


def load_profile(name_or_path: str) -> EngineProfile:
    """A built-in profile by name (``codellama-7b@a100``) or a profile TOML file by path."""
    known = builtin_profiles()
    if name_or_path in known:
        return known[name_or_path]
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read profile {name_or_path!r}: {exc}") from exc
        return profile_from_toml(text, name_or_path)
    raise ValueError(
        f"unknown engine profile {name_or_path!r}; known profiles: {', '.join(sorted(known))} "
        "(or give the path of a profile TOML file)"
    )


@dataclass(eq=False, slots=True)
class _Seq:
    seq_id: str
    prompt_tokens: int
    max_output_tokens: int
    key: tuple[int, float, int]  # waiting order; the largest running key is the victim
    output_tokens: int = 0
    computed_tokens: int = 0  # tokens whose KV is in the cache
    blocks: int = 0  # KV blocks the sequence uses, ``held`` ones included
    state: int = _WAITING
    preemptions: int = 0
    # Prefix caching: the prompt's block hashes, the cached blocks the sequence holds a
    # reference on (hits and the blocks it registered), and how many of ``hashes`` it
    # has looked at for registration.
    hashes: tuple[int, ...] = ()
    held: list[int] | None = None
    hashed: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(slots=True)
class TokenOutput:
    """What one sequence got from a step: its next token (this model yields one per step)."""

    seq_id: str
    new_tokens: int
    output_tokens: int
    first_token: bool
    finished: bool


@dataclass(slots=True)
class StepResult:
    """One forward pass: how long it takes and what it yields once it is over.

    From an engine made with ``every_token=False``, ``outputs`` holds only first tokens
    and finished sequences, and ``sampled`` the ids of every sequence that got a token,
    in the order ``outputs`` would have had them (``None`` otherwise).
    """

    duration_s: float
    outputs: list[TokenOutput] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_seqs: int = 0
    context_tokens: int = 0
    scheduled_seqs: int = 0
    sampled: list[str] | None = None


class EngineModel:
    """Waiting and running queues, a KV block pool and the vLLM V1 scheduling rules.

    ``policy="fcfs"`` serves in arrival order; ``"priority"`` serves lower ``priority``
    first, ties by arrival (vLLM's ``--scheduling-policy priority``). Preemption picks
    the running sequence that comes last in that order and sends it back to waiting,
    where it recomputes its prompt and the tokens it had generated.

    ``every_token=False`` is for a caller that streams nothing (the simulator): a step
    reports plain decode tokens by sequence id only (see ``StepResult.sampled``), and
    ``output_tokens`` tells their counts when it wants them.
    """

    def __init__(
        self,
        profile: EngineProfile,
        policy: Policy = "fcfs",
        *,
        every_token: bool = True,
        prefix_caching: bool = False,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; use one of {POLICIES}")
        self.profile = profile
        self.policy: Policy = policy
        self.every_token = every_token
        self._seqs: dict[str, _Seq] = {}
        self._running: dict[str, _Seq] = {}  # admission order
        self._waiting: list[tuple[tuple[int, float, int], _Seq]] = []  # heap, lazy deletes
        self._num_waiting = 0
        self._free_blocks = profile.num_kv_blocks
        self._order = itertools.count()
        self.busy_until = 0.0
        self.num_preemptions = 0
        self.num_steps = 0
        self.prefix_caching = prefix_caching
        # Resident cached blocks: hash -> sequences holding it (0: free, evictable, in
        # ``_evictable`` in the order they were freed, the oldest evicted first).
        self._refs: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self.prefix_cache_queries = 0  # prompt tokens looked up (vLLM's counter)
        self.prefix_cache_hits = 0  # of which found in the cache

    # -- read-only counters -------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, 0..1 (vLLM's ``kv_cache_usage_perc``)."""
        total = self.profile.num_kv_blocks
        return (total - self._free_blocks) / total

    @property
    def free_blocks(self) -> int:
        return self._free_blocks

    @property
    def cached_blocks(self) -> int:
        """Blocks whose content the prefix cache can hand out (held or evictable)."""
        return len(self._refs)

    def cached_prefix_tokens(self, hashes: Sequence[int]) -> int:
        """Tokens of a prompt with these block hashes the cache holds now."""
        refs = self._refs
        n = 0
        for h in hashes:
            if h not in refs:
                break
            n += 1
        return n * self.profile.block_size

    @property
    def idle(self) -> bool:
        return not self._seqs

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def output_tokens(self, seq_id: str) -> int:
        """Tokens a sequence still in the engine has generated so far."""
        return self._seqs[seq_id].output_tokens

    def __len__(self) -> int:
        return len(self._seqs)

    # -- requests -----------------------------------------------------------------------

    def add(
        self,
        seq_id: str,
        prompt_tokens: int,
        max_output_tokens: int,
        priority: int = 0,
        now: float = 0.0,
        block_hashes: Sequence[int] = (),
    ) -> None:
        """Queue a sequence that will generate exactly ``max_output_tokens`` tokens.

        ``block_hashes`` (see ``block_hashes``) name the prompt's full blocks for the
        prefix cache; ignored without ``prefix_caching``, and cut to the blocks the
        prompt fills.
        """
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} is already in the engine")
        if prompt_tokens < 1 or max_output_tokens < 1:
            raise ValueError("prompt_tokens and max_output_tokens must be >= 1")
        if prompt_tokens + max_output_tokens > self.profile.max_model_len:
            raise ValueError(
                f"{prompt_tokens} prompt + {max_output_tokens} output tokens exceed "
                f"max_model_len={self.profile.max_model_len}"
            )
        rank = priority if self.policy == "priority" else 0
        seq = _Seq(seq_id, prompt_tokens, max_output_tokens, (rank, now, next(self._order)))
        if block_hashes and self.prefix_caching:
            seq.hashes = tuple(block_hashes[: prompt_tokens // self.profile.block_size])
        self._seqs[seq_id] = seq
        self._push_waiting(seq)

    def abort(self, seq_id: str) -> bool:
        """Drop a sequence wherever it is and free its KV blocks; False if unknown."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return False
        if seq.state == _RUNNING:
            del self._running[seq_id]
            self._release(seq)
        else:
            self._num_waiting -= 1
            if len(self._waiting) > 64 and len(self._waiting) > 2 * self._num_waiting:
                self._compact_waiting()
        seq.state = _DONE
        return True

    # -- one forward pass ---------------------------------------------------------------

    def step(self, now: float) -> StepResult | None:
        """Schedule and cost one forward pass starting at ``now``; None when idle.

        The outputs become visible at ``now + duration_s``; call ``step`` again no
        earlier than that (``busy_until``).
        """
        if now < self.busy_until - 1e-9:
            raise ValueError(f"step at {now} while the previous step runs until {self.busy_until}")
        if not self._seqs:
            return None
        result = StepResult(duration_s=0.0)
        scheduled: dict[_Seq, int] = {}
        budget = self._schedule_running(scheduled, result.preempted)
        if not (result.preempted and scheduled):
            self._admit_waiting(scheduled, budget)
        if not scheduled:
            return None
        self._run_batch(scheduled, result)
        result.duration_s = self.profile.step_time_s(
            result.prefill_tokens, result.decode_seqs, result.context_tokens
        )
        self.busy_until = now + result.duration_s
        self.num_steps += 1
        return result

    def _schedule_running(self, scheduled: dict[_Seq, int], preempted: list[str]) -> int:
        """Decodes first (one token each), then chunks of unfinished prompts."""
        budget = self.profile.max_num_batched_tokens
        block_size = self.profile.block_size
        prefilling: list[_Seq] = []
        for seq in list(self._running.values()):
            if seq.state != _RUNNING:
                continue  # preempted earlier in this loop
            if seq.prompt_tokens + seq.output_tokens - seq.computed_tokens > 1:
                prefilling.append(seq)
            elif budget <= 0:
                continue
            elif seq.computed_tokens < seq.blocks * block_size:
                scheduled[seq] = 1  # the usual decode: its block has room for one more
                budget -= 1
            else:
                budget = self._schedule_one(seq, 1, budget, scheduled, preempted)
        for seq in prefilling:
            if budget <= 0:
                break
            if seq.state == _RUNNING:
                chunk = min(seq.num_tokens - seq.computed_tokens, budget)
                budget = self._schedule_one(seq, chunk, budget, scheduled, preempted)
        return budget

    def _schedule_one(
        self, seq: _Seq, tokens: int, budget: int, scheduled: dict[_Seq, int], preempted: list[str]
    ) -> int:
        """Give ``seq`` room for ``tokens`` more, preempting others when KV runs out."""
        needed = self._blocks_for(seq.computed_tokens + tokens) - seq.blocks
        while needed > self._free_blocks:
            victim = max(self._running.values(), key=lambda s: s.key)
            budget += scheduled.pop(victim, 0)
            self._preempt(victim)
            preempted.append(victim.seq_id)
            if victim is seq:
                return budget
        self._take(needed)
        seq.blocks += needed
        scheduled[seq] = tokens
        return budget - tokens

    def _admit_waiting(self, scheduled: dict[_Seq, int], budget: int) -> None:
        """Start waiting sequences in policy order while seats, tokens and KV allow."""
        while budget > 0 and len(self._running) < self.profile.max_num_seqs:
            seq = self._peek_waiting()
            if seq is None:
                return
            if seq.hashes:
                hit, revived = self._hits(seq)
                start = hit * self.profile.block_size
                chunk = min(seq.num_tokens - start, budget)
                needed = self._blocks_for(start + chunk) - hit
                if needed + revived > self._free_blocks:
                    return
                self._hold_hits(seq, hit)
                seq.computed_tokens = start
            else:
                hit = 0
                chunk = min(seq.num_tokens, budget)
                needed = self._blocks_for(chunk)
                if needed > self._free_blocks:
                    return
            if self.prefix_caching:
                self.prefix_cache_queries += seq.num_tokens
                self.prefix_cache_hits += hit * self.profile.block_size
            heapq.heappop(self._waiting)
            self._num_waiting -= 1
            seq.state = _RUNNING
            seq.blocks = hit + needed
            self._take(needed)
            self._running[seq.seq_id] = seq
            scheduled[seq] = chunk
            budget -= chunk

    def _run_batch(self, scheduled: dict[_Seq, int], result: StepResult) -> None:
        """Compute the scheduled tokens; a sequence whose KV is complete samples a token."""
        decodes = prefill = context = 0
        outputs = result.outputs
        sampled: list[str] | None = None if self.every_token else []
        for seq, tokens in scheduled.items():
            total = seq.prompt_tokens + seq.output_tokens
            computed = seq.computed_tokens + tokens
            seq.computed_tokens = computed
            context += computed
            if seq.hashes and seq.hashed < len(seq.hashes):
                self._register(seq)
            if tokens == 1 and seq.output_tokens > 0 and computed == total:
                decodes += 1
            else:
                prefill += tokens
            if computed < total:
                continue  # a prompt chunk that does not finish the prompt
            made = seq.output_tokens = seq.output_tokens + 1
            done = made >= seq.max_output_tokens
            if sampled is None or made == 1 or done:
                outputs.append(TokenOutput(seq.seq_id, 1, made, made == 1, done))
            if sampled is not None:
                sampled.append(seq.seq_id)
            if done:
                self._finish(seq)
        result.decode_seqs, result.prefill_tokens, result.context_tokens = decodes, prefill, context
        result.scheduled_seqs = len(scheduled)
        result.sampled = sampled

    # -- bookkeeping --------------------------------------------------------------------

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.profile.block_size)

    def _finish(self, seq: _Seq) -> None:
        del self._running[seq.seq_id]
        del self._seqs[seq.seq_id]
        self._release(seq)
        seq.state = _DONE

    def _preempt(self, seq: _Seq) -> None:
        del self._running[seq.seq_id]
        self._release(seq)
        seq.computed_tokens = 0
        seq.preemptions += 1
        self.num_preemptions += 1
        self._push_waiting(seq)

    # -- the prefix cache ---------------------------------------------------------------

    def _take(self, blocks: int) -> None:
        """Allocate ``blocks`` free blocks, evicting the oldest cached free ones if the
        never-cached free blocks run out."""
        self._free_blocks -= blocks
        evictable = self._evictable
        if len(evictable) > self._free_blocks:
            refs = self._refs
            while len(evictable) > self._free_blocks:
                del refs[evictable.popitem(last=False)[0]]

    def _hits(self, seq: _Seq) -> tuple[int, int]:
        """(leading prompt blocks the cache holds, how many of them are free now). At
        least the prompt's last token is computed, as vLLM does, to sample from it."""
        refs = self._refs
        hashes = seq.hashes
        limit = min(len(hashes), (seq.num_tokens - 1) // self.profile.block_size)
        hit = revived = 0
        while hit < limit:
            count = refs.get(hashes[hit])
            if count is None:
                break
            hit += 1
            if count == 0:
                revived += 1
        return hit, revived

    def _hold_hits(self, seq: _Seq, hit: int) -> None:
        """Take a reference on the first ``hit`` blocks of ``seq``'s prompt."""
        refs = self._refs
        held = seq.held = list(seq.hashes[:hit])
        for h in held:
            count = refs[h]
            if count == 0:
                del self._evictable[h]
                self._free_blocks -= 1
            refs[h] = count + 1
        seq.hashed = hit

    def _register(self, seq: _Seq) -> None:
        """Offer the prompt blocks ``seq`` has filled to the cache. A block another
        sequence cached meanwhile stays private (vLLM keeps such duplicates too)."""
        full = min(seq.computed_tokens // self.profile.block_size, len(seq.hashes))
        if full <= seq.hashed:
            return
        refs = self._refs
        held = seq.held
        if held is None:
            held = seq.held = []
        for h in seq.hashes[seq.hashed : full]:
            if h not in refs:
                refs[h] = 1
                held.append(h)
        seq.hashed = full

    def _release(self, seq: _Seq) -> None:
        """Free ``seq``'s blocks; cached ones stay resident while nothing needs them,
        its last blocks first in line for eviction (freed in reverse, as vLLM does)."""
        held = seq.held
        if held:
            refs = self._refs
            evictable = self._evictable
            freed = seq.blocks - len(held)
            for h in reversed(held):
                count = refs[h] - 1
                refs[h] = count
                if count == 0:
                    evictable[h] = None
                    freed += 1
            self._free_blocks += freed
            seq.held = None
        else:
            self._free_blocks += seq.blocks
        seq.blocks = 0
        seq.hashed = 0

    def _push_waiting(self, seq: _Seq) -> None:
        seq.state = _WAITING
        heapq.heappush(self._waiting, (seq.key, seq))
        self._num_waiting += 1

    def _peek_waiting(self) -> _Seq | None:
        while self._waiting:
            seq = self._waiting[0][1]
            if seq.state == _WAITING and self._seqs.get(seq.seq_id) is seq:
                return seq
            heapq.heappop(self._waiting)  # aborted while waiting
        return None

    def _compact_waiting(self) -> None:
        self._waiting = [
            (key, seq)
            for key, seq in self._waiting
            if seq.state == _WAITING and self._seqs.get(seq.seq_id) is seq
        ]
        heapq.heapify(self._waiting)
