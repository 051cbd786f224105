"""Replicas as child processes on this machine: today's single-box launcher.

Every replica is a child process in its own process group (so a stop reaches vLLM's
workers too) with its log in a file of its own. It holds a pipe on its stdin for as
long as it runs; emulated replicas exit when that pipe closes, so they cannot outlive
a service that was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

from orchestrator.replicas.backend import (
    Address,
    LaunchError,
    LocalInventory,
    Placement,
    ReplicaHandle,
)
from orchestrator.replicas.launchers import LaunchSpec, build_command, build_env, describe

log = logging.getLogger(__name__)

EXIT_WITH_STDIN = "--exit-with-stdin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class LocalProcess:
    """A replica's process group on this machine."""

    def __init__(
        self, proc: asyncio.subprocess.Process, log_path: Path, gpus: tuple[int, ...]
    ) -> None:
        self.proc = proc
        self._log_path = log_path
        self._gpus = gpus
        self.exit_future: asyncio.Future[int] = asyncio.ensure_future(proc.wait())

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def gpus(self) -> tuple[int, ...]:
        return self._gpus

    def exited(self) -> bool:
        return self.proc.returncode is not None

    def exit_reason(self) -> str:
        return f"process exited with {self.proc.returncode}"

    def lost(self) -> bool:
        return False  # this machine is still here

    async def wait_exit(self, timeout_s: float) -> None:
        if self.exit_future.done():
            await asyncio.sleep(timeout_s)
        else:
            await asyncio.wait({self.exit_future}, timeout=timeout_s)


class LocalLauncher:
    """Starts replicas as process groups bound to ``host`` on free local ports."""

    def __init__(self, *, gpus: Sequence[int], workdir: Path, host: str = "127.0.0.1") -> None:
        self._inventory = LocalInventory(gpus)
        self.workdir = workdir
        self.host = host
        self._groups: set[int] = set()  # process groups started and not yet reaped

    @property
    def inventory(self) -> LocalInventory:
        return self._inventory

    async def address(self, replica_id: str, spec: LaunchSpec, placement: Placement) -> Address:
        port = free_port(self.host)
        return Address(f"http://{self.host}:{port}", port)

    def command(self, spec: LaunchSpec, address: Address) -> list[str]:
        argv = build_command(spec, host=self.host, port=address.port)
        if spec.engine == "emulated" and EXIT_WITH_STDIN not in argv:
            argv.append(EXIT_WITH_STDIN)
        return argv

    async def start(
        self,
        replica_id: str,
        spec: LaunchSpec,
        address: Address,
        placement: Placement,
        api_key: str | None,
    ) -> ReplicaHandle:
        argv = self.command(spec, address)
        folder = self.workdir / replica_id
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "replica.log"
        env = build_env(spec, placement.gpus, folder=folder)
        if api_key is not None:  # in the environment: argv is visible to every user
            env["VLLM_API_KEY"] = api_key
        with log_path.open("ab") as logf:
            logf.write(f"\n--- start: {describe(argv)}\n".encode())
            logf.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=folder,
                    start_new_session=True,
                )
            except OSError as exc:
                logf.write(f"--- cannot start: {exc}\n".encode())
                raise LaunchError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        self._groups.add(proc.pid)
        log.info(
            "replica %s: started pid %d: %s (GPUs %s), log %s",
            replica_id,
            proc.pid,
            describe(argv),
            ",".join(map(str, placement.gpus)) or "none",
            log_path,
        )
        return LocalProcess(proc, log_path, placement.gpus)

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """SIGTERM the replica's process group, SIGKILL after the grace period."""
        if not isinstance(handle, LocalProcess):
            raise TypeError(f"not a local replica: {handle!r}")
        proc = handle.proc
        if proc.returncode is None:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                log.warning("pid %d: no exit after SIGTERM, sending SIGKILL", proc.pid)
                _kill_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        _kill_group(proc.pid, signal.SIGKILL)  # workers the leader left behind
        if proc.stdin is not None:
            proc.stdin.close()
        self._groups.discard(proc.pid)

    async def release(self, replica_id: str) -> None:
        return None  # a port is not held between restarts

    def leftovers(self) -> set[int]:
        return {g for g in self._groups if _group_alive(g)}

    async def close(self) -> None:
        for group in self.leftovers():
            log.warning("process group %d outlived its replica; killing it", group)
            _kill_group(group, signal.SIGKILL)
        self._groups.clear()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
