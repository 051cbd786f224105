"""Deterministic code-like output text and the emulator's token counting.

Real models are not needed to exercise an orchestrator, but the text they stream should
look like code (lines, indentation, identifiers) so that post-processing, stop strings
and validation have something realistic to chew on. The same (server seed, prompt,
request seed) always gives the same text; greedy requests (temperature 0) ignore the
request seed, as a real engine would.

Token counting is an approximation: one token per 4 characters of prompt (rounded up),
the usual rule of thumb for code tokenizers; chat prompts add 4 tokens per message for
the template. Generated tokens are pieces of about that size (a word, an operator, a
newline with its indentation), and each one is one streamed chunk.
"""

from __future__ import annotations

import hashlib
import itertools
import keyword
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4

FinishReason = Literal["stop", "length"]

_NAMES = (
    "result", "items", "value", "count", "data", "node", "key", "total", "index", "buffer",
    "config", "path", "line", "name", "size", "text", "queue", "cache", "item", "entry",
    "offset", "limit", "state", "parts", "request", "response", "token", "row", "field",
)  # fmt: skip
_VERBS = (
    "parse", "load", "update", "compute", "render", "merge", "split", "validate", "build",
    "resolve", "collect", "encode", "decode", "fetch", "normalize", "flush", "apply",
)  # fmt: skip
_METHODS = ("append", "get", "items", "strip", "split", "join", "pop", "update", "extend")
_BUILTINS = ("len", "sorted", "min", "max", "sum", "list", "str", "int", "tuple")
_OPS = ("==", "!=", "<", ">", "<=", ">=", "in", "not in")
_COMMENTS = (
    "keep the order stable",
    "skip empty entries",
    "cache the result for later",
    "handle the error case later",
    "fast path for small inputs",
    "normalize before comparing",
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,24}")
_MARKER = re.compile(r"<[|\uff5c]?[A-Za-z_\u2581]{2,20}[|\uff5c]?>|\[(?:PREFIX|SUFFIX)\]")
_PIECE = re.compile(r" ?_?[A-Za-z][a-z0-9]*| ?\d+| ?[^\w\s]{1,2}| +|_")
_KEYWORDS = frozenset(keyword.kwlist) | {"self", "cls"}


def count_tokens(text: str) -> int:
    """Approximate token count of a prompt: ceil(characters / 4), at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def count_chat_tokens(contents: Sequence[str]) -> int:
    """Approximate token count of chat messages, with the template's per-message cost."""
    return sum(count_tokens(c) + CHAT_TOKENS_PER_MESSAGE for c in contents) + 2


@dataclass(frozen=True, slots=True)
class Completion:
    """A planned output: the text delta of each generated token and how it ends.

    ``deltas`` has one entry per token; entries are empty where a stop string was cut
    out of the text (the engine still generated those tokens).
    """

    deltas: tuple[str, ...]
    finish_reason: FinishReason
    stop_reason: str | None

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def num_tokens(self) -> int:
        return len(self.deltas)


class TextGenerator:
    """Plans completions: how many tokens, which text, and why they end."""

    def __init__(self, seed: int = 0, mean_tokens: float = 128.0, sigma: float = 0.8) -> None:
        if mean_tokens <= 0 or sigma < 0:
            raise ValueError("mean_tokens must be > 0 and sigma >= 0")
        self.seed = seed
        self.mean_tokens = mean_tokens
        self.sigma = sigma
        self._mu = math.log(mean_tokens) - sigma * sigma / 2.0

    def plan(
        self,
        prompt: str,
        max_tokens: int,
        *,
        request_seed: int | None = None,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        min_tokens: int = 0,
        include_stop: bool = False,
    ) -> Completion:
        """The completion of ``prompt``: EOS at the end of the line where a lognormal
        length falls, capped by ``max_tokens`` (exactly ``max_tokens`` with
        ``ignore_eos``), cut at a stop string.

        As in vLLM, ``min_tokens`` holds back both EOS and stop strings until that many
        tokens exist (a stop string counts only if it ends after them), so
        ``min_tokens == max_tokens`` gives exactly ``max_tokens`` tokens."""
        rng = self._rng(prompt, None if temperature == 0 else request_seed)
        natural = max(1, min_tokens, round(rng.lognormvariate(self._mu, self.sigma)))
        if ignore_eos or natural >= max_tokens:
            count, finish = max_tokens, "length"
        else:
            count, finish = natural, "stop"
        stream = generate_tokens(rng, _names_from(prompt), _depth_after(prompt))
        tokens = list(itertools.islice(stream, count))
        reason: FinishReason = "stop" if finish == "stop" else "length"
        if reason == "stop" and tokens and not tokens[-1].startswith("\n"):
            tokens, reason = _end_of_line(tokens, stream, max_tokens, min_tokens)
        return _apply_stop(tokens, stop, reason, include_stop, min_tokens)

    def _rng(self, prompt: str, request_seed: int | None) -> random.Random:
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{self.seed}\x00{request_seed}\x00".encode())
        digest.update(prompt.encode("utf-8", "surrogatepass"))
        return random.Random(int.from_bytes(digest.digest(), "big"))


