"""Open documents as the features see them: immutable views, offsets, languages.

Features work on `DocumentView` snapshots taken when a request arrives, so an edit
that lands while a model call runs cannot change the text a request is about. Positions
that do not exist become JSON-RPC `InvalidParams` errors, not crashes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Final
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.uris import to_fs_path
from pygls.workspace import Workspace

from cato_lsp.context import PositionError, offset_at

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

_EXTENSION_LANGUAGES: Final = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".jsx": "javascriptreact", ".ts": "typescript", ".tsx": "typescriptreact",
    ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".cs": "csharp", ".rb": "ruby",
    ".php": "php", ".swift": "swift", ".scala": "scala", ".lua": "lua", ".sh": "shellscript",
    ".sql": "sql", ".hs": "haskell", ".r": "r", ".jl": "julia", ".dart": "dart",
}  # fmt: skip

LANGUAGE_EXTENSIONS: Final = {
    "python": ".py", "javascript": ".js", "typescript": ".ts", "go": ".go", "rust": ".rs",
    "java": ".java", "kotlin": ".kt", "c": ".c", "cpp": ".cpp", "csharp": ".cs",
    "ruby": ".rb", "php": ".php", "swift": ".swift", "scala": ".scala", "lua": ".lua",
    "shellscript": ".sh", "sql": ".sql", "haskell": ".hs", "r": ".R", "julia": ".jl",
    "dart": ".dart", "javascriptreact": ".jsx", "typescriptreact": ".tsx",
}  # fmt: skip

_HASH_COMMENTS: Final = frozenset(
    {"python", "ruby", "shellscript", "r", "julia", "perl", "yaml", "toml", "makefile"}
)
_DASH_COMMENTS: Final = frozenset({"lua", "sql", "haskell"})


@dataclass(frozen=True, slots=True)
class DocumentView:
    """One open document at one moment."""

    uri: str
    text: str
    language: str
    version: int | None = None

    @property
    def path(self) -> str | None:
        """The file system path of a `file:` URI."""
        return to_fs_path(self.uri)

    def line_ending(self) -> str:
        found = _LINE_BREAK.search(self.text, 0, 100_000)
        return "\n" if found is None else found.group()


def language_of(language_id: str | None, uri: str) -> str:
    """The client's language id, else one guessed from the file extension."""
    if language_id:
        return language_id.lower()
    return _EXTENSION_LANGUAGES.get(PurePath(uri).suffix.lower(), "plaintext")


def comment_prefix(language: str) -> str:
    """The line-comment marker of a language (`//` for the C family and unknown ones)."""
    if language in _HASH_COMMENTS:
        return "#"
    if language in _DASH_COMMENTS:
        return "--"
    return "//"


def view(workspace: Workspace, uri: str) -> DocumentView | None:
    """The open document at `uri`, or None when the client has not opened it."""
    doc = workspace.text_documents.get(unquote(uri))
    if doc is None:
        return None
    return DocumentView(uri, doc.source, language_of(doc.language_id, uri), doc.version)


def open_views(workspace: Workspace) -> list[DocumentView]:
    return [
        DocumentView(doc.uri, doc.source, language_of(doc.language_id, doc.uri), doc.version)
        for doc in workspace.text_documents.values()
    ]


def offset_of(doc: DocumentView, position: types.Position, encoding: str) -> int:
    """The string index of an LSP position; positions that do not exist are InvalidParams."""
    try:
        return offset_at(doc.text, position.line, position.character, encoding)
    except PositionError as exc:
        raise JsonRpcInvalidParams(f"{doc.uri}: {exc}") from exc


def encoding_name(encoding: object) -> str:
    """The `context` module's name of a negotiated position encoding."""
    value = str(getattr(encoding, "value", encoding)).lower()
    return value if value in ("utf-8", "utf-16", "utf-32") else "utf-16"


def relative_path(uri: str, root: str | None) -> str:
    """A document's path as a model should see it: relative to the workspace root."""
    path = to_fs_path(uri) or uri
    if root:
        with_root = to_fs_path(root) or root
        try:
            rel = os.path.relpath(path, with_root)
        except ValueError:
            rel = path
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return PurePath(path).name


def _clamped_offset(text: str, position: types.Position, encoding: str) -> int:
    try:
        return offset_at(text, position.line, position.character, encoding)
    except PositionError:
        if position.line < 0 or position.character < 0:
            return 0
        # A line past the end means the end; half a surrogate pair means its start.
        try:
            return offset_at(text, position.line, max(0, position.character - 1), encoding)
        except PositionError:
            return len(text)


def apply_change(text: str, change: types.TextDocumentContentChangeEvent, encoding: str) -> str:
    """`text` after one `didChange` content change, lines counted as LSP counts them.

    Only `\\n`, `\\r\\n` and `\\r` end a line here (Python's `splitlines` also splits at
    form feeds and U+2028, which would put edits on the wrong line).
    """
    if isinstance(change, types.TextDocumentContentChangeWholeDocument):
        return change.text
    start = _clamped_offset(text, change.range.start, encoding)
    end = max(start, _clamped_offset(text, change.range.end, encoding))
    return text[:start] + change.text + text[end:]


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates (possible in JSON from a client) replaced by U+FFFD,
    so that it can be encoded as UTF-8 on its way to the orchestrator."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)
