"""The worker in a process of its own: wake-ups cross the pipe, stops are graceful, deaths are seen.

Real forks, no mocks: the worker the child runs is a small recording one passed in (the child writes
what happened to a file, since its memory is not ours), and the parent's handle is the real
`WorkerProcess`. End-to-end behaviour with the real worker is in tests/e2e/test_server.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bridge.worker_process import WakeSignal, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


class RecordingWorker:
    """Writes one line per call to `journal`; `die_after` seconds after start its thread 'dies'."""

    def __init__(self, journal: Path, *, die_after: float | None = None) -> None:
        self._journal = journal
        self._die_after = die_after
        self._started_at: float | None = None
        self.events: list[Mapping[str, Any]] = []

    def _note(self, line: str) -> None:
        with self._journal.open("a") as out:
            out.write(f"{os.getpid()} {line}\n")

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._note("start")

    def stop(self, timeout: float = 30.0) -> None:
        self._note(f"stop {timeout}")

    def close_builders(self) -> None:
        self._note("close_builders")

    def wake(self) -> None:
        self._note("wake")

    def handle_codebuild_event(self, detail: Mapping[str, Any]) -> bool:
        self.events.append(detail)
        return True

    @property
    def running(self) -> bool:
        return self._die_after is None or (
            self._started_at is not None and time.monotonic() - self._started_at < self._die_after
        )


def lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def handles() -> Iterator[list[WorkerProcess]]:
    """Every handle a test makes is stopped (its child killed if need be) at teardown."""
    made: list[WorkerProcess] = []
    yield made
    for handle in made:
        handle.stop(timeout=1)


def spawn(handles: list[WorkerProcess], make: Callable[[], RecordingWorker], **start: Any) -> WorkerProcess:
    handle = WorkerProcess(make, RecordingWorker(Path(os.devnull)), stop_timeout=2)
    handles.append(handle)
    handle.start(**start)
    return handle


def test_the_worker_runs_in_another_process_and_wakes_cross_the_pipe(
    journal: Path, handles: list[WorkerProcess]
) -> None:
    handle = spawn(handles, lambda: RecordingWorker(journal))
    wait_for(lambda: "start" in " ".join(lines(journal)))
    child = int(lines(journal)[0].split()[0])
    assert child == handle.pid
    assert child != os.getpid()
    assert handle.started
    assert handle.running

    handle.wake()

    wait_for(lambda: any(line.endswith("wake") for line in lines(journal)))
    assert all(line.split()[0] == str(child) for line in lines(journal))


def test_every_wake_after_the_last_one_was_read_crosses_again(
    journal: Path, handles: list[WorkerProcess]
) -> None:
    """The child's read clears the shared "on its way" byte the parent checks, across the fork."""
    handle = spawn(handles, lambda: RecordingWorker(journal))
    wait_for(lambda: bool(lines(journal)))

    def wakes_seen() -> int:
        return sum(line.endswith("wake") for line in lines(journal))

    for number in range(1, 4):
        handle.wake()
        deadline = time.monotonic() + 10
        while wakes_seen() < number:
            assert time.monotonic() < deadline, f"wake {number} never reached the child"
            time.sleep(0.02)
        assert wakes_seen() == number


# --- the wake-up signal on its own ------------------------------------------------------------------


def _bytes_in_the_pipe(wake: WakeSignal) -> int:
    os.set_blocking(wake._read_fd, False)
    try:
        return len(os.read(wake._read_fd, 65536))
    except BlockingIOError:
        return 0


def test_a_burst_of_wakes_writes_one_byte_until_it_is_read() -> None:
    """Each write lets go of the GIL on the ack path; one unread byte already says "look at the queue"."""
    wake = WakeSignal()
    for _ in range(1000):
        wake.send()
    assert _bytes_in_the_pipe(wake) == 1


def test_a_wake_sent_after_one_was_received_is_written_again() -> None:
    wake = WakeSignal()
    wake.send()
    assert wake.receive()
    wake.send()
    wake.send()
    assert _bytes_in_the_pipe(wake) == 1


def test_wakes_sent_while_the_child_gathers_a_burst_ride_on_the_one_it_read() -> None:
    """Between reading a wake-up and waking its worker, the child lets the rest of a burst gather:
    nothing is written meanwhile, and the first wake after it is written again."""
    gathering, done_gathering = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        assert seconds == 0.5
        gathering.set()
        done_gathering.wait(10)

    wake = WakeSignal(coalesce_seconds=0.5, sleep=sleep)
    received: list[bool] = []
    reader = threading.Thread(target=lambda: received.append(wake.receive()))
    reader.start()
    wake.send()
    assert gathering.wait(10)
    for _ in range(10):
        wake.send()
    assert _bytes_in_the_pipe(wake) == 0
    done_gathering.set()
    reader.join(10)
    assert received == [True]
    wake.send()
    assert _bytes_in_the_pipe(wake) == 1


def test_receive_ends_when_the_server_side_is_closed() -> None:
    wake = WakeSignal()
    wake.send()
    wake.close_writing_end()
    assert wake.receive()
    assert not wake.receive()


