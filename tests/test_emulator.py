"""The vLLM-compatible emulator, as a real process, driven by the official OpenAI client."""

from __future__ import annotations

import argparse
import ast
import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import cli as cato_cli
from orchestrator.emulator import cli as emulate_cli
from orchestrator.emulator.lengths import LENGTHS_ENV, LengthTable, prompt_key
from orchestrator.emulator.process import (
    RunningEmulator,
    StartEmulator,
    health_status,
    launch_emulator,
)
from orchestrator.emulator.textgen import TextGenerator, count_tokens, generate_tokens
from orchestrator.engine_model import load_profile

MODEL = "m"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    """One fast emulator with room for 256 concurrent sequences."""
    with launch_emulator(model=MODEL, profile="tiny@cpu", speed=20.0, max_num_seqs=256) as emu:
        yield emu


def client_for(emu: RunningEmulator) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=emu.base_url, api_key="x", max_retries=0, timeout=60.0)


async def scrape(emu: RunningEmulator) -> dict[str, float]:
    """``/metrics`` as {"name{label=value,...}": value}, labels sorted, model label dropped."""
    async with aiohttp.ClientSession() as session, session.get(emu.url + "/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(
                f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model_name"
            )
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


async def wait_for_metrics(
    emu: RunningEmulator, want: dict[str, float], timeout_s: float = 10.0
) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await scrape(emu)
        if all(got.get(k) == v for k, v in want.items()):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never reached {want}: {got}")
        await asyncio.sleep(0.05)


