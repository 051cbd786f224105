"""Task graphs: one template per task kind, and the local node operations.

A ``TaskRequest`` becomes a ``TaskGraph``: nodes in topological order, each either a
model call (``llm``) or a cheap local step (``context``, ``split``, ``assemble``,
``validate``). Everything a node needs that is known up front (prompts, chunks, token
estimates) is resolved when the graph is built, so building is deterministic and the
executor and the simulator run the same graph. ``translate`` fans out one ``llm`` node
per chunk of the file, which gives the graph a real critical path.

Languages other than Python are validated by a bracket and quote balance check
(``check_balance``): a parser for each language (tree-sitter) is not a dependency.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.api import SLA, OnLate, SLAMetric, TaskKind, TaskRequest
from orchestrator.policy.state import Call, Metric

NodeOp = Literal["context", "split", "llm", "assemble", "validate"]
CHARS_PER_TOKEN = 4
PYTHON_NAMES = frozenset({"python", "python3", "py"})


class GraphError(ValueError):
    """A request that cannot become a graph (a missing or contradictory input)."""


def approx_tokens(text: str) -> int:
    """Token count estimate shared by graphs, profiler and scheduler: ~4 chars a token."""
    return -(-len(text) // CHARS_PER_TOKEN)


# --- defaults -------------------------------------------------------------------------


@dataclass(frozen=True)
class KindDefaults:
    """What a task kind gets unless the request (or ``cato.toml``) says otherwise.

    ``expected_output_ratio`` is the share of ``max_tokens`` a call is expected to
    generate before it stops; the scheduler plans with it. ``on_late``: what a request
    that does not say gets when it is late (a late answer, or ``shed``: an error at once).
    """

    model: str
    sla: SLA
    max_tokens: int
    expected_output_ratio: float = 0.6
    stop: tuple[str, ...] = ()
    on_late: OnLate = "wait"


def _sla(metric: SLAMetric, target_ms: float) -> SLA:
    return SLA(metric=metric, target_ms=target_ms)


BUILTIN_KINDS: Mapping[TaskKind, KindDefaults] = {
    TaskKind.COMPLETE: KindDefaults("tiny", _sla(SLAMetric.TTFT, 500), 64, 0.5),
    TaskKind.GENERATE: KindDefaults("tiny", _sla(SLAMetric.TTFT, 1_000), 256, 0.6, ("```",)),
    TaskKind.SUMMARIZE: KindDefaults(
        "tiny", _sla(SLAMetric.E2E, 6_000), 160, 0.6, ("\n### ", "\n```")
    ),
    TaskKind.TRANSLATE: KindDefaults("tiny", _sla(SLAMetric.E2E, 20_000), 2_048, 0.8, ("```",)),
}


@dataclass(frozen=True)
class TaskDefaults:
    """Per-kind defaults plus the knobs of graph construction.

    ``context_tokens`` bounds the context snippets put in a prompt; ``chunk_tokens`` is
    the size ``translate`` aims at per chunk; a chunk's ``max_tokens`` is
    ``translate_output_factor`` times its tokens (plus ``translate_output_slack``),
    capped by the kind's ``max_tokens``.
    """

    kinds: Mapping[TaskKind, KindDefaults] = field(default_factory=lambda: dict(BUILTIN_KINDS))
    context_tokens: int = 1_024
    chunk_tokens: int = 512
    translate_output_factor: float = 1.3
    translate_output_slack: int = 16

    def for_kind(self, kind: TaskKind) -> KindDefaults:
        try:
            return self.kinds[kind]
        except KeyError:
            raise GraphError(f"no defaults configured for task kind {kind.value!r}") from None


DEFAULTS = TaskDefaults()


# --- graph model ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One step of a task graph.

    ``text`` is the node's input known at build time (the trimmed context of a
    ``context`` node, the file a ``split`` node cut, the source chunk of a translate
    ``llm`` node); ``language`` is
    the language of the text an ``assemble`` or ``validate`` node handles. ``final``
    marks the ``llm`` node whose tokens are streamed to the user. ``metric`` says what
    an ``llm`` node's deadline bounds (local steps always run to their end).
    """

    id: str
    op: NodeOp
    deps: tuple[str, ...] = ()
    prompt: str = ""
    max_tokens: int = 0
    stop: tuple[str, ...] = ()
    metric: Metric = "e2e"
    expected_output_tokens: int = 0
    prompt_tokens: int = 0
    final: bool = False
    text: str = ""
    language: str = ""


