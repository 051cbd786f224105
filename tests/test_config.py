"""``cato.toml`` loading: defaults, the example files, and an error naming every bad key."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from orchestrator.api import SLAMetric, TaskKind, TaskRequest
from orchestrator.commands.config import main
from orchestrator.config import (
    TASK_DEFAULTS,
    CatoConfig,
    ConfigError,
    hash_token,
    load_config,
    parse_config,
)
from orchestrator.graphs import build_graph, make_call
from orchestrator.policy.admission import NetSlackAdmission, SlackAdmission
from orchestrator.policy.provisioner import PROVISIONERS
from orchestrator.policy.scheduler import SCHEDULERS, CatoScheduler, make_scheduler
from orchestrator.runtime import admission_policy, task_defaults

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

VLLM_MODEL = """
[gpus]
devices = [0, 1]

[[models]]
name = "coder"
engine = "vllm"
model = "bigcode/starcoder2-7b"
"""


def problems_of(text: str, source: str = "cato.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    assert str(info.value).count(source) >= len(info.value.problems)
    return info.value.problems


def one_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# ---------------------------------------------------------------- defaults and examples


def test_builtin_default_needs_no_gpu_and_serves_every_kind() -> None:
    config = load_config(None)
    assert [m.name for m in config.models] == ["tiny"]
    tiny = config.models[0]
    assert (tiny.engine, tiny.profile, tiny.min_replicas, tiny.max_replicas) == (
        "emulated",
        "tiny@cpu",
        2,
        4,
    )
    assert tiny.gpus == 0 and config.gpus.devices == []
    assert {config.task(k).model for k in TaskKind} == {"tiny"}
    assert config.scheduler.policy == "cato" and config.provisioner.policy == "cato"
    assert config.server.host == "127.0.0.1"


def test_default_example_file_equals_builtin_default() -> None:
    assert load_config(EXAMPLES / "default.toml") == load_config(None)


def test_gpu_example_loads() -> None:
    config = load_config(EXAMPLES / "cato.toml")
    assert config.gpus.devices == list(range(8))
    by_name = {m.name: m for m in config.models}
    assert by_name["codellama-7b"].model == "codellama/CodeLlama-7b-hf"
    assert by_name["codellama-7b"].fim_family == "codellama"
    assert by_name["starcoder2-7b"].fim_family == "starcoder2"
    assert sum(m.replicas_max * m.gpus for m in config.models) <= len(config.gpus.devices)
    assert config.task("complete").model == "codellama-7b"
    assert {config.task(k).model for k in ("generate", "summarize", "translate")} == {
        "starcoder2-7b"
    }
    assert config.models[0].effective_concurrency_limit() == 64
    assert [u.name for u in config.server.users] == ["alice", "bob"]
    assert config.server.user_for_token("alice-change-me") is None  # no public token gets in


def test_task_defaults_per_kind_and_partial_sections() -> None:
    config = parse_config(VLLM_MODEL + "\n[tasks.summarize]\nsla_ms = 8000\n")
    summarize = config.task(TaskKind.SUMMARIZE)
    assert (summarize.sla_metric, summarize.sla_ms, summarize.max_tokens) == ("e2e", 8000.0, 160)
    assert summarize.model == "coder"
    for kind in ("complete", "generate", "translate"):
        task = config.task(kind)
        assert task.sla_metric == TASK_DEFAULTS[kind]["sla_metric"]
        assert task.sla_ms == TASK_DEFAULTS[kind]["sla_ms"]
        assert task.max_tokens == TASK_DEFAULTS[kind]["max_tokens"]
    sla = config.task("complete").sla
    assert sla.metric is SLAMetric.TTFT and sla.target_ms == 500


def test_engine_defaults_resolve() -> None:
    config = parse_config(VLLM_MODEL)
    coder = config.models[0]
    assert coder.gpus_per_replica == 1 and coder.max_replicas == 1
    assert coder.effective_concurrency_limit() == 256
    emulated = parse_config('[[models]]\nname = "e"\nengine = "emulated"\n').models[0]
    assert emulated.gpus == 0 and emulated.effective_concurrency_limit() is None


def test_max_num_seqs_in_either_spelling() -> None:
    text = VLLM_MODEL + 'vllm_args = ["--max-num-seqs=12"]\n'
    assert parse_config(text).models[0].effective_concurrency_limit() == 12
    text = VLLM_MODEL + "concurrency_limit = 5\n" + 'vllm_args = ["--max-num-seqs", "12"]\n'
    assert parse_config(text).models[0].effective_concurrency_limit() == 5


def test_config_policies_match_the_provisioner_registry() -> None:
    schema = CatoConfig.model_json_schema()["$defs"]["ProvisionerConfig"]["properties"]
    assert set(schema["policy"]["enum"]) == set(PROVISIONERS)


# ---------------------------------------------------------------- users and tokens


USERS = (
    VLLM_MODEL
    + f"""
