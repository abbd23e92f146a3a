"""SIPp (Debian ``sip-tester``): run a scenario with bounded calls and time, then read its statistics.

Every run is bounded three ways: a call count (``-m``), a global ``-timeout`` (with ``-timeout_error``, so
hitting it is a failure) and a hard deadline here, after which the process is killed. SIPp binds and talks
to 127.0.0.1 only. Statistics come from the ``-trace_stat`` CSV, whose last row SIPp writes when it exits;
unexpected messages are in the ``-trace_err`` log (telephony.md §7.1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.peers.net import LOOPBACK, free_port_block, require_loopback, wait_until
from tests.integration.peers.process import PeerProcess

SIPP = "sipp"
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"
BUILTIN_SCENARIOS = frozenset({"uac", "uas", "regexp", "3pcc-C-A", "3pcc-C-B", "3pcc-A", "3pcc-B", "branchc"})
DEADLINE_GRACE_S = 10.0  # beyond -timeout, before the harness kills SIPp
LISTEN_TIMEOUT_S = 5.0
ERRORS_MAX_CHARS = 20_000

# SIPp exit codes (sipp(1), "Exit codes")
EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1
EXIT_QUIT_NO_CALLS = 99
EXIT_FATAL = 255


@dataclass(frozen=True, slots=True)
class SippStats:
    total_calls: int
    successful_calls: int
    failed_calls: int
    retransmissions: int
    elapsed_s: float
    counters: Mapping[str, str]

    @property
    def call_rate(self) -> float:
        """Successful calls per second of SIPp's own elapsed time."""
        return self.successful_calls / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _epoch(value: str) -> float | None:
    # "2026-11-25<TAB>14:50:51.006519<TAB>1795618251.006519": the last part is seconds since the epoch
    try:
        return float(value.split("\t")[-1])
    except ValueError:
        return None


def _elapsed(counters: Mapping[str, str]) -> float:
    """Seconds from the start to the last row (ElapsedTime(C) is whole seconds only)."""
    start, now = _epoch(counters.get("StartTime", "")), _epoch(counters.get("CurrentTime", ""))
    return max(0.0, now - start) if start is not None and now is not None else 0.0


