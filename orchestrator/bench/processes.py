"""The processes a benchmark starts, read from ``/proc``: their trees and CPU time.

Router overhead is counted as the CPU time of the router's whole process tree, so
these read ``/proc/PID/stat`` (Linux) rather than trust a process's own report.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, list[str]]:
    """Every live process's ``/proc/PID/stat`` fields after the command name."""
    table: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        table[int(entry)] = stat.rsplit(")", 1)[1].split()
    return table


def _cpu_s(fields: Sequence[str], children: bool = True) -> float:
    """utime + stime (and, with ``children``, those of reaped children) in seconds."""
    return sum(int(x) for x in fields[11 : 15 if children else 13]) / _TICKS


def descendants(root: int, table: dict[int, list[str]] | None = None) -> set[int]:
    """The live processes below ``root``."""
    table = _processes() if table is None else table
    found: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        children = [p for p, fields in table.items() if int(fields[1]) == pid]
        found.update(children)
        todo += children
    return found


def children(root: int) -> set[int]:
    """The live processes whose parent is ``root``."""
    return {p for p, fields in _processes().items() if int(fields[1]) == root}


def proc_cpu_s(pid: int) -> float:
    """CPU of one process itself (not its children), 0 once it is gone."""
    fields = _processes().get(pid)
    return 0.0 if fields is None else _cpu_s(fields, children=False)


def proc_tree_cpu_s(root: int) -> float:
    """utime + stime of ``root`` and every live descendant, plus their reaped children."""
    table = _processes()
    return sum(_cpu_s(table[p]) for p in {root} | descendants(root, table) if p in table)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
