"""`bridge serve`'s background worker, in a process of its own beside the process that serves requests.

Why a process: the worker's CPU (botocore signing and parsing for every StartBuild and poll, the
status writes) ran under the same GIL as the webhook acks, and took it from them exactly when
deliveries came fast (docs/performance.md §1). In its own process it competes for a CPU core, not
for the acks' interpreter lock.

How, kept small by reusing what exists:
- The server process forks the worker process in gunicorn's `post_worker_init`, before its request
  threads exist, so the fork copies no lock held by another thread. The child makes its own
  collaborators with `make_worker` (its own SQLite connection, boto3 and GitHub clients): nothing
  the parent opened is used across the fork.
- Both share the state the way replicas do: the store's delivery claims and build leases (real in
  SQLite too) keep the child's polls and the parent's CodeBuild-event handler off the same build.
- A pipe carries the wake-ups: one byte when the server accepted a delivery, unless an unread one
  is already on its way (`WakeSignal`). End of file on it means the server process is gone (even
  by SIGKILL), and the child stops by itself.
- If the child dies, the server process shuts down gracefully (in-flight requests finish) and the
  gunicorn arbiter starts a fresh one, which forks a fresh child: gunicorn's supervision, reused.
  Accepted deliveries wait in the store meanwhile; nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

log = logging.getLogger("bridge.worker_process")

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# A child that ignores SIGTERM this long after its stop timeout is killed.
KILL_GRACE_SECONDS: Final = 5.0
# How long the child lets a wake-up gather the rest of a burst before it wakes its worker: at
# 600 deliveries a second, one write in six; a build starts 10 ms later, which nobody sees.
WAKE_COALESCE_SECONDS: Final = 0.01


class InProcessWorker(Protocol):
    """What the child runs and what the parent keeps for CodeBuild events: `bridge.worker.Worker`."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def close_builders(self) -> None: ...

    def wake(self) -> None: ...

    def handle_codebuild_event(self, detail: Mapping[str, Any]) -> bool: ...

    @property
    def running(self) -> bool: ...