@dataclass(frozen=True)
class TaskGraph:
    """A request's graph: nodes in topological order; the last one yields the result."""

    request: TaskRequest
    model: str
    sla: SLA
    nodes: tuple[Node, ...]
    final_node: str | None
    on_late: OnLate = "wait"
    by_id: Mapping[str, Node] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, Node] = {}
        for node in self.nodes:
            if node.id in by_id:
                raise GraphError(f"duplicate node id {node.id!r}")
            for dep in node.deps:
                if dep not in by_id:
                    raise GraphError(f"node {node.id!r} depends on {dep!r}, not before it")
            by_id[node.id] = node
        if not self.nodes:
            raise GraphError("a task graph needs at least one node")
        if self.final_node is not None and by_id.get(self.final_node) is None:
            raise GraphError(f"final node {self.final_node!r} is not in the graph")
        object.__setattr__(self, "by_id", by_id)

    def node(self, node_id: str) -> Node:
        return self.by_id[node_id]

    @property
    def result_node(self) -> str:
        return self.nodes[-1].id

    def llm_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "llm"]

    def successors(self) -> dict[str, list[str]]:
        succ: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for node in self.nodes:
            for dep in node.deps:
                succ[dep].append(node.id)
        return succ


def make_call(graph: TaskGraph, node: Node, deadline: float, arrival: float) -> Call:
    """The scheduler's view of an ``llm`` node."""
    if node.op != "llm":
        raise GraphError(f"node {node.id!r} is not a model call")
    return Call(
        id=f"{graph.request.id}/{node.id}",
        model=graph.model,
        deadline=deadline,
        prompt_tokens=node.prompt_tokens,
        expected_output_tokens=node.expected_output_tokens,
        arrival=arrival,
        metric=node.metric,
        task_id=graph.request.id,
        kind=graph.request.kind.value,
        shed_late=graph.on_late == "shed",
    )


# --- building -------------------------------------------------------------------------


def build_graph(request: TaskRequest, defaults: TaskDefaults = DEFAULTS) -> TaskGraph:
    """The graph for ``request``; ``GraphError`` names what is missing."""
    kd = defaults.for_kind(request.kind)
    sla = request.sla or kd.sla
    model = request.model or kd.model
    if request.kind is TaskKind.COMPLETE:
        nodes, final = _complete_nodes(request, kd, sla, defaults)
    elif request.kind is TaskKind.GENERATE:
        nodes, final = _generate_nodes(request, kd, sla, defaults)
    elif request.kind is TaskKind.SUMMARIZE:
        nodes, final = _summarize_nodes(request, kd, sla, defaults)
    else:
        nodes, final = _translate_nodes(request, kd, sla, defaults)
    on_late = request.on_late or kd.on_late
    return TaskGraph(request, model, sla, tuple(nodes), final, on_late)


_Built = tuple[list[Node], str | None]


def _metric(sla: SLA) -> Metric:
    return "ttft" if sla.metric is SLAMetric.TTFT else "e2e"


def _require_code(request: TaskRequest) -> str:
    if request.code is None or not request.code.strip():
        raise GraphError(f"a {request.kind.value!r} task needs 'code' (the text it works on)")
    return request.code


def _stops(kind_stops: Sequence[str], request: TaskRequest) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*kind_stops, *request.stop]))


def _llm(
    node_id: str,
    prompt: str,
    max_tokens: int,
    ratio: float,
    stop: tuple[str, ...],
    metric: Metric,
    *,
    deps: tuple[str, ...] = (),
    final: bool = False,
    text: str = "",
) -> Node:
    return Node(
        id=node_id,
        op="llm",
        deps=deps,
        prompt=prompt,
        max_tokens=max_tokens,
        stop=stop,
        metric=metric,
        expected_output_tokens=max(1, math.ceil(max_tokens * ratio)),
        prompt_tokens=approx_tokens(prompt),
        final=final,
        text=text,
    )


def _context_node(request: TaskRequest, defaults: TaskDefaults) -> Node:
    return Node(
        id="context",
        op="context",
        text=trim_to_tokens(request.context or "", defaults.context_tokens),
    )


def _complete_nodes(
    request: TaskRequest, kd: KindDefaults, sla: SLA, defaults: TaskDefaults
) -> _Built:
    if not request.prompt:
        raise GraphError("a 'complete' task needs 'prompt' (the rendered FIM prompt)")
    ctx = _context_node(request, defaults)
    llm = _llm(
        "llm",
        request.prompt,
        request.max_tokens or kd.max_tokens,
        kd.expected_output_ratio,
        _stops(kd.stop, request),
        _metric(sla),
        deps=(ctx.id,),
        final=True,
    )
    return [ctx, llm], llm.id