[[server.users]]
name = "alice"
token_sha256 = "{hashlib.sha256(b"s3cret-a").hexdigest()}"
max_concurrency = 3

[[server.users]]
name = "bob"
token_sha256 = "{hashlib.sha256(b"s3cret-b").hexdigest().upper()}"
"""
)


def test_user_for_token_finds_the_right_user() -> None:
    server = parse_config(USERS).server
    alice = server.user_for_token("s3cret-a")
    bob = server.user_for_token("s3cret-b")
    assert alice is not None and alice.name == "alice" and alice.max_concurrency == 3
    assert bob is not None and bob.name == "bob"


@pytest.mark.parametrize("token", ["", "s3cret", "s3cret-a ", "S3CRET-A", "s3cret-c"])
def test_user_for_token_rejects_wrong_tokens(token: str) -> None:
    assert parse_config(USERS).server.user_for_token(token) is None


def test_hash_token_command_prints_the_config_value(capsys: pytest.CaptureFixture[str]) -> None:
    token = "a-long-enough-s3cret-for-a-team"
    assert main(["hash-token", token]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize("token", ["s3cret-a", "alice-change-me", "x" * 23])
def test_hash_token_refuses_short_and_placeholder_tokens(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hash-token", token]) == 2
    err = capsys.readouterr().err
    assert "cato config new-token" in err and not capsys.readouterr().out


def test_new_token_prints_a_token_and_its_config_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["new-token"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    token = first.rsplit(" ", 1)[1]
    assert len(token) >= 40 and second == f'token_sha256 = "{hash_token(token)}"'
    text = VLLM_MODEL + f"[[server.users]]\nname = 'x'\n{second}\n"
    assert parse_config(text).server.user_for_token(token) is not None


@pytest.mark.parametrize("placeholder", ["alice-change-me", "bob-change-me", "changeme"])
def test_a_placeholder_token_hash_is_refused_with_how_to_make_one(placeholder: str) -> None:
    digest = hashlib.sha256(placeholder.encode()).hexdigest()
    text = VLLM_MODEL + f"[[server.users]]\nname = 'x'\ntoken_sha256 = '{digest}'\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    message = str(err.value)
    assert "users[0].token_sha256" in message and placeholder in message
    assert "cato config new-token" in message


def test_a_token_that_is_not_utf8_hashes_instead_of_raising() -> None:
    raw = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    assert len(hash_token(raw)) == 64
    assert parse_config(USERS).server.user_for_token(raw) is None


def test_check_command_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cato.toml"
    bad.write_text("[server]\nprot = 1\n" + VLLM_MODEL)
    assert main(["check", str(bad)]) == 1
    assert "server.prot" in capsys.readouterr().err
    assert main(["check", str(EXAMPLES / "cato.toml")]) == 0


# ---------------------------------------------------------------- errors name file and key


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[server]\nport = '8000'\n" + VLLM_MODEL, "server.port", "valid integer"),
        ("[server]\nport = 70000\n" + VLLM_MODEL, "server.port", "less than or equal to 65535"),
        (VLLM_MODEL + "gpus_per_replica = 'one'\n", "models[0].gpus_per_replica", "integer"),
        (VLLM_MODEL + "min_replicas = 1.5\n", "models[0].min_replicas", "integer"),
        (
            VLLM_MODEL + "[tasks.complete]\nsla_ms = 0\n",
            "tasks.complete.sla_ms",
            "greater than 0",
        ),
        (
            VLLM_MODEL + "[tasks.summarize]\nsla_metric = 'p99'\n",
            "tasks.summarize.sla_metric",
            "'ttft' or 'e2e'",
        ),
        (VLLM_MODEL + "[scheduler]\npolicy = 'fifo'\n", "scheduler.policy", "'round_robin'"),
        (
            VLLM_MODEL + "[provisioner]\nviolation_threshold = 1.5\n",
            "provisioner.violation_threshold",
            "less than or equal to 1",
        ),
        (VLLM_MODEL.replace('"vllm"', '"tgi"'), "models[0].engine", "'vllm'"),
    ],
)
def test_wrong_values_name_the_key(text: str, key: str, expected: str) -> None:
    problem = one_problem(text)
    assert problem.startswith(f"cato.toml: {key}: "), problem
    assert expected in problem


def test_duplicate_key_is_a_toml_error() -> None:
    assert "invalid TOML" in one_problem(VLLM_MODEL + "engine = 'emulated'\n")


def test_unknown_key_names_it_and_suggests_the_right_one() -> None:
    problem = one_problem(VLLM_MODEL + "gpus_per_replicas = 2\n")
    assert problem.startswith("cato.toml: models[0].gpus_per_replicas: unknown key")
    assert "did you mean 'gpus_per_replica'" in problem


def test_unknown_section_is_an_unknown_key() -> None:
    problem = one_problem(VLLM_MODEL + "[schedular]\npolicy = 'cato'\n")
    assert problem.startswith("cato.toml: schedular: unknown key")
    assert "'scheduler'" in problem


def test_unknown_task_kind_is_named() -> None:
    problem = one_problem(VLLM_MODEL + "[tasks.refactor]\nsla_ms = 100\n")
    assert problem.startswith("cato.toml: tasks.refactor: unknown task kind 'refactor'")
    assert "complete, generate, summarize, translate" in problem


def test_task_model_must_be_a_configured_model() -> None:
    problem = one_problem(VLLM_MODEL + "[tasks.translate]\nmodel = 'gpt-4'\n")
    assert problem.startswith("cato.toml: tasks.translate.model: 'gpt-4' is not a [[models]]")
    assert "'coder'" in problem


def test_min_above_max_replicas() -> None:
    problem = one_problem(VLLM_MODEL + "min_replicas = 2\nmax_replicas = 1\n")
    assert problem.startswith("cato.toml: models[0].max_replicas: must be >= min_replicas (2)")


@pytest.mark.parametrize("digest", ["abc", "z" * 64, "a" * 63, "a" * 65])
def test_bad_token_hash(digest: str) -> None:
    text = VLLM_MODEL + f"[[server.users]]\nname = 'x'\ntoken_sha256 = '{digest}'\n"
    problem = one_problem(text)
    assert problem.startswith("cato.toml: server.users[0].token_sha256: expected the hex SHA-256")


def test_duplicate_user_names() -> None:
    text = VLLM_MODEL + "".join(
        f"[[server.users]]\nname = 'x'\ntoken_sha256 = '{c * 64}'\n" for c in "ab"
    )
    assert one_problem(text).startswith("cato.toml: server.users[1].name: duplicate user name")


def test_external_needs_url_and_only_external_takes_one() -> None:
    problem = one_problem("[[models]]\nname = 'remote'\nengine = 'external'\n")
    assert problem.startswith("cato.toml: models[0].url: required for engine 'external'")
    problem = one_problem(VLLM_MODEL + "url = 'http://localhost:9000'\n")
    assert problem.startswith("cato.toml: models[0].url: only for engine 'external'")
    external = "[[models]]\nname = 'r'\nengine = 'external'\nurl = 'http://h:1/v1'\n"
    assert parse_config(external).models[0].url == "http://h:1/v1"


def test_vllm_needs_a_model_and_zero_gpus_means_cpu() -> None:
    text = "[gpus]\ndevices = [0]\n[[models]]\nname = 'm'\nengine = 'vllm'\n"
    problem = one_problem(text)
    assert problem.startswith("cato.toml: models[0].model: required for engine 'vllm'")
    cpu = parse_config(VLLM_MODEL + "gpus_per_replica = 0\n", "cato.toml")
    assert cpu.models[0].gpus == 0


def test_entrypoint_is_for_vllm_only() -> None:
    problem = one_problem("[[models]]\nname = 'm'\nengine = 'emulated'\nentrypoint = 'module'\n")
    assert problem.startswith("cato.toml: models[0].entrypoint: only for engine 'vllm'")


def test_engine_specific_keys_on_the_wrong_engine() -> None:
    problems = problems_of(VLLM_MODEL + "speed = 2.0\n")
    assert problems == [
        "cato.toml: models[0].speed: only for engine 'emulated', not 'vllm'",
    ]
    external = "[[models]]\nname = 'x'\nengine = 'external'\nurl = 'http://h:1'\n"
    assert one_problem(external + "gpus_per_replica = 1\n").startswith(
        "cato.toml: models[0].gpus_per_replica: must be 0 for engine 'external'"
    )
    text = "[[models]]\nname = 'e'\nengine = 'emulated'\nvllm_args = ['--x']\n"
    assert one_problem(text).startswith("cato.toml: models[0].vllm_args: only for engine 'vllm'")


def test_unknown_emulator_profile() -> None:
    text = "[[models]]\nname = 'e'\nengine = 'emulated'\nprofile = 'tiny@gpu'\n"
    problem = one_problem(text)
    assert problem.startswith("cato.toml: models[0].profile: unknown engine profile 'tiny@gpu'")
    assert "tiny@cpu" in problem
    text = text.replace("tiny@gpu", "profiles/mine.toml")
    assert parse_config(text).models[0].profile == "profiles/mine.toml"


def test_duplicate_model_names() -> None:
    text = VLLM_MODEL + "\n[[models]]\nname = 'coder'\nengine = 'emulated'\n"
    assert one_problem(text).startswith("cato.toml: models[1].name: duplicate model name 'coder'")


def test_duplicate_gpu_ids() -> None:
    text = VLLM_MODEL.replace("[0, 1]", "[0, 1, 1]")
    assert one_problem(text).startswith("cato.toml: gpus.devices[2]: GPU 1 is listed twice")


def test_min_replicas_must_fit_the_gpus() -> None:
    problem = one_problem(VLLM_MODEL + "min_replicas = 3\nmax_replicas = 3\n")
    assert problem.startswith("cato.toml: gpus.devices: the models' min_replicas need 3 GPUs")


def test_models_are_required() -> None:
    assert one_problem("[server]\nport = 1\n").startswith("cato.toml: models: missing")


def test_all_problems_are_reported_together() -> None:
    text = (
        "[server]\nport = 'x'\n"
        + VLLM_MODEL
        + "[tasks.complete]\nsla_ms = -1\n[provisioner]\nwindow = 5\n"
    )
    keys = [p.split(": ")[1] for p in problems_of(text)]
    assert keys == ["server.port", "tasks.complete.sla_ms", "provisioner.window"]


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cato.toml"
    path.write_text('[server]\nport = 8000\nhost = "127.0.0.1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "invalid TOML" in message and "line 3" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: no such file"]


def test_config_error_is_a_value_error_listing_every_problem() -> None:
    text = "[server]\nport = 'x'\nhost = 1\n" + VLLM_MODEL
    with pytest.raises(ValueError, match=r"2 problems") as info:
        parse_config(text, "team.toml")
    assert "team.toml: server.port" in str(info.value)
    assert "team.toml: server.host" in str(info.value)


def test_a_profile_on_a_vllm_model_is_the_schedulers_prior() -> None:
    from orchestrator.engine_model import load_profile
    from orchestrator.policy.state import Rates
    from orchestrator.runtime import prior_rates

    plain = parse_config(VLLM_MODEL).models[0]
    assert prior_rates(plain) == Rates()
    timed = parse_config(VLLM_MODEL + "profile = 'codellama-7b@a100'\n").models[0]
    assert prior_rates(timed) == Rates.from_profile(load_profile("codellama-7b@a100"))
    assert one_problem(VLLM_MODEL + "profile = 'nope@gpu'\n").startswith(
        "cato.toml: models[0].profile: unknown engine profile 'nope@gpu'"
    )


def test_emulated_replicas_may_claim_gpu_slots() -> None:
    text = "[gpus]\ndevices = [0, 1]\n[[models]]\nname = 'e'\nengine = 'emulated'\n"
    model = parse_config(text + "gpus_per_replica = 1\nmax_replicas = 2\n").models[0]
    assert model.gpus == 1


def test_initial_replicas_default_to_the_minimum_and_stay_within_bounds() -> None:
    base = "[[models]]\nname = 'e'\nengine = 'emulated'\nmin_replicas = 1\nmax_replicas = 4\n"
    assert parse_config(base).models[0].initial_replicas == 1
    assert parse_config(base + "initial_replicas = 3\n").models[0].initial_replicas == 3
    assert one_problem(base + "initial_replicas = 5\n") == (
        "cato.toml: models[0].initial_replicas: must be within min_replicas..max_replicas "
        "(1..4), got 5"
    )


# ---------------------------------------------------------------- SLA floors, late calls, scheduler


def test_config_policies_match_the_scheduler_registry() -> None:
    schema = CatoConfig.model_json_schema()["$defs"]["SchedulerConfig"]["properties"]
    assert set(schema["policy"]["enum"]) == set(SCHEDULERS)


def test_sla_floors_default_to_the_kinds_sla_and_may_be_lowered() -> None:
    config = parse_config(VLLM_MODEL + "[tasks.complete]\nsla_ms = 800\nsla_floor_ms = 300\n")
    assert config.sla_floors_ms() == {
        "complete": 300.0,
        "generate": 1000.0,
        "summarize": 6000.0,
        "translate": 20000.0,
    }


def test_a_floor_above_the_kinds_own_sla_names_the_key() -> None:
    problem = one_problem(VLLM_MODEL + "[tasks.generate]\nsla_floor_ms = 1500\n")
    assert problem == ("cato.toml: tasks.generate.sla_floor_ms: must be <= sla_ms (1000), got 1500")


def test_user_floors_name_the_kind_and_bad_values() -> None:
    text = USERS.replace(
        "max_concurrency = 3", "max_concurrency = 3\nsla_floor_ms = {complete = 0, refactor = 5}"
    )
    assert problems_of(text) == [
        "cato.toml: server.users[0].sla_floor_ms.complete: must be > 0 and <= 3600000 ms, got 0.0",
        "cato.toml: server.users[0].sla_floor_ms.refactor: unknown task kind "
        "(expected one of complete, generate, summarize, translate)",
    ]
    ok = parse_config(USERS.replace("max_concurrency = 3", "sla_floor_ms = {complete = 2000}"))
    assert ok.server.users[0].sla_floor_ms == {"complete": 2000.0}


def test_on_late_per_kind() -> None:
    config = parse_config(VLLM_MODEL + '[tasks.complete]\non_late = "shed"\n')
    assert config.tasks.complete.on_late == "shed" and config.tasks.generate.on_late == "wait"
    # Through the graphs' defaults to each model call; a request's own choice wins.
    defaults = task_defaults(config)
    shed = build_graph(TaskRequest(kind=TaskKind.COMPLETE, prompt="x"), defaults)
    assert shed.on_late == "shed"
    assert all(make_call(shed, n, 1.0, 0.0).shed_late for n in shed.llm_nodes())
    waits = TaskRequest(kind=TaskKind.COMPLETE, prompt="x", on_late="wait")
    assert build_graph(waits, defaults).on_late == "wait"
    asks = TaskRequest(kind=TaskKind.GENERATE, code="# add", on_late="shed")
    assert build_graph(asks, defaults).on_late == "shed"
    assert build_graph(asks.model_copy(update={"on_late": None}), defaults).on_late == "wait"
    problem = one_problem(VLLM_MODEL + '[tasks.summarize]\non_late = "drop"\n')
    assert problem.startswith("cato.toml: tasks.summarize.on_late: Input should be 'wait' or")


def test_scheduler_knobs_are_for_cato_only_and_reach_the_scheduler() -> None:
    config = parse_config(
        VLLM_MODEL
        + "[scheduler]\nlate_bound = inf\nurgent_margin = 0.2\nbest_fit = true\nfit_margin = 0.6\n"
        + "affinity_tolerance = 0.5\n"
    )
    options = config.scheduler.options()
    assert options == {
        "urgent_margin": 0.2,
        "late_bound": math.inf,
        "best_fit": True,
        "fit_margin": 0.6,
        "affinity_tolerance": 0.5,
    }
    sched = make_scheduler(config.scheduler.policy, **options)
    assert isinstance(sched, CatoScheduler)
    assert (sched.urgent_margin, sched.late_bound, sched.best_fit) == (0.2, math.inf, True)
    assert (sched.fit_margin, sched.affinity_tolerance) == (0.6, 0.5)
    assert CatoScheduler().affinity_tolerance == 2.0  # the default when it is not set
    assert one_problem(VLLM_MODEL + "[scheduler]\naffinity_tolerance = -1\n").startswith(
        "cato.toml: scheduler.affinity_tolerance: Input should be greater than or equal to 0"
    )
    assert parse_config(VLLM_MODEL).scheduler.options() == {}
    problems = problems_of(VLLM_MODEL + '[scheduler]\npolicy = "pow2"\nlate_bound = 2.0\n')
    assert problems == [
        "cato.toml: scheduler.late_bound: only for policy 'cato' or 'cato_triage', not 'pow2'"
    ]
    problem = one_problem(VLLM_MODEL + "[scheduler]\nurgent_margin = 1.5\n")
    assert problem.startswith("cato.toml: scheduler.urgent_margin: Input should be less than 1")


def test_admission_is_chosen_in_the_scheduler_section() -> None:
    emulated = "[[models]]\nname = 'm'\nengine = 'emulated'\nprofile = 'tiny@cpu'\n"
    default = admission_policy(parse_config(emulated))
    assert isinstance(default, NetSlackAdmission)  # auto, next to cato
    assert "m" in default._costs  # the emulated engine's own step costs
    assert admission_policy(parse_config(emulated + "[scheduler]\npolicy = 'pow2'\n")) is None
    off = emulated + "[scheduler]\nadmission = 'none'\n"
    assert admission_policy(parse_config(off)) is None
    plain = admission_policy(parse_config(emulated + "[scheduler]\nadmission = 'slack'\n"))
    assert type(plain) is SlackAdmission
    problem = one_problem(emulated + "[scheduler]\nadmission = 'greedy'\n")
    assert problem.startswith("cato.toml: scheduler.admission: Input should be 'auto'")
