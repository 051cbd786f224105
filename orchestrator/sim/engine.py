"""``EngineModel`` with fused decode runs: many identical steps computed at once.

Most forward passes of a busy engine are pure decode: every running sequence adds one
token, nothing is prefilled or admitted. Until a sequence finishes, a new one arrives,
or the KV cache runs short, these steps follow a closed form (the context grows by the
batch size each step), so the simulator can jump over them in O(batch) instead of
O(batch x steps). ``decode_run`` says whether the next steps are such a stretch and how
long it may last; ``apply_run`` performs the first ``m`` of them with exactly the state
changes ``m`` calls to ``step`` would make. Everything else is ``EngineModel.step``.
"""

from __future__ import annotations

import math

from orchestrator.engine_model import EngineModel, StepResult, TokenOutput


class DecodeRun:
    """``steps`` pure decode steps of ``batch`` sequences from ``start``.

    Step ``j`` (0-based) lasts ``base + slope * (j + 1)``: the fixed costs plus the
    context, which grows by one token per sequence per step. Not to be changed once
    made (a plain class, not a frozen dataclass: one is made per engine step or two).
    """

    __slots__ = ("base", "batch", "context", "slope", "start", "steps")

    def __init__(
        self, start: float, batch: int, base: float, slope: float, context: int, steps: int
    ) -> None:
        self.start = start
        self.batch = batch
        self.base = base
        self.slope = slope
        self.context = context
        self.steps = steps

    def __repr__(self) -> str:
        return (
            f"DecodeRun(start={self.start}, batch={self.batch}, base={self.base}, "
            f"slope={self.slope}, context={self.context}, steps={self.steps})"
        )

    def cut(self, steps: int) -> DecodeRun:
        """The same run, ending after ``steps`` steps."""
        return DecodeRun(self.start, self.batch, self.base, self.slope, self.context, steps)

    def end(self, m: int) -> float:
        """When the first ``m`` steps are over."""
        return self.start + m * self.base + self.slope * m * (m + 1) / 2

    def steps_before(self, t: float) -> int:
        """The number of steps that start before ``t`` (a call added at ``t`` joins the
        step after them), at most ``steps``."""
        if t <= self.start:
            return 0
        a, b = self.slope / 2, self.base + self.slope / 2
        span = t - self.start
        guess = span / b if a == 0 else (-b + math.sqrt(b * b + 4 * a * span)) / (2 * a)
        m = min(max(math.ceil(guess) - 1, 0), self.steps)
        while m > 0 and self.end(m) >= t:
            m -= 1
        while m < self.steps and self.end(m) < t:
            m += 1
        return m


class FusedEngine(EngineModel):
    """An ``EngineModel`` whose pure decode stretches can be run in one go."""

    def decode_run(self, now: float, max_steps: int) -> DecodeRun | None:
        """The pure decode steps that come next (at least 2, at most ``max_steps``)."""
        running = self._running
        batch = len(running)
        profile = self.profile
        if batch == 0 or batch > profile.max_num_batched_tokens or max_steps < 2:
            return None
        newest = next(reversed(running.values()))
        if newest.prompt_tokens + newest.output_tokens - newest.computed_tokens != 1:
            return None  # the newest sequence is still prefilling: a mixed step
        if self._num_waiting and self._admissible(batch):
            return None  # the next step admits a sequence (the usual miss: checked first)
        steps = max_steps
        context = 0
        for seq in running.values():
            out = seq.output_tokens
            computed = seq.computed_tokens
            if seq.prompt_tokens + out - computed != 1 or out == 0:
                return None
            left = seq.max_output_tokens - out
            if left < steps:
                steps = left
            context += computed
        if steps < 2:
            return None
        if batch * (steps // profile.block_size + 1) > self._free_blocks:
            steps = self._kv_limit(steps)
            if steps < 2:
                return None
        base = (
            profile.step_overhead_s
            + batch * profile.decode_s_per_seq
            + context * profile.kv_read_s_per_token
        )
        slope = batch * profile.kv_read_s_per_token
        return DecodeRun(now, batch, base, slope, context, steps)

    def _first_new_blocks(self) -> list[int]:
        """For each running sequence, the step (0-based) at which it needs a new block."""
        block = self.profile.block_size
        return [-seq.computed_tokens % block for seq in self._running.values()]

    def _admissible(self, batch: int) -> bool:
        """Whether the first step would admit a waiting sequence (then it is not pure)."""
        if batch >= self.profile.max_num_seqs:
            return False
        budget = self.profile.max_num_batched_tokens - batch
        head = self._peek_waiting()
        if head is None or budget <= 0:
            return False
        if head.hashes:  # as ``_admit_waiting`` counts a prefix-cache hit
            hit, revived = self._hits(head)
            start = hit * self.profile.block_size
            needed = self._blocks_for(start + min(head.num_tokens - start, budget)) - hit
            needed += revived
        else:
            needed = self._blocks_for(min(head.num_tokens, budget))
        if needed <= self._free_blocks - batch:
            return True  # fits even if every running sequence takes a block first
        return needed <= self._free_blocks - self._first_new_blocks().count(0)

    def _kv_limit(self, steps: int) -> int:
        """The most steps (up to ``steps``) whose new KV blocks fit in the free ones."""
        block = self.profile.block_size
        first_block_at = self._first_new_blocks()

        def needed(k: int) -> int:
            return sum(1 + (k - 1 - j) // block for j in first_block_at if j < k)

        if needed(steps) <= self._free_blocks:
            return steps
        low, high = 0, steps  # needed(low) fits, needed(high) does not
        while high - low > 1:
            mid = (low + high) // 2
            if needed(mid) <= self._free_blocks:
                low = mid
            else:
                high = mid
        return low

    def apply_run(self, run: DecodeRun, m: int, *, finished_only: bool = False) -> StepResult:
        """Perform the first ``m`` steps of ``run``; outputs are the state after them (of
        every sequence, or with ``finished_only`` of those that finished)."""
        block = self.profile.block_size
        outputs: list[TokenOutput] = []
        if m > 0:
            finished = []
            grown = 0
            for seq in self._running.values():
                computed = seq.computed_tokens = seq.computed_tokens + m
                made = seq.output_tokens = seq.output_tokens + m
                blocks = -(-computed // block)
                grown += blocks - seq.blocks
                seq.blocks = blocks
                if made >= seq.max_output_tokens:
                    finished.append(seq)
                    outputs.append(TokenOutput(seq.seq_id, m, made, False, True))
                elif not finished_only:
                    outputs.append(TokenOutput(seq.seq_id, m, made, False, False))
            self._take(grown)
            for seq in finished:
                self._finish(seq)
        end = run.end(m)
        self.busy_until = end
        self.num_steps += m
        return StepResult(
            duration_s=end - run.start,
            outputs=outputs,
            decode_seqs=run.batch * m,
            context_tokens=m * run.context + run.batch * m * (m + 1) // 2,
            scheduled_seqs=run.batch if m else 0,
        )
