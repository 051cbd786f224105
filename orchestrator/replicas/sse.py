"""Server-sent events: an incremental parser of the ``text/event-stream`` format."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event (its ``data:`` lines joined by newlines)."""

    data: str
    event: str | None = None


@dataclass
class SSEDecoder:
    """Incremental SSE parser: feed it bytes in arbitrary pieces, get whole events.

    Follows the WHATWG rules: CRLF, LF or CR end a line (a CR at the end of a piece
    waits for the next piece, which may start with its LF), ``:`` lines are comments,
    one optional space after the field colon, a blank line dispatches. UTF-8 sequences
    split between pieces are reassembled.

    It runs once per read of every stream, so the common piece (whole UTF-8, LF only)
    takes a short path: one ``bytes.decode`` and one ``split``.
    """

    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="strict")
    )
    _buf: str = ""
    _data: list[str] = field(default_factory=list)
    _event: str | None = None
    _started: bool = False
    _partial: bool = False  # the incremental decoder holds part of a UTF-8 sequence

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._feed_text(self._decode(chunk, final=False), final=False)

    def close(self) -> list[SSEEvent]:
        """Flush at end of stream; a last event without its blank line still counts."""
        events = self._feed_text(self._decode(b"", final=True), final=True)
        if self._buf:
            self._line(self._buf, events)
            self._buf = ""
        self._dispatch(events)
        return events

    def _decode(self, chunk: bytes, *, final: bool) -> str:
        text: str | None = None
        if not self._partial and not final:
            try:
                text = chunk.decode()
            except UnicodeDecodeError:
                text = None  # maybe a sequence split at the end: the slow path knows
        if text is None:
            try:
                text = self._decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                raise ValueError(f"invalid UTF-8 in event stream: {exc}") from exc
            self._partial = bool(self._decoder.getstate()[0])
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return text

    def _feed_text(self, text: str, *, final: bool) -> list[SSEEvent]:
        buf = self._buf + text if self._buf else text
        held = ""
        if "\r" in buf:
            if buf.endswith("\r") and not final:
                buf, held = buf[:-1], "\r"
            buf = buf.replace("\r\n", "\n").replace("\r", "\n")
        lines = buf.split("\n")
        self._buf = lines.pop() + held
        events: list[SSEEvent] = []
        for line in lines:
            if line.startswith("data:"):  # nearly every line: no method call for it
                self._data.append(line[6:] if line[5:6] == " " else line[5:])
            elif line:
                self._line(line, events)
            elif self._data:
                events.append(SSEEvent("\n".join(self._data), self._event))
                self._data = []
                self._event = None
            else:
                self._event = None
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(SSEEvent("\n".join(self._data), self._event))
        self._data = []
        self._event = None
