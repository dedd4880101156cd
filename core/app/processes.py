"""``shipcast run`` on every core: a supervisor and several processes, each
running the API and every channel worker (``shipcast api --processes N``:
the API alone in each).

The supervisor binds the API's port (and the operations port) once and hands
the listening sockets to each process, so the kernel spreads connections
among them; the processes consume the channels' queues competitively, as
``shipcast worker`` processes do. The first process starts alone: it waits
for RabbitMQ and applies the partners file, which binds the queues; the
others start once it has, so none serves partners older than the file. Any
process but the first at its first start (a second one, one started again)
takes connections only once it is ready: until then the kernel hands them
to the others, which can publish, rather than to one that would answer 503.

A process that dies is started again (after a pause that grows while it
keeps dying); one that exits before it was ever ready ends the command with
its exit status (a partners file that does not load, say). SIGINT or SIGTERM
is passed to every process, which drains as a lone ``shipcast run`` does, and
the supervisor exits once they have.

What a process keeps in memory is its own: the limits it enforces (an
endpoint's concurrency and rate, the resend quota) are its share of the
configured ones (``Services.process_share``), and ``/metrics``, in any of
them, adds up every process's figures, which each writes to a directory they
share (every second, and whenever it is asked for them); a process that ended
leaves its counts there, so no sum goes back. The processes end with the
supervisor, even one killed with ``-9`` (the kernel sends them SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shipcast import metrics
from shipcast.app.runtime import Inherited, serve
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError
from shipcast.settings import Settings

log = logging.getLogger("shipcast")

#: prctl's option that signals a process when its parent ends (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: Seconds between the figures each process writes for the others.
METRICS_EVERY = 1.0
#: Seconds a process that died waits before it is started again, at first and at most.
RESTART_FIRST, RESTART_MOST = 0.5, 30.0
#: Seconds a process must have run for its restart pause to start again from the first.
RESTART_RESET = 60.0
#: Seconds each process has to drain after SIGTERM before it is killed: up to
#: 10 s for a start-up to finish, the API's 30 s for requests in flight, then
#: the workers' 30 s and 5 s for those cancelled past it, and a margin.
STOP_GRACE = 85.0


def process_count(settings: Settings) -> int:
    """How many processes ``shipcast run`` (or ``shipcast api --processes``)
    starts: ``settings.processes`` (``SHIPCAST_PROCESSES``, or the option),
    or, for 0, one per CPU it may use (those it may run on, within a
    container's CPU quota)."""
    if settings.processes:
        return settings.processes
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, cpu_quota() or cpus))


def cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The CPUs a cgroup v2 quota allows (``200000 100000``: 2), rounded up; ``None`` without one."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or not quota.isdigit() or not period.isdigit() or not int(period):
        return None
    return -(-int(quota) // int(period))


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, inherited by the processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass
class Process:
    """One process of the run, as the supervisor sees it."""

    index: int
    popen: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    started_at: float = 0.0
    pause: float = RESTART_FIRST
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Starts, watches and stops the processes of one ``shipcast run`` (or
    ``shipcast api``: ``command``)."""

    def __init__(self, settings: Settings, count: int, command: str = "run") -> None:
        self.settings = settings
        self.count = count
        self.command = command
        self.api = listening_socket(settings.host, settings.port)
        try:
            self.health = listening_socket(settings.host, settings.health_port) \
                if settings.health_port is not None else None
        except OSError:
            self.api.close()
            raise
        self.shared = tempfile.mkdtemp(prefix="shipcast-metrics-")
        self.processes = [Process(index) for index in range(count)]
        self.retired = 0
        self.stopping = False

    def run(self) -> int:
        """Run until SIGINT or SIGTERM (0), or until a process fails before it
        was ever ready (its exit status)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        log.info("shipcast %s: %d processes on http://%s:%d", self.command, self.count, self.settings.host,
                 self.settings.port)
        try:
            self._start(self.processes[0], prepare=True)
            return self._watch()
        finally:
            self._stop_all()
            self.api.close()
            if self.health is not None:
                self.health.close()
            shutil.rmtree(self.shared, ignore_errors=True)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _watch(self) -> int:
        while not self.stopping:
            waiting = {p.ready_fd: p for p in self.processes if p.ready_fd is not None and not p.ready}
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select(list(waiting), [], [], 0.2)
                for fd in readable:
                    self._became_ready(waiting[fd])
            if self.stopping:  # the processes had the signal too (a terminal's ^C, a process group's TERM)
                break
            now = time.monotonic()
            for process in self.processes:
                if process.popen is not None and process.popen.poll() is not None:
                    failed = self._exited(process, now)
                    if failed is not None:
                        return failed
                if process.restart_at is not None and now >= process.restart_at and not self.stopping:
                    self._start(process, prepare=False)
        return 0

    def _became_ready(self, process: Process) -> None:
        assert process.ready_fd is not None
        if not os.read(process.ready_fd, 16):
            return  # its end closed: it exited, which the next poll sees
        process.ready = True
        if process.index == 0:  # the partners are applied: the others may start
            for other in self.processes[1:]:
                if other.popen is None and other.restart_at is None:
                    self._start(other, prepare=False)

    def _exited(self, process: Process, now: float) -> int | None:
        """A process exited on its own: its exit status if the run must end, else ``None`` (it restarts).

        The run ends only when the first process fails before it was ever
        ready: it is the one that loads the partners file, and a file that
        does not load would fail every start. Any other is started again."""
        assert process.popen is not None
        code = process.popen.returncode
        was_ready, ran = process.ready, now - process.started_at
        self._forget(process)
        if process.index == 0 and not was_ready and not process.exits:
            log.error("shipcast %s: process 0 exited (%d) before it was ready; stopping", self.command, code)
            return 128 - code if code < 0 else code or 1  # a signal's number as a shell gives it
        process.exits.append(code)
        process.pause = RESTART_FIRST if ran >= RESTART_RESET else min(process.pause * 2, RESTART_MOST)
        process.restart_at = now + process.pause
        log.error("shipcast %s: process %d exited (%d) after %.1fs; starting it again in %.1fs",
                  self.command, process.index, code, ran, process.pause)
        return None

    def _forget(self, process: Process) -> None:
        if process.ready_fd is not None:
            os.close(process.ready_fd)
        process.popen, process.ready_fd, process.ready = None, None, False
        self.retired += 1
        metrics.retire(self.shared, str(process.index), self.retired)

    def _start(self, process: Process, *, prepare: bool) -> None:
        read_fd, write_fd = os.pipe()
        inherited = [self.api.fileno(), write_fd, *([self.health.fileno()] if self.health is not None else [])]
        spec = {"index": process.index, "count": self.count, "supervisor": os.getpid(), "api": self.api.fileno(),
                "health": self.health.fileno() if self.health is not None else None,
                "ready": write_fd, "prepare": prepare, "metrics": self.shared}
        try:
            process.popen = subprocess.Popen([sys.executable, "-m", "shipcast", self.command, "--child",
                                              json.dumps(spec)], pass_fds=inherited)
        finally:
            os.close(write_fd)
        process.ready_fd, process.ready = read_fd, False
        process.started_at, process.restart_at = time.monotonic(), None

    def _stop_all(self) -> None:
        """SIGTERM to every process, then wait for each to drain (SIGKILL past the grace)."""
        running = [p for p in self.processes if p.popen is not None and p.popen.poll() is None]
        for process in running:
            assert process.popen is not None
            with contextlib.suppress(ProcessLookupError):
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            assert process.popen is not None
            try:
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("shipcast %s: process %d did not stop in %.0fs; killing it", self.command, process.index,
                          STOP_GRACE)
                process.popen.kill()
                process.popen.wait()
        for process in self.processes:
            if process.popen is not None:
                self._forget(process)


def supervise(settings: Settings, count: int, command: str = "run") -> int:
    """Run ``count`` processes of ``shipcast run`` (or ``command``); returns the exit status.

    :raises ConfigError: the port (or the operations port) cannot be listened on."""
    try:
        supervisor = Supervisor(settings, count, command)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host} port {settings.port}"
                          f"{f' or {settings.health_port}' if settings.health_port is not None else ''}: "
                          f"{exc.strerror or exc}") from None
    return supervisor.run()


def end_with_parent(supervisor: int) -> None:
    """Have the kernel send this process SIGTERM when its supervisor ends,
    however it ends (Linux); if it ended already, end now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


async def serve_child(spec: dict[str, Any], names: Sequence[str], services: Services) -> None:
    """One of the processes: the API on the inherited socket, every named
    channel's worker, and this process's figures written for the others."""
    end_with_parent(spec["supervisor"])
    metrics.share(spec["metrics"], str(spec["index"]))
    services.process_share = spec["count"]
    ready_fd: int = spec["ready"]

    def ready() -> None:
        with contextlib.suppress(OSError):  # the supervisor went: it is not waiting any more
            os.write(ready_fd, b"r")

    async def publish_figures() -> None:
        while True:
            try:
                metrics.publish()
            except OSError as exc:  # a full disk, say: the others see older figures meanwhile
                log.warning("cannot share this process's figures: %s", exc)
            await asyncio.sleep(METRICS_EVERY)

    def inherited_socket(fd: int | None) -> socket.socket | None:
        return socket.socket(fileno=fd) if fd is not None else None

    inherited = Inherited(api=inherited_socket(spec["api"]), health=inherited_socket(spec.get("health")),
                          prepare=bool(spec["prepare"]), ready=ready)
    figures = asyncio.create_task(publish_figures())
    try:
        await serve(api=True, worker_names=names, services=services, inherited=inherited)
    finally:
        figures.cancel()
        await asyncio.gather(figures, return_exceptions=True)
        with contextlib.suppress(OSError):
            metrics.publish()
