"""What a Python file imports from its own workspace, as context for its completions.

A completion that calls `area(` does better when the prompt holds `def area(width,
height)` and its docstring, even when the file that defines it is not open. The import
lines are read with regular expressions (the file is being edited: it need not parse),
the modules are looked up under the workspace root only, and each imported definition
becomes a stub: its signature, its docstring, `...` for the body (a class: its public
methods' signatures). Stubs are cached per file and modification time.
"""

from __future__ import annotations

import ast
import os
import re
from collections import OrderedDict
from typing import Final

_FROM: Final = re.compile(
    r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^#\r\n]+)", re.M
)
_IMPORT: Final = re.compile(r"^[ \t]*import[ \t]+([\w. \t,]+)", re.M)
_MAX_MODULES: Final = 16
_SCAN_CHARS: Final = 100_000  # imports sit near the top; a 5 MB file is not rescanned
_MAX_FILE_BYTES: Final = 1_000_000
_MAX_STUB_CHARS: Final = 6_000
_CACHE_FILES: Final = 256

_cache: OrderedDict[tuple[str, int, int], dict[str, str]] = OrderedDict()


def _module_file(base: str, dotted: str) -> str | None:
    """`base/a/b.py` or `base/a/b/__init__.py` for `a.b`."""
    parts = [p for p in dotted.split(".") if p]
    stem = os.path.join(base, *parts) if parts else base
    for candidate in (stem + ".py", os.path.join(stem, "__init__.py")):
        if parts and os.path.isfile(candidate):
            return candidate
    if not parts and os.path.isfile(os.path.join(base, "__init__.py")):
        return os.path.join(base, "__init__.py")
    return None


def _inside(path: str, root: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top + os.sep)


def imported_modules(text: str, doc_path: str, root: str) -> list[tuple[str, frozenset[str]]]:
    """(file, names imported from it) for each import of a workspace module; an empty
    name set stands for `import module` (its public definitions)."""
    found: dict[str, set[str]] = {}
    doc_dir = os.path.dirname(doc_path)
    text = text[:_SCAN_CHARS]

    def add(path: str | None, names: set[str]) -> None:
        if path is None or not _inside(path, root) or os.path.samefile(path, doc_path):
            return
        found.setdefault(path, set()).update(names)

    for match in _FROM.finditer(text):
        dots, module, names_text = match.groups()
        base = root if not dots else doc_dir
        for _ in range(max(0, len(dots) - 1)):
            base = os.path.dirname(base)
        names = {n.split(" as ")[0].strip() for n in names_text.strip("()").split(",")}
        names = {n for n in names if n.isidentifier()}
        path = _module_file(base, module)
        if path is not None:
            add(path, names)
        for name in names:  # `from pkg import module`
            add(_module_file(base, f"{module}.{name}" if module else name), set())
        if len(found) >= _MAX_MODULES:
            break
    for match in _IMPORT.finditer(text):
        for item in match.group(1).split(","):
            dotted = item.split(" as ")[0].strip()
            if dotted and all(p.isidentifier() for p in dotted.split(".")):
                add(_module_file(root, dotted), set())
    return [(path, frozenset(names)) for path, names in list(found.items())[:_MAX_MODULES]]


def _docstring(node: ast.AST, indent: str) -> list[str]:
    doc = ast.get_docstring(node) if isinstance(node, _DEFS) else None
    if not doc:
        return []
    body = doc.replace('"""', r"\"\"\"").splitlines()
    if len(body) == 1:
        return [f'{indent}"""{body[0]}"""']
    rest = [f"{indent}{line}" if line else "" for line in body[1:]]
    return [f'{indent}"""{body[0]}', *rest, f'{indent}"""']


_DEFS: Final = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}:"


def _stub(node: ast.stmt) -> tuple[str, str] | None:
    """(name, stub text) of a top-level definition, or None for anything else."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        lines = [_signature(node), *_docstring(node, "    "), "    ..."]
        return node.name, "\n".join(lines)
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in [*node.bases, *node.keywords])
        lines = [f"class {node.name}({bases}):" if bases else f"class {node.name}:"]
        lines += _docstring(node, "    ")
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and (
                not item.name.startswith("_") or item.name == "__init__"
            ):
                lines += [f"    {_signature(item)}", *_docstring(item, "        "), "        ..."]
        return node.name, "\n".join(lines if len(lines) > 1 else [*lines, "    ..."])
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        text = ast.unparse(node)
        if len(names) == 1 and len(text) <= 120:
            return names[0], text
    return None


def definitions(path: str) -> dict[str, str]:
    """The stubs of a module's top-level definitions by name ({} when it cannot be read)."""
    try:
        info = os.stat(path)
    except OSError:
        return {}
    key = (path, info.st_mtime_ns, info.st_size)
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    stubs: dict[str, str] = {}
    if info.st_size <= _MAX_FILE_BYTES:
        try:
            with open(path, encoding="utf-8", errors="replace") as source:
                tree = ast.parse(source.read())
        except (OSError, SyntaxError, ValueError, RecursionError):
            tree = None
        for node in tree.body if tree is not None else []:
            found = _stub(node)
            if found is not None:
                stubs[found[0]] = found[1]
    _cache[key] = stubs
    while len(_cache) > _CACHE_FILES:
        _cache.popitem(last=False)
    return stubs


def import_context(text: str, doc_path: str, root: str) -> list[tuple[str, str]]:
    """(path relative to the root, stubs) per imported workspace module: the imported
    names' definitions, or a module's public ones for `import module`."""
    out: list[tuple[str, str]] = []
    for path, names in imported_modules(text, doc_path, root):
        stubs = definitions(path)
        wanted = (
            [n for n in names if n in stubs]
            if names
            else [n for n in stubs if not n.startswith("_")]
        )
        body = "\n\n".join(stubs[n] for n in wanted)[:_MAX_STUB_CHARS]
        if body.strip():
            out.append((os.path.relpath(path, root), body + "\n"))
    return out
