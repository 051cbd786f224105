"""The OpenAPI document against the running service: schemathesis generates requests
for every operation from the document and checks that no answer is a 5xx and every
answer conforms to it (status code, content type, body schema). A real service over
an emulator replica; a bounded number of examples keeps it well under a minute.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.api import TaskKind
from orchestrator.config import load_config
from orchestrator.emulator.process import launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.openapi import openapi_document
from orchestrator.runtime import task_defaults
from orchestrator.server import ServiceOptions, bound_port, create_app, serve_app

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    """The service on a free port, in its own thread and event loop (schemathesis
    calls it synchronously). Replies stay short (max_tokens at most 16), and SLA floors
    of an hour keep a generated tiny SLA from being shed as unreachable (a 503 by
    design, tested elsewhere)."""
    with launch_emulator(model="tiny", speed=50.0, max_num_seqs=64) as emulator:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop = asyncio.Event()
        url: list[str] = []

        async def main() -> None:
            spec = ReplicaSpec(id="tiny-0", url=emulator.url, model="tiny", engine="emulated")
            orch = Orchestrator([spec], defaults=task_defaults(load_config(None)))
            options = ServiceOptions(
                models=["tiny"],
                max_tokens_limit=16,
                max_prompt_chars=20_000,
                context_lengths={"tiny": 4096},
                sla_floors_ms={kind.value: 3_600_000.0 for kind in TaskKind},
            )
            runner = await serve_app(create_app(orch, options), "127.0.0.1", 0)
            url.append(f"http://127.0.0.1:{bound_port(runner)}")
            started.set()
            await stop.wait()
            await runner.cleanup()
            await orch.close()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert started.wait(30), "the service did not start"
        yield url[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def test_the_served_document_is_the_generated_one(service_url: str) -> None:
    served = requests.get(service_url + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == openapi_document()
    assert set(served.json()["paths"]) == {
        "/v1/tasks",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/status",
        "/v1/status/history",
        "/health",
        "/metrics",
        "/openapi.json",
    }


@SCHEMA.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_and_never_answers_5xx(
    case: schemathesis.Case, service_url: str
) -> None:
    response = case.call(base_url=service_url, timeout=30)
    case.validate_response(response, checks=CHECKS)