def parse_stats_csv(text: str, *, delimiter: str = ";") -> SippStats:
    """The cumulative counters of the last row of a ``-trace_stat`` file."""
    rows = [line for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        raise ValueError("SIPp statistics file has no data row")
    header = rows[0].split(delimiter)
    values = rows[-1].split(delimiter)
    counters = dict(zip(header, values, strict=False))

    def count(name: str) -> int:
        return int(counters.get(name) or 0)

    return SippStats(
        total_calls=count("TotalCallCreated"),
        successful_calls=count("SuccessfulCall(C)"),
        failed_calls=count("FailedCall(C)"),
        retransmissions=count("Retransmissions(C)"),
        elapsed_s=_elapsed(counters),
        counters=counters,
    )


@dataclass(frozen=True, slots=True)
class SippResult:
    returncode: int
    stats: SippStats
    errors: str
    screen: str
    workdir: Path
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == EXIT_ALL_OK and self.stats.failed_calls == 0

    def describe(self) -> str:
        """A short account for assertion messages."""
        s = self.stats
        return (
            f"sipp exit {self.returncode}: {s.successful_calls} ok, {s.failed_calls} failed, "
            f"{s.retransmissions} retransmissions of {s.total_calls} calls in {self.workdir}\n"
            f"{self.errors[-3000:]}"
        )


def scenario_path(name: str | Path) -> Path:
    """``reg_digest`` → tests/integration/sipp/reg_digest.xml; a path is taken as it is."""
    path = Path(name)
    if path.suffix == ".xml":
        return path
    return SCENARIO_DIR / f"{name}.xml"


@dataclass(frozen=True, slots=True, kw_only=True)
class SippRun:
    """One SIPp invocation. ``scenario`` is a file (or a name under tests/integration/sipp/) unless
    ``builtin`` names one of SIPp's own (``uac``, ``uas``)."""

    calls: int  # -m: the run ends after this many calls
    timeout_s: float  # -timeout with -timeout_error
    scenario: str | Path | None = None
    builtin: str | None = None
    remote: tuple[str, int] | None = None  # None for a UAS that only answers
    rate: float = 10.0  # -r calls per rate period
    rate_period_ms: int = 1000  # -rp
    limit: int | None = None  # -l: simultaneous calls
    local_port: int | None = None  # -p (picked when None)
    local_ip: str = LOOPBACK  # -i: another 127.x address plays a host of its own (a carrier)
    service: str | None = None  # -s: the Request-URI user of INVITE scenarios
    inf: Path | None = None  # -inf injection file
    keys: Mapping[str, str] = field(default_factory=dict)  # -key NAME VALUE → [NAME]
    auth_user: str | None = None  # -au
    auth_password: str | None = None  # -ap
    auth_uri: str | None = None  # -auth_uri: the digest uri, without "sip:"
    duration_ms: int | None = None  # -d: length of <pause/> without milliseconds
    recv_timeout_ms: int | None = None  # -recv_timeout
    trace_msg: bool = False  # -trace_msg: every message into messages.log (small runs only)
    transport: str = "u1"  # -t: u1 (UDP, one socket) or t1 (TCP, one connection)
    extra: Sequence[str] = ()
    argv_prefix: Sequence[str] = ()  # e.g. ("taskset", "-c", "0") in the benchmark

    def __post_init__(self) -> None:
        if (self.scenario is None) == (self.builtin is None):
            raise ValueError("give exactly one of scenario and builtin")
        if self.builtin is not None and self.builtin not in BUILTIN_SCENARIOS:
            raise ValueError(f"unknown built-in scenario {self.builtin}")
        if self.calls <= 0 or self.timeout_s <= 0:
            raise ValueError("a SIPp run needs a positive call count and timeout")
        if self.remote is not None:
            require_loopback(self.remote[0])
        require_loopback(self.local_ip)

    @property
    def name(self) -> str:
        if self.builtin is not None:
            return self.builtin
        assert self.scenario is not None
        return scenario_path(self.scenario).stem

    def argv(self, workdir: Path, local_port: int) -> list[str]:
        """The command line; its output files go to ``workdir``."""
        argv: list[str] = [*self.argv_prefix, SIPP]
        if self.remote is not None:
            argv.append(f"{self.remote[0]}:{self.remote[1]}")
        if self.builtin is not None:
            argv += ["-sn", self.builtin]
        else:
            assert self.scenario is not None
            argv += ["-sf", str(scenario_path(self.scenario))]
        argv += ["-i", self.local_ip, "-p", str(local_port), "-bind_local", "-nostdin", "-t", self.transport]
        argv += ["-m", str(self.calls), "-r", _number(self.rate), "-rp", str(self.rate_period_ms)]
        if self.limit is not None:
            argv += ["-l", str(self.limit)]
        argv += ["-timeout", f"{_number(self.timeout_s)}s", "-timeout_error"]
        argv += ["-trace_stat", "-stf", str(workdir / "stats.csv"), "-fd", "3600"]
        argv += ["-trace_err", "-error_file", str(workdir / "errors.log")]
        argv += ["-trace_screen", "-screen_file", str(workdir / "screen.log")]
        if self.trace_msg:
            argv += ["-trace_msg", "-message_file", str(workdir / "messages.log")]
        if self.service is not None:
            argv += ["-s", self.service]
        if self.inf is not None:
            argv += ["-inf", str(self.inf)]
        for key, value in self.keys.items():
            argv += ["-key", key, value]
        if self.auth_user is not None:
            argv += ["-au", self.auth_user]
        if self.auth_password is not None:
            argv += ["-ap", self.auth_password]
        if self.auth_uri is not None:
            argv += ["-auth_uri", self.auth_uri]
        if self.duration_ms is not None:
            argv += ["-d", str(self.duration_ms)]
        if self.recv_timeout_ms is not None:
            argv += ["-recv_timeout", str(self.recv_timeout_ms)]
        argv += list(self.extra)
        return argv


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _read(path: Path, limit: int | None = None) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if limit is None else text[-limit:]


def _udp_bound(port: int, pid: int, *, tcp: bool = False) -> bool:
    """Whether process ``pid`` holds a UDP socket bound to ``port`` (a TCP one with ``tcp``; not merely:
    someone does)."""
    inodes: set[str] = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6") if tcp else ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    return True
    return False


def _make_rundir(workdir: Path, name: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"sipp-{name}-", dir=workdir))


BIND_ATTEMPTS = 3  # starts of SIPp when another process takes the free port it was given


