"""A peer process: started with its output in a log file, stopped by its PID, measured from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

STOP_TIMEOUT_S = 5.0
LOG_TAIL_CHARS = 4000
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def find_binary(name: str) -> str | None:
    """A program on PATH, or in /usr/sbin and /sbin (Kamailio lives there; a non-login PATH may lack it)."""
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def require_binary(name: str) -> str:
    """The path of a peer's program; a skip when it is missing, or a failure under CI (CI must have it)."""
    path = find_binary(name)
    if path:
        return path
    message = f"{name} is not installed (scripts/test installs the peers' Debian packages)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; fields after it are space-separated.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of children included)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [pid], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass(frozen=True, slots=True)
class CpuSample:
    pids: tuple[int, ...]
    cpu_s: float


class PeerProcess:
    """One running program; ``stop()`` ends it (SIGTERM, then SIGKILL) and never hangs."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PeerProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops us
            )
        return cls(name, proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    def cpu(self) -> CpuSample:
        """CPU seconds of the process and all its descendants (Kamailio forks its workers)."""
        pids = tuple(descendants(self.pid))
        return CpuSample(pids=pids, cpu_s=cpu_seconds(pids))

    def send_signal(self, sig: signal.Signals) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self, timeout_s: float) -> int:
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    async def stop(self, *, sig: signal.Signals = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        if self.running:
            self.send_signal(sig)
            try:
                rc = await self.wait(timeout_s)
            except TimeoutError:
                pass
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)  # leftovers of the group, if any
                return rc
        # The process group is ours (start_new_session): this also ends workers it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return await self.wait(timeout_s)


async def run_command(argv: Sequence[str], *, timeout_s: float, cwd: Path | None = None) -> tuple[int, str]:
    """Run a short-lived tool to completion: (exit code, stdout and stderr); killed after ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TimeoutError(f"{' '.join(argv)} ran longer than {timeout_s} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")
