"""Task graph templates, chunking, prompts and the local node operations."""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import graphs
from orchestrator.api import SLA, SLAMetric, TaskKind, TaskRequest
from orchestrator.graphs import (
    GraphError,
    KindDefaults,
    TaskDefaults,
    approx_tokens,
    assemble,
    build_graph,
    make_call,
    run_local,
    split_code,
    validate,
)

TEXTWRAP_SOURCE = inspect.getsource(textwrap)


def shape(graph: graphs.TaskGraph) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(n.id, n.op, n.deps) for n in graph.nodes]


def test_approx_tokens_is_four_chars_per_token_rounded_up() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("abc") == 1
    assert approx_tokens("abcd") == 1
    assert approx_tokens("abcde") == 2
    assert approx_tokens("x" * 400) == 100


def test_complete_is_context_then_final_ttft_llm_with_the_given_prompt() -> None:
    req = TaskRequest(kind=TaskKind.COMPLETE, prompt="<fim_prefix>def f(", stop=["\n\n"])
    g = build_graph(req)
    assert shape(g) == [("context", "context", ()), ("llm", "llm", ("context",))]
    llm = g.node("llm")
    assert llm.prompt == req.prompt
    assert llm.final and g.final_node == "llm"
    assert llm.metric == "ttft"
    assert llm.stop == ("\n\n",)
    assert llm.max_tokens == 64
    assert 0 < llm.expected_output_tokens <= llm.max_tokens
    assert llm.prompt_tokens == approx_tokens(req.prompt or "")
    assert g.sla == SLA(metric=SLAMetric.TTFT, target_ms=500)
    assert g.model == "tiny"


def test_generate_is_context_llm_validate_and_includes_context() -> None:
    req = TaskRequest(
        kind=TaskKind.GENERATE,
        code="# return the n-th fibonacci number",
        context="def helper(): ...",
        language="python",
    )
    g = build_graph(req)
    assert shape(g) == [
        ("context", "context", ()),
        ("llm", "llm", ("context",)),
        ("validate", "validate", ("llm",)),
    ]
    llm = g.node("llm")
    assert "fibonacci" in llm.prompt and "def helper(): ..." in llm.prompt
    assert llm.prompt.endswith("```python\n")
    assert "```" in llm.stop
    assert llm.metric == "ttft" and llm.final
    assert g.sla.target_ms == 1_000
    assert g.result_node == "validate"


def test_summarize_is_one_final_e2e_llm() -> None:
    g = build_graph(TaskRequest(kind=TaskKind.SUMMARIZE, code="def add(a, b):\n    return a + b\n"))
    assert shape(g) == [("llm", "llm", ())]
    llm = g.node("llm")
    assert llm.metric == "e2e" and llm.final
    assert "return a + b" in llm.prompt and "Context" not in llm.prompt
    assert llm.max_tokens == 160
    assert g.sla == SLA(metric=SLAMetric.E2E, target_ms=6_000)


def test_translate_fans_out_one_llm_per_chunk_then_assembles_and_validates() -> None:
    req = TaskRequest(kind=TaskKind.TRANSLATE, code=TEXTWRAP_SOURCE, target_language="rust")
    defaults = TaskDefaults(chunk_tokens=300)
    g = build_graph(req, defaults)
    chunks = split_code(TEXTWRAP_SOURCE, "python", 300)
    llms = g.llm_nodes()
    assert len(llms) == len(chunks) > 2
    assert g.nodes[0].op == "split" and g.nodes[0].deps == ()
    assert all(n.deps == ("split",) and n.metric == "e2e" and not n.final for n in llms)
    assert [n.text for n in llms] == chunks
    assemble_node, validate_node = g.nodes[-2], g.nodes[-1]
    assert assemble_node.op == "assemble" and assemble_node.deps == tuple(n.id for n in llms)
    assert validate_node.deps == ("assemble",) and validate_node.language == "rust"
    assert g.final_node is None
    assert g.sla == SLA(metric=SLAMetric.E2E, target_ms=20_000)
    for node, chunk in zip(llms, chunks, strict=True):
        assert chunk.rstrip() in node.prompt
        assert node.prompt.endswith("```rust\n")
        expected_cap = min(2_048, int(approx_tokens(chunk) * 1.3) + 1 + 16)
        assert node.max_tokens <= expected_cap
        assert node.max_tokens >= min(2_048, approx_tokens(chunk))


