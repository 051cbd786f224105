"""CPU that prefix-cache affinity adds to a live call: hashing its prompt, and routing by
the replicas' ``PrefixIndex``.

A call of a model whose engines cache prefixes is hashed once, when its task builds it
(``Orchestrator.prompt_hashes``: one chained 8-byte blake2b per 16-token block), and
routing looks up the leading run of those hashes in each replica's index. Prompts of
1,280 tokens (rq2's and the sessions' completions) and 4,096; six replicas, each holding
a full index, like the sessions scenario's codellama-7b replicas. Compare with the
executor's whole round trip (``test_bench_executor``) and the router CPU per request in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import inspect
import itertools
import typing

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.engine_model import block_hashes, load_profile
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.policy.scheduler import CatoScheduler
from orchestrator.policy.state import Call, PrefixIndex, Rates, ReplicaState

PROFILE = load_profile("codellama-7b@a100")
SOURCE = inspect.getsource(typing)


def prompt(tokens: int) -> str:
    return "<fim_prefix>" + SOURCE[: 4 * tokens - 36] + "<fim_suffix><fim_middle>"


@pytest.mark.parametrize("tokens", [1_280, 4_096])
def test_hash_one_prompt(benchmark: BenchmarkFixture, tokens: int) -> None:
    orch = Orchestrator([ReplicaSpec(id="r0", url="http://127.0.0.1:9", model="m")])
    orch.set_prefix_cache("m", PROFILE.block_size, PROFILE.num_kv_blocks)
    text = prompt(tokens)
    hashes = benchmark(orch.prompt_hashes, "m", text)
    assert hashes == block_hashes(text, PROFILE.block_size)
    assert len(hashes) == tokens // PROFILE.block_size


@pytest.mark.parametrize("affinity", [True, False])
def test_route_among_six_full_indexes(benchmark: BenchmarkFixture, affinity: bool) -> None:
    """One routing decision for a 1,280-token completion whose first 1,024 tokens one
    replica holds; every replica's index is full of other prompts' blocks."""
    text = prompt(1_280)
    hashes = block_hashes(text, PROFILE.block_size)
    replicas = []
    filler = itertools.count(1 << 62)
    for i in range(6):
        st = ReplicaState(
            f"r{i}", "m", 256, Rates.from_profile(PROFILE),
            prefixes=PrefixIndex(PROFILE.block_size, PROFILE.num_kv_blocks),
        )  # fmt: skip
        assert st.prefixes is not None
        st.prefixes.add([next(filler) for _ in range(PROFILE.num_kv_blocks)])
        if i == 3:
            st.prefixes.add(hashes[:64])
        replicas.append(st)
    scheduler = CatoScheduler(affinity=affinity)
    call = Call(
        "c", "m", deadline=0.5, prompt_tokens=1_280, expected_output_tokens=38, arrival=0.0,
        metric="ttft", block_hashes=hashes,
    )  # fmt: skip
    route = benchmark(scheduler.route, call, replicas, 0.0)
    assert route.replica_id == ("r3" if affinity else "r0")