class WakeSignal:
    """The wake-up pipe from the server process to the worker process, written once until read.

    Every write lets go of the GIL (under load, a hand-over to another request thread and a wait
    to get it back) and wakes the child's relay thread, yet one unread byte already says "look at
    the queue". So a byte shared by both processes says whether a wake-up is on its way: the server
    writes only when it is clear. The child, once it read one, lets `coalesce_seconds` pass (the
    rest of a burst rides on the same wake-up), clears the byte, and only then wakes its worker.
    No delivery is missed: one committed before the clear is found by the drain that follows it;
    one committed after it finds the byte clear and writes. Make it before the fork.
    """

    def __init__(
        self,
        *,
        coalesce_seconds: float = WAKE_COALESCE_SECONDS,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._coalesce_seconds = coalesce_seconds
        self._sleep = sleep
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._on_its_way = mmap.mmap(-1, 1)  # anonymous memory is MAP_SHARED: the child sees the same byte

    # -- the server process ------------------------------------------------------------------------

    def send(self) -> None:
        """Never blocks: a full pipe already holds a wake-up, and a closed one has no reader."""
        if self._on_its_way[0]:
            return
        self._on_its_way[0] = 1
        with contextlib.suppress(OSError):  # BlockingIOError: full; BrokenPipeError: no reader
            os.write(self._write_fd, b"\0")

    def close_reading_end(self) -> None:
        os.close(self._read_fd)

    def close_writing_end(self) -> None:
        os.close(self._write_fd)

    # -- the worker process ------------------------------------------------------------------------

    def receive(self) -> bool:
        """Wait for a wake-up; False once every writer closed (the server process stopped or died)."""
        try:
            data = os.read(self._read_fd, 4096)
        except OSError:
            data = b""
        if not data:
            return False
        self._sleep(self._coalesce_seconds)
        self._on_its_way[0] = 0
        return True


class WorkerProcess:
    """The parent's handle on the worker process; the app uses it where it would use a `Worker`.

    `local` is a worker of the parent's own collaborators that is never started: CodeBuild events
    arriving over HTTP are applied through it, under the store's build lease.
    """

    def __init__(
        self,
        make_worker: Callable[[], InProcessWorker],
        local: InProcessWorker,
        *,
        stop_timeout: float = 30.0,
    ) -> None:
        self._make_worker = make_worker
        self._local = local
        self._stop_timeout = stop_timeout
        self._on_unexpected_exit: Callable[[int], None] | None = None
        self._pid: int | None = None
        self._wake: WakeSignal | None = None
        self._exited = threading.Event()
        self._stopping = False

    # -- lifecycle (the server process) -------------------------------------------------------------

    def start(
        self,
        *,
        close_in_child: Iterable[Any] = (),
        on_unexpected_exit: Callable[[int], None] | None = None,
    ) -> None:
        """Fork the worker process. Call it while this process runs no other thread.

        `close_in_child`: objects with a `close()` the child must not keep open (gunicorn's
        listening sockets: an orphaned child holding them would keep the port from a restart).
        `on_unexpected_exit(exit_code)` runs (on a watcher thread) if the child ends before `stop`.
        """
        if self._pid is not None:
            return
        self._on_unexpected_exit = on_unexpected_exit
        wake = WakeSignal()
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            wake.close_writing_end()
            code = 1
            try:
                for item in close_in_child:
                    item.close()
                code = _run_child(self._make_worker, wake, self._stop_timeout)
            except BaseException:
                log.exception("the worker process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        wake.close_reading_end()
        self._pid, self._wake = pid, wake
        log.info("worker process started", extra={"pid": pid})
        threading.Thread(target=self._watch, args=(pid,), name="bridge-worker-watch", daemon=True).start()

    def _watch(self, pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        exit_code = os.waitstatus_to_exitcode(status)
        self._exited.set()
        if self._stopping:
            return
        log.error(
            "the worker process exited; restarting the server process to start a new one",
            extra={"pid": pid, "exit_code": exit_code},
        )
        if self._on_unexpected_exit is not None:
            self._on_unexpected_exit(exit_code)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the child to finish its current step (SIGTERM), wait for it, kill it if it will not."""
        pid = self._pid
        if pid is None:
            return
        self._stopping = True
        if not self._exited.is_set():
            _signal(pid, signal.SIGTERM)
            if not self._exited.wait(timeout + KILL_GRACE_SECONDS):
                log.warning("the worker process did not stop in time; killing it", extra={"pid": pid})
                _signal(pid, signal.SIGKILL)
                self._exited.wait(KILL_GRACE_SECONDS)
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.close_writing_end()

    def close_builders(self) -> None:
        """The child closes its own builders when it stops; these are the parent's (used for events)."""
        self._local.close_builders()

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def started(self) -> bool:
        return self._pid is not None

    @property
    def running(self) -> bool:
        return self._pid is not None and not self._exited.is_set()

    # -- what the app calls (request threads of the server process) ------------------------------

    def wake(self) -> None:
        wake = self._wake
        if wake is not None:
            wake.send()

    def handle_codebuild_event(self, detail: Mapping[str, Any]) -> bool:
        return self._local.handle_codebuild_event(detail)


def _run_child(make_worker: Callable[[], InProcessWorker], wake: WakeSignal, stop_timeout: float) -> int:
    """The worker process: run the worker until SIGTERM, or until the server process is gone."""
    stop = threading.Event()
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: stop.set())
    worker = make_worker()
    worker.start()
    threading.Thread(
        target=_relay_wakeups, args=(wake, worker, stop), name="bridge-worker-wake", daemon=True
    ).start()
    while not stop.wait(1.0):
        if not worker.running:
            log.error("the worker thread stopped; ending the worker process")
            return 1
    worker.stop(stop_timeout)
    worker.close_builders()
    return 0


def _relay_wakeups(wake: WakeSignal, worker: InProcessWorker, stop: threading.Event) -> None:
    while wake.receive():
        worker.wake()
    stop.set()  # every writer closed: the server process stopped or died


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
