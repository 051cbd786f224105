"""Output lengths fixed in advance: the emulator's exact-length mode.

An engine cannot know how long the answer to a prompt "really" is, so on its own the
emulator draws a length. A benchmark that replays a workload knows each call's true
output length, and for live pressure to be the workload's pressure the engine must
generate exactly that many tokens. A client of vLLM gets that with ``min_tokens`` equal
to ``max_tokens``; here the benchmark cannot change the requests (they come from the
orchestrator under test, which must not see the lengths), so it hands the emulator a
table instead: prompt -> tokens. A listed prompt is served as if its request had said
``min_tokens = max_tokens = min(tokens, max_tokens)``: neither EOS nor a stop string
ends it early. Prompts are keyed by a digest of their text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

# Where ``cato emulate`` finds a table when not given ``--output-lengths`` (so replicas
# started by a service inherit it from the service's environment).
LENGTHS_ENV = "CATO_EMULATOR_OUTPUT_LENGTHS"


def prompt_key(prompt: str) -> str:
    """The table key of a prompt: a short digest of its exact text."""
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class LengthTable:
    """Prompt digest -> output tokens; builds by ``add``, then saved and loaded as JSON."""

    def __init__(self, lengths: Mapping[str, int] | None = None) -> None:
        self.lengths: dict[str, int] = dict(lengths or {})
        self.conflicts = 0  # prompts added twice with different lengths (the first kept)

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, prompt: str, tokens: int) -> None:
        if tokens < 1:
            raise ValueError(f"an output length must be >= 1, got {tokens}")
        key = prompt_key(prompt)
        known = self.lengths.setdefault(key, tokens)
        if known != tokens:
            self.conflicts += 1

    def get(self, prompt: str) -> int | None:
        return self.lengths.get(prompt_key(prompt))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.lengths, separators=(",", ":")), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LengthTable:
        """Read a saved table; a clear ``ValueError`` when the file is not one."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read output lengths from {path}: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in data.items()
        ):
            raise ValueError(f"{path}: expected a JSON object of prompt digest -> tokens >= 1")
        return cls(data)
