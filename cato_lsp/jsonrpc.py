"""JSON-RPC as the spec says it, over pygls: every request gets exactly one answer.

pygls decodes a message inside its read loop with `json.loads(..., object_hook=...)`;
a body that is not JSON, is not a JSON-RPC message, or whose params do not fit the
method's types is logged and dropped, so the editor waits for its own timeout. Here the
server reads the frames itself and answers those with -32700 (id null), -32600 and
-32602 (naming each field at fault and what was expected). Notifications get no answer
in JSON-RPC: a bad one is dropped with a log line. A request after `shutdown` gets
-32600, as LSP says, instead of silence.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, Final, TypeGuard

import attrs
from cattrs.errors import ClassValidationError
from cattrs.v import format_exception, transform_error
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
)

from cato_lsp.redact import Secrets

log = logging.getLogger(__name__)

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
VERSION: Final = "2.0"

_MAX_PROBLEMS: Final = 8
_MAX_VALUE_CHARS: Final = 40


class Rejected(Exception):
    """A message that is answered with an error (a request) or dropped (a notification)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def valid_id(value: object) -> TypeGuard[str | int]:
    """LSP request ids are integers or strings (JSON-RPC's null id is not one)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _camel(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.title() for part in rest)


def _json_path(where: str) -> list[str | int]:
    """cattrs' `.text_document.position[0]['key']` as JSON keys and indices."""
    parts: list[str | int] = []
    for segment in where.replace("[", ".[").split("."):
        if not segment:
            continue
        if segment.startswith("[") and segment.endswith("]"):
            inner = segment[1:-1]
            parts.append(int(inner) if inner.isdigit() else inner.strip("'\""))
        else:
            parts.append(_camel(segment))
    return parts


