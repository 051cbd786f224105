"""Editing sessions: developers typing through standard-library files.

Each session is one developer: they open a module, type through its functions from
top to bottom and ask for a completion at each pause, so successive completions share
almost their whole prompt (the file before the cursor). Between completions they ask
for a summary of the function they are in, generate a body from its signature and
docstring, or translate the module (or, for a long one, the function). Every request
of a session is built from where its cursor is; the kind of each is drawn from the
scenario's mix, so the mix holds in expectation as for rq1-rq3.

The completion prompt is a FIM prompt like ``workloads.completion_tasks``', with one
difference that matters to a prefix cache: the prefix window starts at an anchor that
moves in steps of half the window (then to the next line start), not at a fixed
distance before the cursor. A window that slides with every keystroke changes the
prompt's first block at every request, and no engine can reuse any of it; an anchored
one keeps the same start for half a window of typing.

Timing: session ``i`` asks at the points of a Poisson process of rate ``rate / n``, so
the sessions together arrive as a Poisson process of ``rate``; the points come from a
unit-rate stream per session, scaled, so every rate sees the same requests in the same
order, only faster (the common random numbers of ``bench.capacity``). Deterministic
from the seed: the modules come from ``workloads.load_sources``, every choice from
seeded generators.
"""

from __future__ import annotations

import ast
import bisect
import functools
import heapq
import math
import random
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.bench.workloads import (
    FIM_TEMPLATE,
    MAX_COMPLETION_LINES,
    PREFIX_TOKENS,
    SUFFIX_TOKENS,
    TRANSLATE_RATIOS,
    TRANSLATE_TOKENS,
    SourceFile,
    Workload,
    load_sources,
)
from orchestrator.graphs import approx_tokens
from orchestrator.sim.config import SimTask

SESSIONS = 256  # developers typing at once
MODULES = 48  # modules their sessions open, chosen by the seed
ANCHOR_CHARS = PREFIX_TOKENS * 4 // 2  # the prefix window's start moves by this much
TYPED_CHARS = (8, 120)  # typed between two completions
FUNCTIONS_PER_FILE = 4.0  # mean functions typed through before moving to another module
SAMPLES_PER_KIND = 120  # tasks per kind that stand for the mix in ``capacity_rps``

Func = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class _Module:
    """A module sessions type in: its text, line offsets and functions in file order."""

    source: SourceFile
    starts: tuple[int, ...]  # character offset of each line
    functions: tuple[Func, ...]

    @classmethod
    def of(cls, source: SourceFile) -> _Module | None:
        funcs = sorted(
            (f for f in source.functions() if _body_lines(f) >= 3),
            key=lambda f: f.lineno,
        )
        if len(funcs) < 2:
            return None
        starts = [0]
        for line in source.lines:
            starts.append(starts[-1] + len(line))
        return cls(source, tuple(starts), tuple(funcs))

    @property
    def text(self) -> str:
        return self.source.text

    def body_span(self, func: Func) -> tuple[int, int]:
        """Character offsets of the function body's first and last line starts."""
        first = func.body[0].lineno - 1
        last = (func.end_lineno or func.lineno) - 1
        return self.starts[first], self.starts[last + 1]


def _body_lines(func: Func) -> int:
    return (func.end_lineno or func.lineno) - func.body[0].lineno + 1


@functools.lru_cache(maxsize=4)
def session_modules(seed: int, count: int = MODULES) -> tuple[_Module, ...]:
    """The modules the sessions of ``seed`` type in."""
    found = []
    for source in load_sources(count * 2, seed):
        module = _Module.of(source)
        if module is not None:
            found.append(module)
        if len(found) >= count:
            break
    if not found:
        raise ValueError("no standard-library module with functions to type in was found")
    return tuple(found)