async def post_raw(emu: RunningEmulator, path: str, data: bytes) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(emu.url + path, data=data, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


# -- output text (no server) ------------------------------------------------------------


def test_output_plan_is_deterministic_and_seeded() -> None:
    gen = TextGenerator(seed=7, mean_tokens=40)
    a = gen.plan("def f(x):\n", 100, request_seed=1, temperature=0.8)
    assert a == gen.plan("def f(x):\n", 100, request_seed=1, temperature=0.8)
    assert a != gen.plan("def f(x):\n", 100, request_seed=2, temperature=0.8)
    assert a != TextGenerator(seed=8, mean_tokens=40).plan("def f(x):\n", 100, request_seed=1)
    greedy = gen.plan("x = 1\n", 100, request_seed=1, temperature=0.0)
    assert greedy == gen.plan("x = 1\n", 100, request_seed=99, temperature=0.0)


def test_a_natural_end_finishes_its_statement() -> None:
    gen = TextGenerator(seed=0, mean_tokens=12, sigma=0.8)
    for i in range(200):
        plan = gen.plan(f"def f{i}(x):\n    ", 10_000)
        assert plan.finish_reason == "stop"
        free = gen.plan(f"def f{i}(x):\n    ", plan.num_tokens + 1, ignore_eos=True)
        # the last token or the one after it starts a new line: EOS came at a line's end
        ends = (plan.deltas[-1], free.deltas[-1])
        assert any(t.startswith("\n") for t in ends), (plan.text, free.deltas[-1])


def test_output_lengths_follow_the_mean_and_respect_max_tokens() -> None:
    gen = TextGenerator(seed=0, mean_tokens=50, sigma=0.5)
    lengths = [gen.plan(f"p{i}", 10_000).num_tokens for i in range(400)]
    assert 40 < sum(lengths) / len(lengths) < 60
    capped = [gen.plan(f"p{i}", 30) for i in range(100)]
    assert all(c.num_tokens <= 30 for c in capped)
    assert {c.finish_reason for c in capped} == {"stop", "length"}
    exact = gen.plan("p", 77, ignore_eos=True)
    assert exact.num_tokens == 77 and exact.finish_reason == "length"


def test_output_looks_like_indented_code() -> None:
    text = TextGenerator(seed=3).plan("def main():\n", 400, ignore_eos=True).text
    lines = text.splitlines()
    assert len(lines) > 20
    assert any(line.startswith("    ") for line in lines)
    assert any("def " in line for line in lines)
    assert 2.5 < len(text) / 400 < 6  # about CHARS_PER_TOKEN characters per token


_LOOP = "def load(path):\n    for line in open(path):\n        "


@pytest.mark.parametrize(
    "prompt",
    [
        f"<fim_prefix>{_LOOP}<fim_suffix>\n<fim_middle>",
        f"<PRE> {_LOOP} <SUF>\n <MID>",
        f"<|fim_prefix|>{_LOOP}<|fim_suffix|><|fim_middle|>",
    ],
)
def test_a_fim_completion_continues_the_prefix_at_its_depth(prompt: str) -> None:
    # A model fills in after the text before the cursor, not after the prompt's markers.
    text = TextGenerator(seed=0).plan(prompt, 12, ignore_eos=True).text
    first, second = text.split("\n")[:2]
    assert not first.startswith((" ", "def ")) and second.startswith(" " * 8)
    assert "fim" not in text and "SUF" not in text  # no names from the format's markers


@pytest.mark.parametrize("seed", range(5))
def test_generated_code_parses_as_python(seed: int) -> None:
    pieces = list(itertools.islice(generate_tokens(random.Random(seed)), 3000))
    assert all(pieces)
    lines = "".join(pieces).split("\n")[:-1]  # drop the unfinished last line
    while lines and lines[-1].rstrip().endswith(":"):
        lines.pop()  # a block opener whose body was not generated yet
    ast.parse("\n".join(lines))


def test_stop_string_cuts_the_text_and_ends_generation() -> None:
    gen = TextGenerator(seed=1)
    full = gen.plan("def f():\n", 200, ignore_eos=True)
    stop = "\n"
    cut = gen.plan("def f():\n", 200, ignore_eos=True, stop=[stop, "zzz-never"])
    assert cut.text == full.text.split(stop)[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.num_tokens < full.num_tokens
    kept = gen.plan("def f():\n", 200, ignore_eos=True, stop=[stop], include_stop=True)
    assert kept.text == cut.text + stop


def test_min_tokens_holds_back_eos_and_stop_strings_as_vllm_does() -> None:
    gen = TextGenerator(seed=1, mean_tokens=4, sigma=0.1)  # stops on its own near 4
    prompt = "def f():\n"
    free = gen.plan(prompt, 300, ignore_eos=True)
    lines = gen.plan(prompt, 300, ignore_eos=True, stop=["\n"])
    assert lines.num_tokens < 30 and lines.stop_reason == "\n"
    # EOS is held back until min_tokens (the natural length is long past), then comes at
    # the end of that line
    late = gen.plan(prompt, 300, min_tokens=40)
    assert late.num_tokens >= 40 and late.finish_reason == "stop"
    assert "\n" not in "".join(late.deltas[40:])
    assert late.deltas[:40] == free.deltas[:40]
    # a stop string counts only where it ends after the first min_tokens tokens
    held = gen.plan(prompt, 300, ignore_eos=True, stop=["\n"], min_tokens=30)
    first_30 = "".join(free.deltas[:30])
    rest = free.text[len(first_30) :]
    assert held.stop_reason == "\n" and held.num_tokens > 30
    assert held.text == first_30 + rest.split("\n")[0]
    # min_tokens == max_tokens: exactly that many, whatever EOS or the stop strings say
    exact = gen.plan(prompt, 50, stop=["\n", "="], min_tokens=50)
    assert exact.num_tokens == 50 and exact.finish_reason == "length"
    assert exact.text == "".join(free.deltas[:50])


def test_prompt_token_count_is_a_quarter_of_the_characters() -> None:
    assert count_tokens("") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("x" * 4000) == 1000


# -- completions ------------------------------------------------------------------------


async def test_streamed_completion_equals_the_non_streamed_one(emulator: RunningEmulator) -> None:
    prompt = "def parse(line):\n"
    async with client_for(emulator) as client:
        whole = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=40, seed=3, temperature=0.7
        )
        stream = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=40, seed=3, temperature=0.7,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.prompt_tokens == count_tokens(prompt)
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert len(text_chunks) == whole.usage.completion_tokens  # one chunk per token
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_chat_streams_the_role_then_the_same_content(emulator: RunningEmulator) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Write a function that adds two numbers."}
    ]
    async with client_for(emulator) as client:
        whole = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=30, seed=1
        )
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=30, seed=1, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    assert whole.choices[0].message.role == "assistant"
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    assert whole.usage is not None
    assert len(chunks) == 1 + whole.usage.completion_tokens
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