def _generate_nodes(
    request: TaskRequest, kd: KindDefaults, sla: SLA, defaults: TaskDefaults
) -> _Built:
    code = _require_code(request)
    ctx = _context_node(request, defaults)
    llm = _llm(
        "llm",
        generate_prompt(code, request.language, ctx.text),
        request.max_tokens or kd.max_tokens,
        kd.expected_output_ratio,
        _stops(kd.stop, request),
        _metric(sla),
        deps=(ctx.id,),
        final=True,
    )
    check = Node(id="validate", op="validate", deps=(llm.id,), language=request.language)
    return [ctx, llm, check], llm.id


def _summarize_nodes(
    request: TaskRequest, kd: KindDefaults, sla: SLA, defaults: TaskDefaults
) -> _Built:
    code = _require_code(request)
    context = trim_to_tokens(request.context or "", defaults.context_tokens)
    llm = _llm(
        "llm",
        summarize_prompt(code, request.language, context),
        request.max_tokens or kd.max_tokens,
        kd.expected_output_ratio,
        _stops(kd.stop, request),
        _metric(sla),
        final=True,
    )
    return [llm], llm.id


def _translate_nodes(
    request: TaskRequest, kd: KindDefaults, sla: SLA, defaults: TaskDefaults
) -> _Built:
    code = _require_code(request)
    target = request.target_language
    if not target:
        raise GraphError("a 'translate' task needs 'target_language'")
    if sla.metric is not SLAMetric.E2E:
        raise GraphError("a 'translate' task takes an 'e2e' SLA (its chunks run in parallel)")
    context = trim_to_tokens(request.context or "", defaults.context_tokens)
    cap = min(kd.max_tokens, request.max_tokens or kd.max_tokens)
    stop = _stops(kd.stop, request)
    split = Node(id="split", op="split", text=code, language=request.language)
    chunks = split_code(code, request.language, defaults.chunk_tokens)
    llms = []
    for i, chunk in enumerate(chunks):
        budget = math.ceil(approx_tokens(chunk) * defaults.translate_output_factor)
        llms.append(
            _llm(
                f"llm-{i}",
                translate_prompt(chunk, request.language, target, context),
                min(cap, budget + defaults.translate_output_slack),
                kd.expected_output_ratio,
                stop,
                "e2e",
                deps=(split.id,),
                text=chunk,
            )
        )
    ids = tuple(n.id for n in llms)
    assemble_node = Node(id="assemble", op="assemble", deps=ids, language=target)
    check = Node(id="validate", op="validate", deps=(assemble_node.id,), language=target)
    return [split, *llms, assemble_node, check], None


# --- prompts --------------------------------------------------------------------------


def _display(language: str) -> str:
    return language[:1].upper() + language[1:]


def _context_section(context: str) -> str:
    if not context.strip():
        return ""
    return f"### Context from other files\n{context.rstrip()}\n\n"


def generate_prompt(request_text: str, language: str, context: str = "") -> str:
    """Completion prompt that opens a code fence, so the model writes code and stops at ```."""
    return (
        f"Write {_display(language)} code for the request below. "
        "Reply with the code only, without explanations.\n\n"
        f"{_context_section(context)}"
        f"### Request\n{request_text.strip()}\n\n"
        f"### {_display(language)} code\n```{language}\n"
    )


def summarize_prompt(code: str, language: str, context: str = "") -> str:
    """Completion prompt for a short plain-text summary that ends at the next section."""
    return (
        f"Summarize what the following {_display(language)} code does in a few sentences, "
        "for a developer reading it: its purpose, inputs, outputs and side effects.\n\n"
        f"{_context_section(context)}"
        f"### Code\n```{language}\n{code.rstrip()}\n```\n\n"
        "### Summary\n"
    )


def translate_prompt(code: str, language: str, target: str, context: str = "") -> str:
    """Completion prompt for one chunk; the opened fence makes ``` the natural stop."""
    return (
        f"Translate the following {_display(language)} code to {_display(target)}. "
        "Keep the structure, names and comments. "
        f"Reply with {_display(target)} code only.\n\n"
        f"{_context_section(context)}"
        f"### {_display(language)} code\n```{language}\n{code.rstrip()}\n```\n\n"
        f"### {_display(target)} code\n```{target}\n"
    )