class Session:
    """One developer's requests, in order, each as the ``SimTask`` it sends."""

    def __init__(
        self, index: int, modules: Sequence[_Module], mix: Mapping[str, float], seed: str
    ) -> None:
        self.rng = random.Random(f"{seed}/session/{index}")
        self.modules = modules
        self.kinds = [k for k, w in mix.items() if w > 0]
        total = sum(mix[k] for k in self.kinds)
        acc = 0.0
        self.cumulative = []
        for kind in self.kinds:
            acc += mix[kind] / total
            self.cumulative.append(acc)
        self.target = sorted(TRANSLATE_RATIOS)[self.rng.randrange(len(TRANSLATE_RATIOS))]
        self._open(self.rng.randrange(len(modules)))

    def _open(self, which: int) -> None:
        self.module = self.modules[which]
        self.func_index = self.rng.randrange(len(self.module.functions))
        self._enter()

    def _enter(self) -> None:
        func = self.module.functions[self.func_index]
        self.cursor, self.func_end = self.module.body_span(func)

    def _next_function(self) -> None:
        if self.rng.random() < 1.0 / FUNCTIONS_PER_FILE:
            self._open(self.rng.randrange(len(self.modules)))
            return
        self.func_index = (self.func_index + 1) % len(self.module.functions)
        self._enter()

    def __iter__(self) -> Iterator[SimTask]:
        while True:
            x = self.rng.random()
            kind = self.kinds[min(bisect.bisect_left(self.cumulative, x), len(self.kinds) - 1)]
            task = self._task(kind)
            if task is not None:
                yield task

    def _task(self, kind: str) -> SimTask | None:
        if kind == "complete":
            return self._complete()
        func = self.module.functions[self.func_index]
        if kind == "summarize":
            return _summarize(self.module, func)
        if kind == "generate":
            return _generate(self.module, func)
        if kind == "translate":
            return _translate(self.module, func, self.target)
        raise ValueError(f"unknown task kind {kind!r}")

    def _complete(self) -> SimTask | None:
        """Type on, then ask at the cursor; past the function's end, the next one."""
        self.cursor += self.rng.randint(*TYPED_CHARS)
        if self.cursor >= self.func_end:
            self._next_function()
            self.cursor += self.rng.randint(*TYPED_CHARS)
            if self.cursor >= self.func_end:
                return None
        return completion_at(self.module, self.cursor)