def _end_of_line(
    tokens: list[str], stream: Iterator[str], max_tokens: int, min_tokens: int
) -> tuple[list[str], FinishReason]:
    """A model ends at the end of a statement, not inside one: the line ``tokens`` ends
    in is finished where ``max_tokens`` allows, else dropped back to the line before
    (not below ``min_tokens``); where neither can be, the limit cuts it."""
    extended = list(tokens)
    for token in stream:
        if token.startswith("\n"):
            return extended, "stop"
        if len(extended) == max_tokens:
            break
        extended.append(token)
    breaks = [i for i, token in enumerate(tokens) if token.startswith("\n")]
    if breaks and breaks[-1] + 1 >= max(min_tokens, 1):
        return tokens[: breaks[-1] + 1], "stop"
    return extended, "length"


def _apply_stop(
    tokens: list[str],
    stop: Sequence[str],
    finish: FinishReason,
    include_stop: bool,
    min_tokens: int = 0,
) -> Completion:
    """Cut the text at the first stop string (before it, or after it with
    ``include_stop``); generation ends on the token that completes the stop string.
    Only a stop string that ends after the first ``min_tokens`` tokens counts."""
    stops = [s for s in stop if s]
    if not stops or min_tokens >= len(tokens):
        return Completion(tuple(tokens), finish, None)
    text = "".join(tokens)
    held = len("".join(tokens[:min_tokens]))  # stop strings must end past this
    hits = [(text.find(s, max(0, held - len(s) + 1)), s) for s in stops]
    found = [(pos, s) for pos, s in hits if pos >= 0]
    if not found:
        return Completion(tuple(tokens), finish, None)
    start_at, matched = min(found, key=lambda h: (h[0], -len(h[1])))
    end = start_at + len(matched)
    cut = end if include_stop else start_at
    deltas: list[str] = []
    start = 0
    for token in tokens:
        deltas.append(text[start : min(start + len(token), cut)] if start < cut else "")
        start += len(token)
        if start >= end:
            break
    return Completion(tuple(deltas), "stop", matched)


def _names_from(prompt: str) -> tuple[str, ...]:
    """Identifiers near the end of the prompt, so the output reuses the code's names
    (not those of its format's markers, such as ``<fim_suffix>``)."""
    text = _MARKER.sub(" ", prompt[-2000:])
    seen = dict.fromkeys(m for m in _IDENT.findall(text) if m not in _KEYWORDS)
    return tuple(list(seen)[-24:]) + _NAMES


# What separates the text before the cursor from the text after it in the FIM formats
# that put the prefix first (StarCoder, CodeLlama, DeepSeek, Qwen); a model fills in
# after the prefix, not after the prompt's last marker.
_FIM_HOLES = ("<fim_suffix>", " <SUF>", "<\uff5cfim\u2581hole\uff5c>", "<|fim_suffix|>")


def _fim_prefix(prompt: str) -> str:
    """The text a completion of ``prompt`` continues: its FIM prefix where it has one."""
    for hole in _FIM_HOLES:
        at = prompt.rfind(hole)
        if at >= 0:
            return prompt[:at]
    return prompt


def _depth_after(prompt: str) -> int:
    """Indentation depth at which the prompt leaves off (a FIM prompt: its prefix), so a
    completion continues there."""
    last = _fim_prefix(prompt).rstrip("\n").rsplit("\n", 1)[-1]
    depth = (len(last) - len(last.lstrip(" "))) // 4 + (1 if last.rstrip().endswith(":") else 0)
    return min(depth, 4)


def generate_tokens(
    rng: random.Random, names: Sequence[str] = _NAMES, depth: int = 0
) -> Iterator[str]:
    """An endless stream of code-like tokens: Python-ish lines split into small pieces."""
    run = 0  # statements since the indentation last changed
    while True:
        line, depth_after = _line(rng, depth, run, names)
        yield from _PIECE.findall(line)
        run = run + 1 if depth_after == depth else 0
        depth = depth_after
        yield ("\n\n" if depth == 0 else "\n") + "    " * depth


def _line(rng: random.Random, depth: int, run: int, names: Sequence[str]) -> tuple[str, int]:
    """One statement at ``depth`` and the indentation depth of the next line.

    Blocks close more and more likely as they grow, so functions stay a dozen lines long.
    """
    name = rng.choice(names)
    other = rng.choice(names)
    if depth == 0:
        args = ", ".join(rng.sample(names, rng.randint(1, 3)))
        return f"def {rng.choice(_VERBS)}_{name}({args}):", 1
    roll = rng.random()
    close = min(0.6, 0.06 * run)
    if roll < close:
        if depth == 1 or rng.random() < 0.3:
            return f"return {name}", depth - 1
        return f"{name} = {rng.choice(_BUILTINS)}({other})", depth - 1
    roll = rng.random()
    if roll < 0.12 and depth < 4:
        return f"for {name} in {other}:", depth + 1
    if roll < 0.24 and depth < 4:
        if rng.random() < 0.3:
            return f"if {name} {rng.choice(('is', 'is not'))} None:", depth + 1
        return (
            f"if {name} {rng.choice(_OPS)} {rng.choice((other, str(rng.randint(0, 99))))}:",
            depth + 1,
        )
    if roll < 0.32:
        return f"# {rng.choice(_COMMENTS)}", depth
    if roll < 0.50:
        return f"{name}.{rng.choice(_METHODS)}({other})", depth
    if roll < 0.68:
        return f"{name} = {rng.choice(_BUILTINS)}({other})", depth
    if roll < 0.86:
        return f"{name} = {rng.choice(_VERBS)}_{other}({name}, {rng.randint(0, 64)})", depth
    return f"{name} += {other}[{rng.randint(0, 9)}]", depth