def _show_path(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(message)"


_MISSING: Final = object()


def _value_at(data: Any, parts: list[str | int]) -> Any:
    for part in parts:
        if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            data = data[part]
            continue
        if not (isinstance(part, str) and isinstance(data, dict) and part in data):
            return _MISSING
        data = data[part]
    return data


def _show_value(value: Any) -> str:
    kind = {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
    if isinstance(value, list | dict):
        return f"{kind} of {len(value)}"
    shown = json.dumps(value)
    if len(shown) > _MAX_VALUE_CHARS:
        shown = shown[: _MAX_VALUE_CHARS - 3] + "..."
    return kind if value is None else f"{kind} {shown}"


def _describe(exc: BaseException, expected: type | None) -> str:
    if isinstance(exc, ValueError) and expected is None and str(exc):
        return str(exc)  # lsprotocol's range checks say what they want and what they got
    return format_exception(exc, expected)


def problems(exc: ClassValidationError, data: Any) -> list[str]:
    """One line per field at fault: its JSON path, what was expected, what came."""
    lines = []
    for line in transform_error(exc, path="", format_exception=_describe):
        what, _, where = line.rpartition(" @ ")
        parts = _json_path(where)
        value = _value_at(data, parts)
        # a range check names the value itself; an object is shown only against a type
        shown = value is not _MISSING and (not isinstance(value, dict | list) or "expected" in what)
        got = f" (got {_show_value(value)})" if shown else ""
        lines.append(f"{_show_path(parts)}: {what}{got}")
    return lines


def _summary(method: str, found: list[str]) -> str:
    shown = "; ".join(found[:_MAX_PROBLEMS])
    more = len(found) - _MAX_PROBLEMS
    return f"Invalid params for {method}: {shown}" + (f"; and {more} more" if more > 0 else "")


class StrictProtocol(LanguageServerProtocol):
    """pygls' LSP protocol, fed one framed body at a time by `read_messages`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secrets = Secrets()
        self._writes: set[asyncio.Future[Any]] = set()

    # -- receiving --------------------------------------------------------------------

    def receive(self, body: bytes) -> None:
        """Decode, check and handle one message body; never raises."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            log.warning("unparsable message of %d bytes: %s", len(body), type(exc).__name__)
            self.reply_error(None, PARSE_ERROR, f"Parse error: {_short(exc)}")
            return
        self.secrets.learn(data)  # before anything below can log the message
        try:
            message = self._structure(data)
        except Exception as exc:
            if not isinstance(exc, Rejected):  # a bug of ours, still an answer
                log.exception("failed to read a message")
                exc = Rejected(INTERNAL_ERROR, f"Internal error: {_short(exc)}")
            if _is_response(data):
                return  # logged above; a response is never answered
            if isinstance(data, dict) and "method" in data and "id" not in data:
                log.warning("dropped a notification: %s", exc.message)
            else:
                msg_id = data.get("id") if isinstance(data, dict) else None
                reply_to = msg_id if valid_id(msg_id) else None
                self.reply_error(reply_to, exc.code, exc.message, exc.data)
            return
        if message is None:
            return
        try:
            self.handle_message(message)
        except Exception as exc:  # pygls answers handler errors; this is a last resort
            log.exception("failed to handle %s", getattr(message, "method", "a message"))
            msg_id = getattr(message, "id", None)
            if hasattr(message, "method") and valid_id(msg_id):
                self.reply_error(msg_id, INTERNAL_ERROR, f"Internal error: {_short(exc)}")

    def _structure(self, data: Any) -> Any:
        """The typed message, None for one already dealt with; Rejected if unusable."""
        if not isinstance(data, dict):
            what = "an array (batches are not part of LSP)" if isinstance(data, list) else None
            raise Rejected(
                INVALID_REQUEST,
                f"Invalid request: expected an object, got {what or _show_value(data)}",
            )
        if _is_response(data):  # never answered, whatever is wrong with it
            self._structure_response(data)
            return None
        if data.get("jsonrpc") != VERSION:
            raise Rejected(INVALID_REQUEST, f'Invalid request: "jsonrpc" must be "{VERSION}"')
        if "method" not in data:
            raise Rejected(INVALID_REQUEST, 'Invalid request: no "method"')
        method = data["method"]
        if "id" in data and not valid_id(data["id"]):
            got = _show_value(data["id"])
            raise Rejected(
                INVALID_REQUEST, f'Invalid request: "id" must be an integer or a string, got {got}'
            )
        if not isinstance(method, str):
            raise Rejected(
                INVALID_REQUEST,
                f'Invalid request: "method" must be a string, got {_show_value(method)}',
            )
        if "id" in data and self._shutdown and method != types.EXIT:
            raise Rejected(INVALID_REQUEST, f"{method} after shutdown")
        message_type = self.get_message_type(method)
        if message_type is not None and attrs.has(message_type):
            is_request = "id" in attrs.fields_dict(message_type)
            if "id" in data and not is_request:
                raise Rejected(
                    INVALID_REQUEST, f"{method} is a notification: send it without an id"
                )
            if "id" not in data and is_request:
                raise Rejected(INVALID_REQUEST, f"{method} is a request: it needs an id")
        if message_type is None or not self._handles(method):
            # nobody handles it: pygls answers MethodNotFound without looking at params
            if "id" in data:
                return JsonRPCRequestMessage(
                    id=data["id"], method=method, jsonrpc=VERSION, params=None
                )
            return JsonRPCNotification(method=method, jsonrpc=VERSION, params=None)
        try:
            return self._converter.structure(data, message_type)
        except ClassValidationError as exc:
            found = problems(exc, data)
            raise Rejected(INVALID_PARAMS, _summary(method, found), {"problems": found}) from None
        except Exception as exc:  # a converter hook that failed some other way
            raise Rejected(INVALID_PARAMS, f"Invalid params for {method}: {_short(exc)}") from None

    def _handles(self, method: str) -> bool:
        return (
            method == types.CANCEL_REQUEST
            or method in self.fm.builtin_features
            or method in self.fm.features
        )

    def _structure_response(self, data: dict[str, Any]) -> None:
        """An answer to one of the server's requests: the waiting future gets the result,
        or an error when the answer does not fit (it would otherwise wait forever)."""
        msg_id = data.get("id")
        if not valid_id(msg_id):
            log.warning("dropped a response with id %s", _show_value(msg_id))
            return
        if "error" in data:
            response_type: Any = types.ResponseErrorMessage
        else:
            response_type = self._result_types.pop(msg_id, None) or JsonRPCResponseMessage
        try:
            if data.get("jsonrpc") != VERSION:
                raise ValueError(f'"jsonrpc" must be "{VERSION}"')
            message = self._converter.structure(data, response_type)
        except Exception as exc:
            found = problems(exc, data) if isinstance(exc, ClassValidationError) else [_short(exc)]
            log.warning("response to %r does not fit: %s", msg_id, "; ".join(found))
            error = types.ResponseError(code=INVALID_PARAMS, message="; ".join(found))
            self._handle_response(msg_id, None, error)
            return
        self.handle_message(message)

    # -- sending ----------------------------------------------------------------------

    def reply_error(self, msg_id: Any, code: int, message: str, data: Any = None) -> None:
        """An error response; a null id is written out, as JSON-RPC wants it."""
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self._send_data({"jsonrpc": VERSION, "id": msg_id, "error": error})

    def _send_data(self, data: Any) -> None:
        """pygls' sender, with every known token scrubbed, and an answer that cannot be
        serialized replaced by an InternalError for its id (rather than no answer)."""
        if not data:
            return
        if self.writer is None:
            log.error("no transport to send to")
            return
        try:
            body = json.dumps(data, default=self._serialize_message)
        except Exception as exc:
            log.exception("cannot serialize a message")
            msg_id = getattr(data, "id", None)
            if any(hasattr(data, name) for name in ("result", "error")) and valid_id(msg_id):
                self.reply_error(msg_id, INTERNAL_ERROR, f"Internal error: {_short(exc)}")
            return
        if self.secrets.found_in(body):  # also finds a token in its JSON-escaped form
            body = json.dumps(self.secrets.scrub_json(json.loads(body)))
        log.debug("Sending data: %s", body)
        encoded = body.encode(self.CHARSET)
        if self._include_headers:
            header = (
                f"Content-Length: {len(encoded)}\r\n"
                f"Content-Type: {self.CONTENT_TYPE}; charset={self.CHARSET}\r\n\r\n"
            )
            encoded = header.encode("ascii") + encoded
        try:
            written = self.writer.write(encoded)
            if inspect.isawaitable(written):
                pending = asyncio.ensure_future(written)
                self._writes.add(pending)
                pending.add_done_callback(self._writes.discard)
        except BrokenPipeError:
            log.error("the client is gone (broken pipe)")
            raise
        except Exception as exc:
            log.exception("error sending data")
            self._server._report_server_error(exc, JsonRpcException)


def _is_response(data: Any) -> bool:
    return isinstance(data, dict) and "method" not in data and ("result" in data or "error" in data)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


async def read_messages(
    reader: Any, protocol: StrictProtocol, on_error: Callable[[Exception, type], Any]
) -> None:
    """Read `Content-Length` framed bodies until the input ends and hand each over.

    Headers are matched without regard to case or stray spaces; a header line the
    reader refuses (too long) or a header block without a length is skipped with a log
    line; nothing a client sends ends the loop except the end of the input.
    """
    length: int | None = None
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than the stream's limit: the reader dropped it
            log.warning("dropped a header line past the reader's limit")
            length = None
            continue
        if not line:
            return
        line = line.strip()
        if line:
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"content-length":
                text = value.strip()
                length = int(text) if text.isdigit() else None
                if length is None:
                    log.warning("ignored Content-Length %r", text[:40])
            continue
        if length is None:
            continue  # a blank line outside a header block, or a block with no length
        size, length = length, None
        try:
            body = await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            return
        if len(body) < size:
            return
        try:
            protocol.receive(body)
        except Exception as exc:  # receive() answers everything itself; keep reading
            log.exception("failed to handle a message")
            on_error(exc, JsonRpcException)