def _anchor(module: _Module, cursor: int) -> int:
    """Where the prefix window of a cursor starts: a grid point of ``ANCHOR_CHARS``
    at most ``2 * ANCHOR_CHARS`` before it, moved to the next line start."""
    if cursor <= 2 * ANCHOR_CHARS:
        return 0
    point = -(-(cursor - 2 * ANCHOR_CHARS) // ANCHOR_CHARS) * ANCHOR_CHARS
    row = bisect.bisect_left(module.starts, point)
    return min(module.starts[row], cursor)


def completion_at(module: _Module, cursor: int) -> SimTask:
    """The FIM request at ``cursor``: the anchored prefix, the suffix after the rest of
    the statement block, and that rest (up to six lines) as what the model writes."""
    text = module.text
    row = bisect.bisect_right(module.starts, cursor) - 1
    line = module.source.lines[row]
    indent = len(line) - len(line.lstrip())
    end = row + 1
    lines = module.source.lines
    while end < len(lines) and end - row < MAX_COMPLETION_LINES:
        following = lines[end]
        if not following.strip() or len(following) - len(following.lstrip()) < indent:
            break
        end += 1
    middle = text[cursor : module.starts[end]]
    after = text[module.starts[end] :]
    anchor = _anchor(module, cursor)
    suffix = after[: SUFFIX_TOKENS * 4]
    cut = suffix.rfind("\n")
    if 0 < cut < len(suffix) - 1:
        suffix = suffix[: cut + 1]
    prompt = FIM_TEMPLATE.format(prefix=text[anchor:cursor], suffix=suffix)
    key = f"session-complete/{module.source.name}:{cursor}"
    # As the language server asks: a suggestion after its SLA is stale, so end it then.
    request = TaskRequest(
        id=key[-128:], kind=TaskKind.COMPLETE, prompt=prompt, language="python", on_late="shed"
    )
    return SimTask(key, request, output_tokens=max(approx_tokens(middle), 1))


def _function_text(module: _Module, func: Func) -> str:
    start = min([func.lineno, *(d.lineno for d in func.decorator_list)]) - 1
    return textwrap.dedent("".join(module.source.lines[start : func.end_lineno]))


def _summarize(module: _Module, func: Func) -> SimTask:
    """The function; its docstring's length (or a line or two) is the summary's."""
    doc = ast.get_docstring(func)
    key = f"session-summarize/{module.source.name}:{func.lineno}"
    request = TaskRequest(
        id=key[-128:],
        kind=TaskKind.SUMMARIZE,
        code=_function_text(module, func),
        language="python",
    )
    return SimTask(key, request, output_tokens=max(approx_tokens(doc or ""), 24))


def _generate(module: _Module, func: Func) -> SimTask:
    """Signature and docstring (the lines before the first statement) as the request,
    the body after them as what the model writes."""
    first = func.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(func.body) > 1:
        first = func.body[1]
    start = min([func.lineno, *(d.lineno for d in func.decorator_list)]) - 1
    head = "".join(module.source.lines[start : first.lineno - 1])
    body = "".join(module.source.lines[first.lineno - 1 : func.end_lineno])
    key = f"session-generate/{module.source.name}:{func.lineno}"
    request = TaskRequest(
        id=key[-128:],
        kind=TaskKind.GENERATE,
        code=textwrap.dedent(head) or _function_text(module, func),
        language="python",
    )
    return SimTask(key, request, output_tokens=max(approx_tokens(body), 1))


def _translate(module: _Module, func: Func, target: str) -> SimTask:
    """The module, or the function where the module is too long to translate whole."""
    low, high = TRANSLATE_TOKENS
    whole = low <= approx_tokens(module.text) <= high
    code = module.text if whole else _function_text(module, func)
    scope = "" if whole else f":{func.lineno}"
    key = f"session-translate/{module.source.name}{scope}->{target}"
    # spread as in ``translate_tasks``, drawn per request: a key means one request
    ratio = TRANSLATE_RATIOS[target] * math.exp(random.Random(key).gauss(0.0, 0.1))
    request = TaskRequest(
        id=key[-128:],
        kind=TaskKind.TRANSLATE,
        code=code,
        language="python",
        target_language=target,
    )
    return SimTask(key, request, output_ratio=round(ratio, 3))


def session_arrivals(
    rate: float,
    duration_s: float,
    mix: Mapping[str, float],
    material_seed: int,
    seed: int,
    sessions: int = SESSIONS,
) -> Iterator[tuple[float, SimTask]]:
    """``sessions`` sessions over ``session_modules(material_seed)``, ``rate`` requests
    per second together, for ``duration_s``; in time order."""
    if rate <= 0 or duration_s <= 0 or sessions < 1:
        raise ValueError("rate, duration_s and sessions must be > 0")
    modules = session_modules(material_seed)
    scale = sessions / rate  # seconds per unit of each session's unit-rate clock

    def one(i: int) -> Iterator[tuple[float, SimTask]]:
        clock = random.Random(f"{seed}/clock/{i}")
        t = clock.expovariate(1.0) * scale
        for task in Session(i, modules, mix, f"{material_seed}/{seed}"):
            if t >= duration_s:
                return
            yield t, task
            t += clock.expovariate(1.0) * scale

    return heapq.merge(*(one(i) for i in range(sessions)), key=lambda a: a[0])


@functools.lru_cache(maxsize=4)
def sample_workload(material_seed: int, mix_items: tuple[tuple[str, float], ...]) -> Workload:
    """Tasks of each kind as the sessions send them, to size the mix (``capacity_rps``)."""
    mix = dict(mix_items)
    modules = session_modules(material_seed)
    found: dict[str, list[SimTask]] = {k: [] for k, w in mix.items() if w > 0}
    i = 0
    while any(len(v) < SAMPLES_PER_KIND for v in found.values()) and i < 4 * SESSIONS:
        for n, task in enumerate(Session(i, modules, mix, f"{material_seed}/sample")):
            kind = task.request.kind.value
            if len(found[kind]) < SAMPLES_PER_KIND:
                found[kind].append(task)
            if n >= 40:
                break
        i += 1
    return Workload(tasks={k: tuple(v) for k, v in found.items()}, seed=material_seed)