async def test_max_tokens_with_ignore_eos_gives_exactly_that_many(
    emulator: RunningEmulator,
) -> None:
    async with client_for(emulator) as client:
        out = await client.completions.create(
            model=MODEL, prompt="x = 1\n", max_tokens=57, extra_body={"ignore_eos": True}
        )
    assert out.usage is not None and out.usage.completion_tokens == 57
    assert out.choices[0].finish_reason == "length"


async def test_stop_string_ends_the_text_before_it(emulator: RunningEmulator) -> None:
    prompt, eos = "def run():\n", {"ignore_eos": True}
    async with client_for(emulator) as client:
        free = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=80, seed=4, extra_body=eos
        )
        stopped = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=80, seed=4, extra_body=eos, stop=["\n"]
        )
        stream = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=80, seed=4, extra_body=eos, stop="\n",
            stream=True,
        )  # fmt: skip
        streamed = [c async for c in stream]
    expected = free.choices[0].text.split("\n")[0]
    assert stopped.choices[0].text == expected
    assert stopped.choices[0].finish_reason == "stop"
    assert (stopped.choices[0].model_extra or {}).get("stop_reason") == "\n"
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


async def test_min_tokens_equal_to_max_tokens_gives_exactly_that_many(
    emulator: RunningEmulator,
) -> None:
    """Stop strings and EOS included: vLLM checks neither before min_tokens tokens."""
    prompt = "def run():\n"
    async with client_for(emulator) as client:
        cut = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=90, stop=["\n"], seed=4
        )
        exact = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=90, stop=["\n"], seed=4,
            extra_body={"min_tokens": 90},
        )  # fmt: skip
        stream = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=90, stop=["\n"], seed=4, stream=True,
            stream_options={"include_usage": True}, extra_body={"min_tokens": 90},
        )  # fmt: skip
        chunks = [c async for c in stream]
    assert cut.usage is not None and cut.usage.completion_tokens < 90
    assert exact.usage is not None and exact.usage.completion_tokens == 90
    assert exact.choices[0].finish_reason == "length" and "\n" in exact.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 90
    assert "".join(c.choices[0].text for c in chunks if c.choices) == exact.choices[0].text


async def test_ignore_eos_still_stops_at_a_stop_string(emulator: RunningEmulator) -> None:
    async with client_for(emulator) as client:
        out = await client.completions.create(
            model=MODEL, prompt="def run():\n", max_tokens=90, stop=["\n"],
            extra_body={"ignore_eos": True},
        )  # fmt: skip
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens < 90


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": 5, "min_tokens": 9}, "min_tokens must be less than or equal to "
         "max_tokens=5, got 9."),
        ({"max_tokens": 5, "min_tokens": -1}, "min_tokens must be greater than or equal to 0, "
         "got -1."),
    ],
)  # fmt: skip
async def test_bad_min_tokens_gets_vllms_400(
    emulator: RunningEmulator, fields: dict[str, int], message: str
) -> None:
    body = {"model": MODEL, "prompt": "x"} | fields
    status, got = await post_raw(emulator, "/v1/completions", json.dumps(body).encode())
    assert status == 400 and got["error"]["message"] == message  # type: ignore[index]


async def test_output_length_table_fixes_the_length_of_listed_prompts(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    table = LengthTable()
    table.add("def listed():\n", 37)
    table.add("def long():\n", 500)
    path = tmp_path / "lengths.json"
    table.save(path)
    emu = start_emulator(model=MODEL, speed=20.0, extra_args=["--output-lengths", str(path)])
    async with client_for(emu) as client:

        async def tokens(prompt: str, max_tokens: int) -> tuple[int, str | None]:
            out = await client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=max_tokens, stop=["\n"]
            )
            assert out.usage is not None
            return out.usage.completion_tokens, out.choices[0].finish_reason

        assert await tokens("def listed():\n", 200) == (37, "length")  # no stop, no EOS
        assert await tokens("def long():\n", 50) == (50, "length")  # max_tokens still caps
        unlisted, _ = await tokens("def other():\n", 200)
    assert unlisted < 37  # an unlisted prompt ends at its first newline as before
    await wait_for_metrics(
        emu,
        {
            "cato_emulator_fixed_lengths_total{result=hit}": 2,
            "cato_emulator_fixed_lengths_total{result=miss}": 1,
        },
    )