def test_translate_splits_textwrap_at_top_level_definitions_and_reassembles() -> None:
    chunks = split_code(TEXTWRAP_SOURCE, "python", 200)
    assert "".join(chunks) == TEXTWRAP_SOURCE
    assert len(chunks) > 3
    tree = ast.parse(TEXTWRAP_SOURCE)
    top_level_starts = {stmt.lineno for stmt in tree.body}
    start_line = 1
    for previous, chunk in itertools.pairwise(chunks):
        start_line += previous.count("\n")
        assert not chunk.startswith("\n")  # blank lines stay with the chunk above
        code_offset = next(
            i for i, text in enumerate(chunk.splitlines()) if not text.lstrip().startswith("#")
        )
        assert start_line + code_offset in top_level_starts
    # Every top-level definition lies wholly inside one chunk.
    for chunk in chunks:
        ast.parse(chunk)


def test_small_budget_keeps_each_definition_whole_and_large_budget_one_chunk() -> None:
    code = "import os\n\n\n# about f\n@decorator\ndef f():\n    return 1\n\n\nclass C:\n    x = 1\n"
    pieces = split_code(code, "python", 1)
    assert pieces == [
        "import os\n\n\n",
        "# about f\n@decorator\ndef f():\n    return 1\n\n\n",
        "class C:\n    x = 1\n",
    ]
    assert split_code(code, "python", 10_000) == [code]


def test_other_languages_split_at_blank_line_before_unindented_line() -> None:
    code = "fn a() {\n    1\n\n    2\n}\n\nfn b() {}\n\n}\n"
    assert split_code(code, "rust", 1) == ["fn a() {\n    1\n\n    2\n}\n\n", "fn b() {}\n\n}\n"]


def test_python_that_does_not_parse_falls_back_to_blank_line_split() -> None:
    code = "def f(:\n    pass\n\ndef g():\n    pass\n"
    assert split_code(code, "python", 1) == ["def f(:\n    pass\n\n", "def g():\n    pass\n"]


@given(st.text(alphabet="ab \n\t#:()=", max_size=300), st.integers(1, 50))
def test_chunks_always_reassemble_to_the_source(code: str, budget: int) -> None:
    for language in ("python", "go"):
        assert "".join(split_code(code, language, budget)) == code


def test_request_overrides_sla_model_and_max_tokens() -> None:
    sla = SLA(metric=SLAMetric.E2E, target_ms=2_000)
    req = TaskRequest(kind=TaskKind.COMPLETE, prompt="x", sla=sla, model="big", max_tokens=7)
    g = build_graph(req)
    assert g.sla == sla and g.model == "big"
    assert g.node("llm").max_tokens == 7 and g.node("llm").metric == "e2e"


