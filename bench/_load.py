"""A small HTTP/1.1 load generator on asyncio streams (keep-alive connections, loopback only).

Two modes: `closed_loop` (N connections, each sends its next request as soon as the last answer
arrives: the throughput a server sustains) and `fixed_rate` (requests scheduled at a fixed rate,
latency measured from the scheduled send time, so a slow server cannot hide its queueing: no
coordinated omission).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

RequestFactory = Callable[[int], bytes]  # request number -> raw HTTP request bytes


@dataclass
class Result:
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """q in (0, 100]; milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def summary(self) -> dict[str, float | int | dict[int, int]]:
        return {
            "requests": len(self.latencies),
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "max_ms": round(max(self.latencies) * 1000, 2) if self.latencies else float("nan"),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 2) if self.latencies else float("nan"),
            "statuses": dict(self.statuses),
        }


def post_request(path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, raw: bytes) -> int:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


async def _closed_loop(
    host: str, port: int, make: RequestFactory, connections: int, seconds: float
) -> Result:
    result = Result()
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        connection = _Connection(host, port)
        while time.perf_counter() < deadline:
            raw = make(next(counter))
            began = time.perf_counter()
            try:
                status = await connection.exchange(raw)
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                result.errors += 1
                connection.close()
                continue
            result.latencies.append(time.perf_counter() - began)
            result.statuses[status] += 1
        connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    result.seconds = time.perf_counter() - began
    return result


async def _fixed_rate(host: str, port: int, make: RequestFactory, rate: float, total: int) -> Result:
    result = Result(sent=total)
    idle: list[_Connection] = []
    start = time.perf_counter() + 0.05

    async def one(number: int) -> None:
        scheduled = start + number / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        reused = bool(idle)
        connection = idle.pop() if reused else _Connection(host, port)
        try:
            try:
                status = await connection.exchange(make(number))
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                if not reused:
                    raise
                # A kept-alive connection the server closed while it sat idle (gunicorn's keepalive
                # timeout): an HTTP client sends again on a new connection, and so does this one.
                connection.close()
                connection = _Connection(host, port)
                status = await connection.exchange(make(number))
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            result.errors += 1
            connection.close()
            return
        result.latencies.append(time.perf_counter() - scheduled)  # includes any wait to be sent
        result.statuses[status] += 1
        idle.append(connection)

    began = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(total)))
    result.seconds = time.perf_counter() - began
    for connection in idle:
        connection.close()
    return result


def closed_loop(host: str, port: int, make: RequestFactory, *, connections: int, seconds: float) -> Result:
    return asyncio.run(_closed_loop(host, port, make, connections, seconds))


def fixed_rate(host: str, port: int, make: RequestFactory, *, rate: float, total: int) -> Result:
    return asyncio.run(_fixed_rate(host, port, make, rate, total))