def test_wakes_never_block_the_server_even_when_the_child_reads_none(
    journal: Path, handles: list[WorkerProcess]
) -> None:
    handle = spawn(handles, lambda: RecordingWorker(journal))
    wait_for(lambda: bool(lines(journal)))
    os.kill(handle.pid or 0, signal.SIGSTOP)  # the child reads nothing: the pipe fills up
    try:
        began = time.monotonic()
        for _ in range(200_000):  # far more bytes than a pipe buffer holds
            handle.wake()
        assert time.monotonic() - began < 5
    finally:
        os.kill(handle.pid or 0, signal.SIGCONT)


def test_stop_is_graceful_the_child_stops_its_worker_and_closes_its_builders(
    journal: Path, handles: list[WorkerProcess]
) -> None:
    handle = spawn(handles, lambda: RecordingWorker(journal))
    wait_for(lambda: bool(lines(journal)))

    handle.stop(timeout=7)

    assert [line.split(" ", 1)[1] for line in lines(journal)] == ["start", "stop 2", "close_builders"]
    assert not handle.running
    handle.wake()  # after stop: a no-op, not an error


def test_codebuild_events_are_applied_by_the_parents_own_worker(
    journal: Path, handles: list[WorkerProcess]
) -> None:
    local = RecordingWorker(Path(os.devnull))
    handle = WorkerProcess(lambda: RecordingWorker(journal), local)
    handles.append(handle)
    handle.start()

    assert handle.handle_codebuild_event({"build-id": "arn:b1"}) is True

    assert local.events == [{"build-id": "arn:b1"}]  # here, under the store's lease: not in the child


class Exits:
    """The exit codes `on_unexpected_exit` reported, and an event set at the first."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.seen = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.seen.set()


def test_a_child_that_dies_is_reported_with_its_exit_code(
    journal: Path, handles: list[WorkerProcess]
) -> None:
    exits = Exits()
    handle = spawn(handles, lambda: RecordingWorker(journal), on_unexpected_exit=exits)
    wait_for(lambda: bool(lines(journal)))

    os.kill(handle.pid or 0, signal.SIGKILL)

    assert exits.seen.wait(10)
    assert exits.codes == [-signal.SIGKILL]
    assert not handle.running  # /readyz: "the background worker has stopped"


def test_a_child_whose_worker_thread_stopped_exits_and_is_reported(
    journal: Path, handles: list[WorkerProcess]
) -> None:
    exits = Exits()
    spawn(handles, lambda: RecordingWorker(journal, die_after=0.1), on_unexpected_exit=exits)
    assert exits.seen.wait(10)
    assert exits.codes == [1]


def test_a_child_that_fails_to_make_its_worker_exits_and_is_reported(handles: list[WorkerProcess]) -> None:
    def broken() -> RecordingWorker:
        raise RuntimeError("no store")

    exits = Exits()
    spawn(handles, broken, on_unexpected_exit=exits)
    assert exits.seen.wait(10)
    assert exits.codes == [1]


def test_a_planned_stop_is_not_reported_as_a_death(journal: Path, handles: list[WorkerProcess]) -> None:
    exits: list[int] = []
    handle = spawn(handles, lambda: RecordingWorker(journal), on_unexpected_exit=exits.append)
    wait_for(lambda: bool(lines(journal)))
    handle.stop(timeout=5)
    for watcher in [thread for thread in threading.enumerate() if thread.name == "bridge-worker-watch"]:
        watcher.join(timeout=10)  # each watcher has seen its child's exit and decided whether to report it
    assert exits == []


def test_the_child_closes_what_it_must_not_keep(journal: Path, handles: list[WorkerProcess]) -> None:
    class Closeable:
        def __init__(self, path: Path) -> None:
            self._path = path

        def close(self) -> None:
            self._path.write_text(str(os.getpid()))

    marker = journal.with_name("closed")
    handle = spawn(handles, lambda: RecordingWorker(journal), close_in_child=[Closeable(marker)])
    wait_for(lambda: marker.exists() and marker.read_text() != "")  # created, then written: wait for both
    assert marker.read_text() == str(handle.pid)


def test_when_the_server_process_dies_its_worker_process_stops_by_itself(tmp_path: Path) -> None:
    """SIGKILL of the parent: no signal reaches the child, but its end of the pipe reads end of file."""
    journal = tmp_path / "journal"
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            sys.path[:0] = [{str(ROOT)!r}]
            from tests.test_worker_process import RecordingWorker
            from bridge.worker_process import WakeSignal, WorkerProcess
            journal = Path({str(journal)!r})
            handle = WorkerProcess(lambda: RecordingWorker(journal), RecordingWorker(Path("/dev/null")))
            handle.start()
            print(handle.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        wait_for(lambda: bool(lines(journal)))
        parent.kill()
        parent.wait(10)

        wait_for(lambda: "close_builders" in lines(journal)[-1], timeout=10)
        assert [line.split(" ", 1)[1] for line in lines(journal)] == ["start", "stop 30.0", "close_builders"]
        wait_for(lambda: not _alive(child), timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, reparented to init and not reaped yet, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
