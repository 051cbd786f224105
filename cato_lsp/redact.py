"""Keeping the bearer token out of every log line and every message to the editor.

The token reaches the server inside LSP messages (`initializationOptions`,
`workspace/didChangeConfiguration`, the answer to `workspace/configuration`), and
pygls logs those messages whole, some before the server has parsed its settings. So
the token is learned from each raw message as soon as it is read, before anything can
log it, and from then on every log record (any logger: the formatter of the root
handler scrubs the finished line, traceback included) and every message sent to the
client is scrubbed of every token seen so far.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

MASK: Final = "***"

_SECTION: Final = "cato"
_SETTINGS_KEY: Final = "token"


class Secrets:
    """The token values seen so far; once seen, a value stays secret for the process.

    Logs are scrubbed of every value. Messages to the client only of values of
    `MESSAGE_MIN_CHARS` or more: masking a 3-letter "token" in every message would
    silently change the code the editor inserts (and the service refuses such tokens).
    Read from logging threads while the event loop adds to it: the values live in
    tuples that are replaced whole, never mutated.
    """

    MESSAGE_MIN_CHARS: Final = 8

    def __init__(self) -> None:
        self._values: tuple[str, ...] = ()
        self._forms: tuple[str, ...] = ()
        self._message_forms: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._values)

    def add(self, value: object) -> None:
        if not isinstance(value, str) or not value or value in self._values:
            return
        self._values = (*self._values, value)
        # as written in text, in JSON and in a repr; longest first, so that a token
        # holding another one is masked whole
        forms = {value, json.dumps(value)[1:-1], repr(value)[1:-1]}
        self._forms = _longest_first(self._forms, forms)
        if len(value) >= self.MESSAGE_MIN_CHARS:
            self._message_forms = _longest_first(self._message_forms, forms)

    def scrub(self, text: str) -> str:
        """A log line without any token."""
        return _mask(text, self._forms)

    def found_in(self, message: str) -> bool:
        """Whether a message to the client (as JSON text) holds a token."""
        return any(form in message for form in self._message_forms)

    def scrub_json(self, value: Any) -> Any:
        """A message to the client with every string (keys too) scrubbed; the structure
        is kept, so the result is still valid JSON whatever characters the token holds."""
        if isinstance(value, str):
            return _mask(value, self._message_forms)
        if isinstance(value, list):
            return [self.scrub_json(item) for item in value]
        if isinstance(value, dict):
            return {
                _mask(str(k), self._message_forms): self.scrub_json(v) for k, v in value.items()
            }
        return value

    def learn(self, message: object) -> None:
        """Take the tokens out of the settings a raw (decoded JSON) message carries."""
        if not isinstance(message, Mapping):
            return
        params = message.get("params")
        method = message.get("method")
        if method == "initialize" and isinstance(params, Mapping):
            self._learn_layer(params.get("initializationOptions"))
        elif method == "workspace/didChangeConfiguration" and isinstance(params, Mapping):
            self._learn_layer(params.get("settings"))
        elif method is None and "result" in message:  # an answer to workspace/configuration
            result = message["result"]
            for layer in result if isinstance(result, list) else [result]:
                self._learn_layer(layer)

    def _learn_layer(self, layer: object) -> None:
        if isinstance(layer, Mapping):
            self.add(layer.get(_SETTINGS_KEY))
            section = layer.get(_SECTION)
            if isinstance(section, Mapping):
                self.add(section.get(_SETTINGS_KEY))


def _longest_first(old: tuple[str, ...], new: set[str]) -> tuple[str, ...]:
    return tuple(sorted({*old, *new}, key=len, reverse=True))


def _mask(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then masks every known token in the whole line (message,
    arguments and traceback alike). A record that cannot be formatted becomes a short
    notice, so logging's own error report (which prints the raw arguments) never runs."""

    def __init__(self, secrets: Secrets, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        try:
            text = super().format(record)
        except Exception as exc:
            text = f"{record.levelname} {record.name}: unformattable record ({type(exc).__name__})"
        # a lone surrogate (valid in JSON strings) would make the handler's write fail
        return self.secrets.scrub(text).encode("utf-8", "backslashreplace").decode("utf-8")