def trim_to_tokens(text: str, tokens: int) -> str:
    """The head of ``text`` within ``tokens``, cut at a line end when there is one."""
    limit = tokens * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = head.rfind("\n")
    return head[: cut + 1] if cut > 0 else head


# --- splitting ------------------------------------------------------------------------


def _lines(code: str) -> list[str]:
    """Lines with their endings, split on ``\\n`` only (as line numbers in ``ast`` are)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", code)


def split_code(code: str, language: str, chunk_tokens: int) -> list[str]:
    """Chunks of ``code`` cut at top-level definitions; ``"".join`` gives ``code`` back.

    Python cuts before each top-level statement (decorators and the comment lines just
    above it stay with it); other languages, and Python that does not parse, cut
    where a blank line is followed by a non-indented line. Consecutive pieces are then
    grouped up to ``chunk_tokens``; a larger piece is a chunk of its own.
    """
    lines = _lines(code)
    starts = None
    if language.lower() in PYTHON_NAMES:
        starts = _python_starts(code, lines)
    if starts is None:
        starts = _blank_line_starts(lines)
    bounds = [0, *[s for s in starts if 0 < s < len(lines)], len(lines)]
    pieces = ["".join(lines[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    return group_pieces(pieces, chunk_tokens)


def _python_starts(code: str, lines: list[str]) -> list[int] | None:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    starts: list[int] = []
    prev_end = 0  # index of the first line after the previous statement
    for stmt in tree.body:
        first = min([stmt.lineno, *(d.lineno for d in _decorators(stmt))]) - 1
        while first > prev_end and lines[first - 1].lstrip().startswith("#"):
            first -= 1
        if not starts or first > starts[-1]:
            starts.append(first)
        prev_end = max(prev_end, stmt.end_lineno or stmt.lineno)
    return starts


def _decorators(stmt: ast.stmt) -> list[ast.expr]:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return stmt.decorator_list
    return []


def _blank_line_starts(lines: list[str]) -> list[int]:
    return [
        i
        for i in range(1, len(lines))
        if not lines[i - 1].strip() and lines[i][:1].strip() and lines[i][0] not in ")]}"
    ]


def group_pieces(pieces: Sequence[str], chunk_tokens: int) -> list[str]:
    """Greedily merge consecutive pieces into chunks of at most ``chunk_tokens``."""
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and approx_tokens(current + piece) > chunk_tokens:
            chunks.append(current)
            current = ""
        current += piece
    if current:
        chunks.append(current)
    return chunks


# --- local operations -----------------------------------------------------------------


@dataclass(frozen=True)
class OpResult:
    """What a local node produced: its text and any diagnostics about it."""

    text: str
    diagnostics: tuple[str, ...] = ()


def run_local(node: Node, inputs: Sequence[str], request: TaskRequest | None = None) -> OpResult:
    """Run a non-``llm`` node on ``inputs``, the outputs of ``node.deps`` in order.

    ``request`` supplies the language when the node does not name one.
    """
    if node.op == "context":
        return OpResult(node.text)
    if node.op == "split":
        return OpResult("")
    if node.op == "assemble":
        return OpResult(assemble(inputs))
    if node.op == "validate":
        text = inputs[0] if inputs else ""
        language = node.language or (request.language if request is not None else "")
        return OpResult(text, validate(text, language))
    raise GraphError(f"node {node.id!r} is a model call, not a local step")


_FENCE_OPEN = re.compile(r"\A\s*```[\w+#.-]*[ \t]*\n")
_FENCE_CLOSE = re.compile(r"\n?[ \t]*```[ \t]*\s*\Z")


def strip_fences(text: str) -> str:
    """Drop a markdown fence opening the text (```lang) and one closing it (```)."""
    text = _FENCE_OPEN.sub("", text, count=1)
    return _FENCE_CLOSE.sub("\n", text, count=1)


def assemble(parts: Sequence[str]) -> str:
    """Chunk outputs joined in order, fences stripped, each ending its own line."""
    out = []
    for part in parts:
        body = strip_fences(part)
        if body and not body.endswith("\n"):
            body += "\n"
        out.append(body)
    return "".join(out)


def validate(text: str, language: str) -> tuple[str, ...]:
    """Diagnostics for ``text``: a syntax error for Python, balance errors otherwise."""
    if language.lower() in PYTHON_NAMES:
        return python_syntax(text)
    return check_balance(text, language)


def python_syntax(text: str) -> tuple[str, ...]:
    try:
        ast.parse(text)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno is not None else "unknown line"
        if exc.lineno is not None and exc.offset is not None:
            where += f", column {exc.offset}"
        return (f"{where}: {exc.msg}",)
    except ValueError as exc:  # e.g. a NUL byte
        return (f"line 1: {exc}",)
    return ()


_PAIRS = {")": "(", "]": "[", "}": "{"}
_LINE_COMMENTS: Mapping[str, tuple[str, ...]] = {
    "ruby": ("#",),
    "shell": ("#",),
    "bash": ("#",),
    "perl": ("#",),
    "r": ("#",),
    "yaml": ("#",),
    "toml": ("#",),
    "sql": ("--",),
    "lua": ("--",),
    "haskell": ("--",),
}
_DEFAULT_COMMENTS = ("//",)
_BLOCK_COMMENT = ("/*", "*/")
_RUST_CHAR = re.compile(r"'(?:\\u\{[0-9a-fA-F]{1,6}\}|\\.|[^\\'])'")


def check_balance(text: str, language: str) -> tuple[str, ...]:
    """Heuristic check for languages without a parser here: brackets, strings, comments.

    ``"`` strings must close on their line and backquoted strings may span lines. A
    ``'`` that does not close on its line is taken for an apostrophe, and in Rust a
    ``'`` is a char literal only in the short forms (``'a'``, ``'\\n'``), otherwise a
    lifetime. Line comments are ``//`` unless the language is known to use ``#``
    or ``--``; ``/* */`` block comments are skipped for the ``//`` languages.
    """
    scanner = _BalanceScanner(language.lower())
    for lineno, line in enumerate(text.split("\n"), start=1):
        scanner.scan_line(line, lineno)
    return scanner.finish()


class _BalanceScanner:
    def __init__(self, language: str) -> None:
        self.line_comments = _LINE_COMMENTS.get(language, _DEFAULT_COMMENTS)
        self.block = self.line_comments == _DEFAULT_COMMENTS
        self.rust = language == "rust"
        self.stack: list[tuple[str, int]] = []
        self.diagnostics: list[str] = []
        self.quote: tuple[str, int] | None = None  # open string: (quote char, line)
        self.in_block: int | None = None

    def scan_line(self, line: str, lineno: int) -> None:
        i = 0
        while i < len(line):
            i = self._step(line, i, lineno)
        if self.quote is not None and self.quote[0] != "`":
            if self.quote[0] == '"':
                self.diagnostics.append(f"line {lineno}: unterminated string literal")
            self.quote = None

    def _step(self, line: str, i: int, lineno: int) -> int:
        ch = line[i]
        if self.in_block is not None:
            if line.startswith(_BLOCK_COMMENT[1], i):
                self.in_block = None
                return i + 2
            return i + 1
        if self.quote is not None:
            if ch == "\\":
                return i + 2
            if ch == self.quote[0]:
                self.quote = None
            return i + 1
        if any(line.startswith(c, i) for c in self.line_comments):
            return len(line)
        if self.block and line.startswith(_BLOCK_COMMENT[0], i):
            self.in_block = lineno
            return i + 2
        if ch == "'":
            return self._apostrophe(line, i, lineno)
        if ch in '"`':
            self.quote = (ch, lineno)
        elif ch in "([{":
            self.stack.append((ch, lineno))
        elif ch in _PAIRS:
            self._close(ch, lineno)
        return i + 1

    def _apostrophe(self, line: str, i: int, lineno: int) -> int:
        """A ``'`` opens a string only if it closes on its line (a char literal in Rust)."""
        if self.rust:
            literal = _RUST_CHAR.match(line, i)
            return literal.end() if literal else i + 1
        j = i + 1
        while j < len(line):
            if line[j] == "\\":
                j += 2
                continue
            if line[j] == "'":
                return j + 1
            j += 1
        return i + 1

    def _close(self, ch: str, lineno: int) -> None:
        if not self.stack:
            self.diagnostics.append(f"line {lineno}: unmatched {ch!r}")
        elif self.stack[-1][0] != _PAIRS[ch]:
            opener, at = self.stack.pop()
            self.diagnostics.append(f"line {lineno}: {ch!r} does not close {opener!r} (line {at})")
        else:
            self.stack.pop()

    def finish(self) -> tuple[str, ...]:
        if self.quote is not None:
            self.diagnostics.append(f"line {self.quote[1]}: unterminated string literal")
        if self.in_block is not None:
            self.diagnostics.append(f"line {self.in_block}: unterminated block comment")
        for opener, at in self.stack:
            self.diagnostics.append(f"line {at}: unclosed {opener!r}")
        return tuple(self.diagnostics)
