"""Media worker processes (telephony.md §2, §3.9): start them, watch them, restart the ones that die.

Each worker is ``python -m vpbx.media.worker`` with one end of a unix socket pair as its control socket (no
path on disk, so nothing to leak or clean up) and its own slice of the RTP port range (``split_ports``). A
worker is dead when its control socket reaches EOF; the supervisor then tells its owner (``on_dead``: the
backend ends that worker's calls) and starts it again after ``RESTART_DELAY_S``, doubling the delay while
restarts keep failing. ``aclose`` asks every worker to shut down, waits for it, and kills what does not exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpbx.errors import MediaError, WorkerUnavailable
from vpbx.logs import get_logger
from vpbx.media.control import ControlChannel, Message

log = get_logger("vpbx.media.supervisor")

START_TIMEOUT_S = 15.0  # interpreter start and imports, on a loaded 2-core box
STOP_TIMEOUT_S = 3.0  # after ``shutdown`` (and again after SIGTERM) before SIGKILL
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 10.0
STUCK_AFTER_TIMEOUTS = 3  # commands in a row without a reply: the worker is killed, then restarted
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # so ``-m vpbx.media.worker`` imports this same tree


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    ports: tuple[int, int]
    bind_host: str = "0.0.0.0"
    media_timeout_s: float = 60.0
    check_interval_s: float = 0.5
    dtmf: bool = False
    loop: str = "auto"  # auto: uvloop when installed
    log_level: str = "info"
    log_json: bool = False
    python: str = sys.executable

    def argv(self, control_fd: int) -> list[str]:
        argv = [
            self.python,
            "-m",
            "vpbx.media.worker",
            "--control-fd",
            str(control_fd),
            "--ports",
            f"{self.ports[0]}-{self.ports[1]}",
            "--bind",
            self.bind_host,
            "--media-timeout",
            repr(self.media_timeout_s),
            "--check-interval",
            repr(self.check_interval_s),
            "--loop",
            self.loop,
            "--log-level",
            self.log_level,
        ]
        if self.dtmf:
            argv.append("--dtmf")
        if self.log_json:
            argv.append("--log-json")
        return argv


def split_ports(ports: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """``count`` disjoint ranges of whole RTP/RTCP pairs (even RTP port) covering ``ports``."""
    first = ports[0] + (ports[0] & 1)
    pairs = (ports[1] - first + 1) // 2
    if count < 1 or pairs < count:
        raise ValueError(f"RTP ports {ports[0]}-{ports[1]} hold {pairs} pairs, fewer than {count} workers")
    out = []
    start = 0
    for i in range(count):
        n = pairs // count + (1 if i < pairs % count else 0)
        out.append((first + 2 * start, first + 2 * (start + n) - 1))
        start += n
    return out


class WorkerProcess:
    """One worker: its process, its control channel and the sessions placed on it."""

    def __init__(self, index: int, config: WorkerConfig, on_event: Callable[[WorkerProcess, Message], None]):
        self.index = index
        self.config = config
        self.sessions = 0  # kept by the backend: placed and not yet released
        self.restarts = 0
        self._on_event = on_event
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: ControlChannel | None = None
        self._ready = False

    @property
    def name(self) -> str:
        return f"{self.index}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._ready and self._channel is not None and not self._channel.closed.is_set()

    async def request(self, op: str, **args: object) -> Message:
        """One command; a worker that leaves ``STUCK_AFTER_TIMEOUTS`` commands in a row unanswered is killed
        (its control socket then closes, so it is handled as dead and restarted)."""
        channel = self._channel
        if channel is None:
            raise WorkerUnavailable(f"media worker {self.name} is not running")
        try:
            return await channel.request(op, **args)
        except WorkerUnavailable:
            if channel.timeouts_in_a_row >= STUCK_AFTER_TIMEOUTS and self._proc is not None:
                log.error(
                    "media.worker_stuck", worker=self.name, pid=self.pid, timeouts=channel.timeouts_in_a_row
                )
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
            raise

    async def start(self) -> None:
        """Spawn the process and wait for its ``ready`` event; ``WorkerUnavailable`` if it never comes."""
        loop = asyncio.get_running_loop()
        self._ready = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.config.argv(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ready: asyncio.Future[Message] = loop.create_future()

        def on_event(message: Message) -> None:
            if message.get("event") == "ready":
                if not ready.done():
                    ready.set_result(message)
                return
            self._on_event(self, message)

        reader, writer = await asyncio.open_unix_connection(sock=ours)
        channel = ControlChannel(reader, writer, name=self.name, on_event=on_event)
        self._channel = channel
        closed: asyncio.Future[Any] = asyncio.ensure_future(channel.closed.wait())
        waiting: set[asyncio.Future[Any]] = {ready, closed}
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            closed.cancel()
            await asyncio.gather(closed, return_exceptions=True)
        if not ready.done():
            ready.cancel()
            await self.stop()
            raise WorkerUnavailable(f"media worker {self.name} did not start")
        info = ready.result()
        self._ready = True
        log.info(
            "media.worker_started",
            worker=self.name,
            pid=self.pid,
            ports=self.config.ports,
            loop=info.get("loop"),
        )

    async def wait_dead(self) -> int | None:
        """Wait until the control socket closes, then reap the process; its exit code."""
        if self._channel is not None:
            await self._channel.closed.wait()
            await self._channel.aclose()
        return await self._reap()

    async def stop(self) -> None:
        """``shutdown``, then SIGTERM, then SIGKILL; the process is reaped and the socket closed."""
        channel = self._channel
        if channel is not None and not channel.closed.is_set():
            with contextlib.suppress(MediaError):
                await channel.request("shutdown")
        if channel is not None:
            await channel.aclose()
        await self._reap()

    async def _reap(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        for signal_it in (None, proc.terminate, proc.kill):
            if signal_it is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal_it()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    return await proc.wait()
            except TimeoutError:
                continue
        return proc.returncode


class MediaSupervisor:
    """Starts the workers, restarts the dead ones; ``on_dead`` runs before each restart."""

    def __init__(
        self,
        configs: list[WorkerConfig],
        *,
        on_event: Callable[[WorkerProcess, Message], None],
        on_dead: Callable[[WorkerProcess], None],
    ) -> None:
        self.workers = [WorkerProcess(i, c, on_event) for i, c in enumerate(configs)]
        self._on_dead = on_dead
        self._watchers: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        results = await asyncio.gather(*(w.start() for w in self.workers), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
            raise errors[0]
        self._watchers = [
            asyncio.create_task(self._watch(w), name=f"media-worker-watch-{w.name}") for w in self.workers
        ]

    async def _watch(self, worker: WorkerProcess) -> None:
        while not self._closing:
            rc = await worker.wait_dead()
            if self._closing:
                return
            log.error("media.worker_died", worker=worker.name, pid=worker.pid, returncode=rc)
            try:
                self._on_dead(worker)
            except Exception:
                log.exception("media.worker_dead_hook_failed", worker=worker.name)
            delay = RESTART_DELAY_S
            while not self._closing:
                await asyncio.sleep(delay)
                try:
                    await worker.start()
                except (WorkerUnavailable, OSError) as e:
                    log.error("media.worker_restart_failed", worker=worker.name, error=str(e))
                    delay = min(2 * delay, RESTART_DELAY_MAX_S)
                    continue
                worker.restarts += 1
                break

    async def aclose(self) -> None:
        self._closing = True
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