def test_configured_defaults_are_used() -> None:
    kinds = dict(graphs.BUILTIN_KINDS)
    kinds[TaskKind.SUMMARIZE] = KindDefaults(
        "coder-7b", SLA(metric=SLAMetric.E2E, target_ms=3_000), 99
    )
    g = build_graph(TaskRequest(kind=TaskKind.SUMMARIZE, code="x = 1"), TaskDefaults(kinds=kinds))
    assert g.model == "coder-7b" and g.sla.target_ms == 3_000 and g.node("llm").max_tokens == 99


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"kind": TaskKind.COMPLETE}, "needs 'prompt'"),
        ({"kind": TaskKind.GENERATE}, "needs 'code'"),
        ({"kind": TaskKind.SUMMARIZE, "code": "   "}, "needs 'code'"),
        ({"kind": TaskKind.TRANSLATE, "code": "x = 1"}, "needs 'target_language'"),
        (
            {
                "kind": TaskKind.TRANSLATE,
                "code": "x = 1",
                "target_language": "go",
                "sla": SLA(metric=SLAMetric.TTFT, target_ms=100),
            },
            "'e2e' SLA",
        ),
    ],
)
def test_missing_inputs_give_a_clear_error(request_fields: dict[str, object], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        build_graph(TaskRequest.model_validate(request_fields))


def test_context_is_trimmed_to_the_budget_at_a_line_end() -> None:
    context = "".join(f"line {i}\n" for i in range(1_000))
    g = build_graph(
        TaskRequest(kind=TaskKind.COMPLETE, prompt="p", context=context),
        TaskDefaults(context_tokens=10),
    )
    text = run_local(g.node("context"), []).text
    assert context.startswith(text) and text.endswith("\n")
    assert approx_tokens(text) <= 10


def test_validate_reports_python_syntax_error_with_line() -> None:
    diagnostics = validate("def ok():\n    return 1\n\ndef bad(:\n    pass\n", "python")
    assert len(diagnostics) == 1 and diagnostics[0].startswith("line 4")
    assert validate("def ok():\n    return 1\n", "python") == ()


@pytest.mark.parametrize(
    ("code", "language", "expected"),
    [
        ('fn main() { let s = "}"; }\n', "rust", ()),
        ("fn f<'a>(x: &'a str) -> char { '}' }\n", "rust", ()),
        ("int main() { // don't )\n  return (1 + 2);\n}\n", "c", ()),
        ("/* ( */ int x = 1;\n", "c", ()),
        ("x = [1, 2\n", "ruby", ("line 1: unclosed '['",)),
        ("f(a]\n", "go", ("line 1: ']' does not close '(' (line 1)",)),
        ("}\n", "java", ("line 1: unmatched '}'",)),
        ('let s = "abc;\n', "js", ("line 1: unterminated string literal",)),
    ],
)
def test_balance_check_for_other_languages(
    code: str, language: str, expected: tuple[str, ...]
) -> None:
    assert validate(code, language) == expected


def test_assemble_joins_in_order_and_strips_fences() -> None:
    parts = ["```rust\nfn a() {}\n```\n", "fn b() {}", "  ```\nfn c() {}\n```"]
    assert assemble(parts) == "fn a() {}\nfn b() {}\nfn c() {}\n"


def test_run_local_runs_assemble_then_validate() -> None:
    g = build_graph(
        TaskRequest(
            kind=TaskKind.TRANSLATE,
            code="def a():\n    pass\n\n\ndef b():\n    pass\n",
            target_language="python",
        ),
        TaskDefaults(chunk_tokens=1),
    )
    assert len(g.llm_nodes()) == 2
    joined = run_local(g.node("assemble"), ["```python\ndef a(): pass\n```", "def b(:"]).text
    assert joined == "def a(): pass\ndef b(:\n"
    result = run_local(g.node("validate"), [joined])
    assert result.text == joined
    assert result.diagnostics and result.diagnostics[0].startswith("line 2")
    with pytest.raises(GraphError):
        run_local(g.llm_nodes()[0], [])


def test_make_call_carries_the_node_estimates() -> None:
    g = build_graph(TaskRequest(kind=TaskKind.COMPLETE, prompt="x" * 40, id="t1"))
    call = make_call(g, g.node("llm"), deadline=12.5, arrival=12.0)
    assert call.prompt_tokens == 10 and call.metric == "ttft" and call.deadline == 12.5
    assert call.task_id == "t1" and call.kind == "complete" and call.model == "tiny"
    with pytest.raises(GraphError):
        make_call(g, g.node("context"), deadline=1.0, arrival=0.0)


def test_graph_rejects_dependencies_out_of_order() -> None:
    req = TaskRequest(kind=TaskKind.COMPLETE, prompt="x")
    sla = SLA(metric=SLAMetric.TTFT, target_ms=100)
    nodes = (graphs.Node("b", "validate", deps=("a",)), graphs.Node("a", "context"))
    with pytest.raises(GraphError, match="not before it"):
        graphs.TaskGraph(req, "m", sla, nodes, None)