def test_output_length_tables_save_load_and_refuse_bad_files(tmp_path: Path) -> None:
    table = LengthTable()
    table.add("a", 3)
    table.add("a", 3)
    table.add("a", 4)  # the same prompt with another length: the first is kept
    table.add("b", 9)
    assert (len(table), table.conflicts, table.get("a"), table.get("zzz")) == (2, 1, 3, None)
    path = tmp_path / "t.json"
    table.save(path)
    assert LengthTable.load(path).lengths == {prompt_key("a"): 3, prompt_key("b"): 9}
    with pytest.raises(ValueError, match=">= 1"):
        table.add("c", 0)
    path.write_text('{"k": 0}')
    with pytest.raises(ValueError, match="prompt digest -> tokens >= 1"):
        LengthTable.load(path)
    with pytest.raises(ValueError, match="cannot read output lengths"):
        LengthTable.load(tmp_path / "missing.json")


async def test_models_lists_the_served_model_with_its_context(emulator: RunningEmulator) -> None:
    async with client_for(emulator) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (models.data[0].model_extra or {}).get("max_model_len") == 4096


async def test_metrics_count_tokens_and_latencies(emulator: RunningEmulator) -> None:
    before = await scrape(emulator)
    async with client_for(emulator) as client:
        out = await client.completions.create(model=MODEL, prompt="abcdefgh" * 10, max_tokens=12)
    after = await scrape(emulator)
    assert out.usage is not None

    def delta(key: str) -> float:
        return after[key] - before.get(key, 0.0)

    assert delta("vllm:prompt_tokens_total{}") == out.usage.prompt_tokens == 20
    assert delta("vllm:generation_tokens_total{}") == out.usage.completion_tokens
    assert delta("vllm:time_to_first_token_seconds_count{}") == 1
    assert delta("vllm:e2e_request_latency_seconds_count{}") == 1
    reason = out.choices[0].finish_reason
    assert delta(f"vllm:request_success_total{{finished_reason={reason}}}") == 1
    assert after["vllm:num_requests_running{}"] == 0
    assert after["vllm:kv_cache_usage_perc{}"] == 0


# -- errors -----------------------------------------------------------------------------