class SippProcess:
    """A SIPp that runs in the background (a UAS, or load while something else is measured)."""

    def __init__(self, run: SippRun, proc: PeerProcess, workdir: Path, port: int, started: float) -> None:
        self.run = run
        self.proc = proc
        self.workdir = workdir
        self.port = port
        self._started = started

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, run: SippRun, workdir: Path) -> AsyncIterator[SippProcess]:
        """``start`` that makes sure SIPp is gone on exit, even when the test failed half-way."""
        proc = await cls.start(run, workdir)
        try:
            yield proc
        finally:
            if proc.proc.running:
                await proc.proc.stop(sig=signal.SIGKILL)

    @classmethod
    async def start(cls, run: SippRun, workdir: Path) -> SippProcess:
        rundir = _make_rundir(workdir, run.name)
        port = run.local_port or free_port_block(1)
        proc = await PeerProcess.start(
            f"sipp {run.name}", run.argv(rundir, port), log_path=rundir / "stdout.log", cwd=rundir
        )
        return cls(run, proc, rundir, port, time.monotonic())

    async def wait_listening(self, timeout_s: float = LISTEN_TIMEOUT_S) -> None:
        """Wait until SIPp has bound its UDP port (it may take a moment to parse the scenario).

        A port found free can be taken by another process before SIPp binds it: then SIPp starts again on
        another port (``port`` changes), a few times at most.
        """
        for attempt in range(BIND_ATTEMPTS):

            def bound() -> bool:
                if not self.proc.running:
                    raise _SippExited
                return _udp_bound(self.port, self.proc.pid, tcp=self.run.transport.startswith("t"))

            try:
                await wait_until(bound, timeout_s=timeout_s, what=f"sipp {self.run.name} on port {self.port}")
                return
            except _SippExited:
                if not self.lost_its_port() or attempt == BIND_ATTEMPTS - 1:
                    detail = f"{self.proc.log_tail()}{self._errors()}"
                    raise RuntimeError(f"sipp exited early:\n{detail}") from None
                await self._restart()

    def lost_its_port(self) -> bool:
        """SIPp ended because its port was taken meanwhile (and the port was ours to choose)."""
        text = self.proc.log_tail() + self._errors()
        return self.run.local_port is None and "errno = 98" in text

    async def _restart(self) -> None:
        again = await SippProcess.start(self.run, self.workdir.parent)
        self.proc, self.port, self.workdir = again.proc, again.port, again.workdir
        self._started = again._started

    def _errors(self) -> str:
        return _read(self.workdir / "errors.log", ERRORS_MAX_CHARS)

    async def wait(self) -> SippResult:
        """Wait for SIPp to finish by itself (``-m`` calls or ``-timeout``), killing it past the deadline."""
        try:
            rc = await self.proc.wait(self.run.timeout_s + DEADLINE_GRACE_S)
        except TimeoutError:
            rc = await self.proc.stop(sig=signal.SIGKILL)
        return self.result(rc)

    async def stop(self) -> SippResult:
        """Ask SIPp to stop (SIGUSR1: no new calls, finish the open ones, write statistics)."""
        rc = await self.proc.stop(sig=signal.SIGUSR1, timeout_s=DEADLINE_GRACE_S)
        return self.result(rc)

    def result(self, returncode: int) -> SippResult:
        stats_text = _read(self.workdir / "stats.csv")
        try:
            stats = parse_stats_csv(stats_text)
        except ValueError:
            stats = SippStats(0, 0, 0, 0, 0.0, {})
        return SippResult(
            returncode=returncode,
            stats=stats,
            errors=self._errors() if stats_text else self.proc.log_tail(),
            screen=_read(self.workdir / "screen.log"),
            workdir=self.workdir,
            wall_s=time.monotonic() - self._started,
        )


async def run_sipp(run: SippRun, workdir: Path) -> SippResult:
    """Run SIPp to the end and return its result (never longer than ``timeout_s`` plus a grace); started
    again on another port if its port was taken before it could bind it."""
    for attempt in range(BIND_ATTEMPTS):
        proc = await SippProcess.start(run, workdir)
        try:
            result = await proc.wait()
        finally:
            if proc.proc.running:
                await proc.proc.stop(sig=signal.SIGKILL)
        if result.ok or not proc.lost_its_port() or attempt == BIND_ATTEMPTS - 1:
            return result
    raise AssertionError("unreachable")


class _SippExited(Exception):
    pass


def write_users_csv(path: Path, users: Mapping[str, str]) -> Path:
    """An injection file for ``reg_digest.xml``: ``SEQUENTIAL`` then ``user;password;`` lines."""
    lines = ["SEQUENTIAL", *(f"{u};{p};" for u, p in users.items())]
    path.write_text("\n".join(lines) + "\n")
    return path