BAD_REQUESTS: dict[str, tuple[dict[str, object], int, str]] = {
    "n>1": ({"prompt": "x", "n": 2}, 400, "n"),
    "unknown field": ({"prompt": "x", "max_tokenz": 3}, 400, "max_tokenz"),
    "suffix": ({"prompt": "x", "suffix": "y"}, 400, "suffix"),
    "prompt too long": ({"prompt": "x" * 4 * 5000}, 400, "prompt"),
    "max_tokens too large": ({"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    "max_tokens zero": ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    "bad type": ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    "stream_options without stream": (
        {"prompt": "x", "stream_options": {"include_usage": True}},
        400,
        "stream_options",
    ),
    "negative temperature": ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    "unknown model": ({"prompt": "x", "model": "nope"}, 404, "model"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_completion_requests_get_vllm_style_errors(
    emulator: RunningEmulator, case: str
) -> None:
    fields, status, param = BAD_REQUESTS[case]
    body: dict[str, object] = {"model": MODEL}
    body.update(fields)
    got_status, got = await post_raw(emulator, "/v1/completions", json.dumps(body).encode())
    assert got_status == status
    error = got["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["param"] == param and error["message"]
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")


async def test_invalid_json_is_a_400(emulator: RunningEmulator) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, body = await post_raw(emulator, path, b'{"model": "m", "prompt": ')
        assert status == 400
        assert body["error"]["type"] == "BadRequestError"  # type: ignore[index]
        status, body = await post_raw(emulator, path, b"[1, 2]")
        assert status == 400


async def test_openai_client_raises_the_matching_errors(emulator: RunningEmulator) -> None:
    async with client_for(emulator) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2
            )
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model="other", messages=[{"role": "user", "content": "hi"}]
            )
    assert bad.value.status_code == 400 and missing.value.status_code == 404
    assert isinstance(bad.value.body, dict) and bad.value.body["param"] == "n"


async def test_priority_is_accepted_with_priority_scheduling(emulator: RunningEmulator) -> None:
    async with client_for(emulator) as client:
        out = await client.completions.create(
            model=MODEL, prompt="x", max_tokens=3, extra_body={"priority": 5}
        )
    assert out.usage is not None and out.usage.completion_tokens <= 3


async def test_priority_is_rejected_with_fcfs_scheduling(start_emulator: StartEmulator) -> None:
    fcfs = start_emulator(policy="fcfs", speed=20.0)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "priority": 1}
    status, got = await post_raw(fcfs, "/v1/completions", json.dumps(body).encode())
    assert status == 400 and got["error"]["param"] == "priority"  # type: ignore[index]
    body["priority"] = 0
    status, _ = await post_raw(fcfs, "/v1/completions", json.dumps(body).encode())
    assert status == 200


# -- aborts, load, cold start -----------------------------------------------------------


async def test_closing_a_stream_aborts_its_sequence_at_once(start_emulator: StartEmulator) -> None:
    emu = start_emulator(speed=1.0)  # ~190 tokens/s: 5000 tokens take far longer than the test
    async with client_for(emu) as client:
        stream = await client.completions.create(
            model=MODEL,
            prompt="def f():\n",
            max_tokens=4000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
        metrics = await scrape(emu)
        assert metrics["vllm:num_requests_running{}"] == 1
        await stream.close()
        after = await wait_for_metrics(
            emu, {"cato_emulator_aborted_total{}": 1, "vllm:num_requests_running{}": 0}
        )
    assert after["vllm:kv_cache_usage_perc{}"] == 0
    assert after["vllm:request_success_total{finished_reason=abort}"] == 1
    assert after["vllm:generation_tokens_total{}"] < 4000


async def test_a_client_timeout_aborts_a_non_streamed_request(
    start_emulator: StartEmulator,
) -> None:
    emu = start_emulator(speed=1.0)
    async with AsyncOpenAI(base_url=emu.base_url, api_key="x", max_retries=0, timeout=1.0) as c:
        with pytest.raises(openai.APITimeoutError):
            await c.completions.create(
                model=MODEL, prompt="x", max_tokens=3000, extra_body={"ignore_eos": True}
            )
    await wait_for_metrics(
        emu, {"cato_emulator_aborted_total{}": 1, "vllm:num_requests_running{}": 0}
    )


async def test_requests_beyond_max_num_seqs_wait_and_leave_when_cancelled(
    start_emulator: StartEmulator,
) -> None:
    emu = start_emulator(speed=1.0, max_num_seqs=1)
    async with client_for(emu) as client:
        streams = [
            await client.completions.create(
                model=MODEL,
                prompt=f"p{i}",
                max_tokens=3000,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for i in range(3)
        ]
        await wait_for_metrics(
            emu, {"vllm:num_requests_running{}": 1, "vllm:num_requests_waiting{}": 2}
        )
        for stream in streams:
            await stream.close()
        await wait_for_metrics(
            emu,
            {
                "vllm:num_requests_running{}": 0,
                "vllm:num_requests_waiting{}": 0,
                "cato_emulator_aborted_total{}": 3,
            },
        )


async def test_200_concurrent_streams_lose_reorder_and_repeat_nothing(
    emulator: RunningEmulator,
) -> None:
    async with client_for(emulator) as client:

        async def streamed(i: int) -> tuple[str, int, set[str], str | None]:
            stream = await client.completions.create(
                model=MODEL, prompt=f"def job_{i}(x):\n", max_tokens=24, seed=i,
                temperature=1.0, stream=True,
            )  # fmt: skip
            chunks = [c async for c in stream]
            text = "".join(c.choices[0].text for c in chunks)
            return text, len(chunks), {c.id for c in chunks}, chunks[-1].choices[0].finish_reason

        async def whole(i: int) -> tuple[str, int, str | None]:
            out = await client.completions.create(
                model=MODEL, prompt=f"def job_{i}(x):\n", max_tokens=24, seed=i, temperature=1.0
            )
            assert out.usage is not None
            return out.choices[0].text, out.usage.completion_tokens, out.choices[0].finish_reason

        streams = await asyncio.gather(*(streamed(i) for i in range(200)))
        wholes = await asyncio.gather(*(whole(i) for i in range(200)))
    for (text, n_chunks, ids, finish), (want, n_tokens, want_finish) in zip(
        streams, wholes, strict=True
    ):
        assert text == want
        assert n_chunks == n_tokens
        assert len(ids) == 1
        assert finish == want_finish
    assert len({s[0] for s in streams}) > 150  # different seeds, different texts


async def test_cold_start_answers_503_then_200(start_emulator: StartEmulator) -> None:
    emu = start_emulator(cold_start_s=6.0, wait_ready=False)  # counted from process start
    assert health_status(emu.url) == 503
    status, body = await post_raw(emu, "/v1/completions", b'{"model": "m", "prompt": "x"}')
    assert status == 503 and body["error"]["code"] == 503  # type: ignore[index]
    emu.wait_ready(timeout_s=30.0)
    assert health_status(emu.url) == 200
    assert "EMULATOR" in emu.log()


# -- command line and process -----------------------------------------------------------


def parse_emulate(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    emulate_cli.configure(parser)
    return parser.parse_args(argv)


def test_cato_emulate_flags_override_the_profile() -> None:
    args = parse_emulate(
        ["--profile", "tiny@cpu", "--model", "a", "--model", "b", "--max-num-seqs", "3",
         "--speed", "4", "--scheduling-policy", "fcfs", "--mean-output-tokens", "9"]
    )  # fmt: skip
    config = emulate_cli.config_from_args(args)
    assert config.models == ("a", "b")
    assert config.profile.max_num_seqs == 3 and config.profile.output_mean_tokens == 9
    assert config.policy == "fcfs" and config.speed == 4
    assert config.cold_start_s == pytest.approx(load_profile("tiny@cpu").cold_start_s / 4)
    defaults = emulate_cli.config_from_args(parse_emulate([]))
    assert defaults.policy == "priority" and defaults.models == ("codellama-7b@a100",)
    assert emulate_cli.config_from_args(parse_emulate(["--cold-start-s", "0"])).cold_start_s == 0


def test_cato_emulate_takes_its_length_table_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """So the replicas a service starts inherit the table from the service."""
    path = tmp_path / "lengths.json"
    table = LengthTable()
    table.add("p", 5)
    table.save(path)
    monkeypatch.setenv(LENGTHS_ENV, str(path))
    config = emulate_cli.config_from_args(parse_emulate([]))
    assert config.lengths is not None and config.lengths.get("p") == 5
    path.write_text("not json")
    assert cato_cli.main(["emulate"]) == 2
    assert "cannot read output lengths" in capsys.readouterr().err


def test_cato_emulate_with_an_unknown_profile_fails_clearly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cato_cli.main(["emulate", "--profile", "nope@nowhere"]) == 2
    assert "tiny@cpu" in capsys.readouterr().err


def test_emulator_dies_with_the_process_that_launched_it(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", LAUNCH_AND_HANG, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert pid_alive(child_pid)
    parent.kill()  # no teardown runs in the parent
    parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child_pid)


ROOT = Path(__file__).resolve().parent.parent
LAUNCH_AND_HANG = """
import sys, time
from pathlib import Path
from orchestrator.emulator.process import launch_emulator
emu = launch_emulator(log_dir=Path(sys.argv[1]))
print(emu.pid, flush=True)
time.sleep(60)
"""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting for its reaper, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_more_than_four_stop_strings_are_refused_as_vllm_does(
    emulator: RunningEmulator,
) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "stop": ["a", "b", "c", "d", "e"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(emulator.url + "/v1/completions", json=body) as resp:
            assert resp.status == 400
            assert "at most 4 items" in (await resp.json())["error"]["message"]
        body["stop"] = body["stop"][:4]
        async with http.post(emulator.url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
