"""`bridge serve`'s gunicorn worker: gthread, with each request received before a thread is given to it.

gunicorn's gthread worker hands a new connection to a request thread as soon as its first byte
arrives, and the thread then reads the headers and the body from a blocking socket with no
deadline. A client that sends its headers and one body byte and then goes quiet holds a thread for
as long as it likes; as many such clients as there are threads stop the server, `/healthz`
included. (gevent would not hold a thread per slow client, but SQLite and the HMAC checks are C
calls that would stop its one event loop instead; gunicorn's asyncio worker has no deadline for a
request's headers either.)

So this worker keeps gthread's pool, accept loop, response writing and HTTP parser, and moves only
the receiving of a request into its main loop, where a waiting connection costs a buffer and a
selector entry, not a thread:

- the headers must arrive within `header_timeout_seconds` of connecting, and at most `HEAD_LIMIT`
  bytes of them; the body within `body_timeout_seconds` after them. Past a deadline the connection
  is closed.
- the headers are parsed by gunicorn's own parser; a request they alone refuse (wrong method or
  path, a missing or malformed signature header, a declared length over the limit, as the app's
  `Intake.refused` decides) goes to a thread at once, without its body, which is never read.
- a body is read only after its declared length (the limit, for a chunked one) is reserved from
  `max_inflight_body_bytes`; a body that does not fit waits, unread, until others finish, so the
  bytes held for bodies in flight stay bounded whatever clients send.
- `/healthz` is answered by threads of its own, so a busy request pool never hides a live server.
- a kept-alive connection waits for its next request in the main loop too, under the same deadlines;
  a request answered from its headers alone closes its connection (its body is never read). A
  connection is closed without blocking the main loop: the response's end is sent, then what the
  client still sends is drained for up to `LINGER_SECONDS`.

Then the request, wholly buffered, is given to gunicorn's parser and handled by a request thread
exactly as gthread would, so the app sees the same WSGI environ.
"""

from __future__ import annotations

import contextlib
import errno
import re
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Final

from gunicorn import http  # type: ignore[import-untyped]
from gunicorn.http.errors import NoMoreData  # type: ignore[import-untyped]
from gunicorn.http.message import Request  # type: ignore[import-untyped]
from gunicorn.http.unreader import IterUnreader, SocketUnreader  # type: ignore[import-untyped]
from gunicorn.workers.gthread import TConn, ThreadWorker  # type: ignore[import-untyped]

from bridge.app import INTAKE_KEY, Intake

HEAD_LIMIT: Final = 32_768  # request line and headers: a GitHub or GitLab delivery sends about 2 KB
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 1_048_576
OPS_THREADS: Final = 2
_RECV: Final = 262_144
_HEADERS_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


_Head = tuple[str, str, dict[str, str], "int | None"]  # method, path, headers, body length (None: chunked)
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET: Final = re.compile(rb"/[!-~]*")


def _plain_head(head: bytes) -> _Head | None:
    """The usual head (what GitHub, GitLab and SNS send) read in one pass; None for anything else
    (any framing doubt, an unusual line), which gunicorn's own parser then reads. Parsing here is
    only to decide when the request has arrived; the request thread parses it again, with gunicorn."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if (
        len(parts) != 3
        or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0")
        or _TOKEN.fullmatch(parts[0]) is None
        or _TARGET.fullmatch(parts[1]) is None
    ):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return None
        key = name.decode("ascii").lower()
        if key in headers:
            if key in ("content-length", "transfer-encoding", "host"):
                return None
            continue
        headers[key] = value.strip(b" \t").decode("latin-1")
    framing = headers.get("transfer-encoding")
    declared = headers.get("content-length")
    if framing is not None:
        if declared is not None or framing.lower() != "chunked" or parts[2] != b"HTTP/1.1":
            return None
        length = None
    elif declared is not None:
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 18:
            return None
        length = int(declared)
    else:
        length = 0
    return parts[0].decode("ascii"), parts[1].decode("ascii").split("?", 1)[0], headers, length


class _Incoming:
    """A connection whose request is still arriving, read by the main loop."""

    __slots__ = ("buf", "chunked", "conn", "deadline", "head", "need", "pieces", "received", "reserve")

    def __init__(self, conn: Any, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.buf = bytearray()  # the headers as they arrive
        self.head = b""  # the request line and headers, once complete
        self.pieces: list[bytes] = []  # the body as received: never joined, so never copied here
        self.received = 0  # body bytes in `pieces`
        self.need = 0  # body bytes declared (Content-Length)
        self.chunked = False
        self.reserve = 0  # body bytes to reserve (or reserved) for it


class _Buffered(SocketUnreader):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's socket reader, serving the bytes the main loop received before the socket's."""

    def __init__(self, sock: socket.socket, pieces: deque[bytes]) -> None:
        super().__init__(sock)
        self._pieces = pieces

    @property
    def pieces(self) -> deque[bytes]:
        return self._pieces

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self._pieces:
            return self._pieces.popleft()
        return bytes(super().chunk(size_hint))


class _Lingering:
    __slots__ = ("deadline", "drained", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.drained = 0


class IntakeWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    def init_process(self) -> None:
        self._intake: Intake | None = None
        self._incoming: dict[int, _Incoming] = {}
        self._parked: deque[_Incoming] = deque()
        self._lingering: dict[int, _Lingering] = {}
        self._reserved = 0
        self._reservations: dict[int, int] = {}
        self._ops_pool = ThreadPoolExecutor(OPS_THREADS, thread_name_prefix="ops")
        super().init_process()  # loads the app, runs post_worker_init, then run()

    def _app_intake(self) -> Intake | None:
        if self._intake is None:
            extensions = getattr(self.wsgi, "extensions", None)
            intake = extensions.get(INTAKE_KEY) if isinstance(extensions, dict) else None
            self._intake = intake if isinstance(intake, Intake) else None
        return self._intake

    # -- receiving ----------------------------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        intake = self._app_intake()
        if intake is None:  # not bridge's app: plain gthread
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())  # non-blocking from here
        incoming = _Incoming(conn, time.monotonic() + intake.header_timeout_seconds)
        self._incoming[id(conn)] = incoming
        self.poller.register(client, selectors.EVENT_READ, partial(self._on_readable, incoming))

    def _on_readable(self, incoming: _Incoming, _sock: Any) -> None:
        intake = self._app_intake()
        if intake is None:
            return
        if incoming.head:
            want = incoming.need - incoming.received if not incoming.chunked else _RECV
        else:
            want = HEAD_LIMIT + 1 - len(incoming.buf)
        try:
            data = incoming.conn.sock.recv(min(max(want, 1), _RECV))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(incoming)
            return
        if not data:
            self._drop(incoming)
            return
        if incoming.head:
            incoming.pieces.append(data)
            incoming.received += len(data)
            self._on_body(incoming, intake)
        else:
            incoming.buf += data
            self._on_head(incoming, intake)

    def _on_head(self, incoming: _Incoming, intake: Intake) -> None:
        end = incoming.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(incoming.buf) > HEAD_LIMIT:
                self._refuse(incoming, _HEADERS_TOO_LARGE)
            return
        incoming.head = bytes(incoming.buf[: end + 4])
        rest = bytes(incoming.buf[end + 4 :])
        incoming.buf = bytearray()
        if rest:
            incoming.pieces.append(rest)
            incoming.received = len(rest)
        parsed = _plain_head(incoming.head) or self._gunicorn_head(incoming.head, incoming.conn.client)
        if parsed is None:  # gunicorn's parser in the request thread answers it (400)
            self._dispatch(incoming)
            return
        method, path, headers, length = parsed
        if method == "GET" and path in intake.ops_paths:
            self._dispatch(incoming, self._ops_pool)
            return
        incoming.chunked = length is None
        try:
            refused = intake.refused(method, path, lambda name: headers.get(name.lower()))
        except Exception:  # a bug in a check must not stop the main loop: the app answers it
            refused = True
        if refused:
            # Answered from its headers; a body it has is never read, and ends the connection.
            self._dispatch(incoming, close=length is None or length > 0)
            return
        if length is None:
            incoming.reserve = intake.max_body_bytes
        else:
            incoming.reserve = incoming.need = length
        incoming.deadline = time.monotonic() + intake.body_timeout_seconds
        if headers.get("expect", "").lower() == "100-continue":
            self._send_quietly(incoming.conn.sock, _CONTINUE)
        if not self._try_reserve(incoming, intake):
            self.poller.unregister(incoming.conn.sock)
            self._parked.append(incoming)
            return
        self._on_body(incoming, intake)

    def _gunicorn_head(self, head: bytes, client: Any) -> _Head | None:
        """The head as gunicorn's parser reads it: for anything `_plain_head` leaves to it."""
        try:
            request = Request(self.cfg, IterUnreader([head]), client)
        except Exception:
            return None
        headers: dict[str, str] = {}
        for name, value in request.headers:
            headers.setdefault(name.lower(), value)
        reader = request.body.reader
        length = int(reader.length) if hasattr(reader, "length") else None
        return request.method, request.path, headers, length

    def _on_body(self, incoming: _Incoming, intake: Intake) -> None:
        if not incoming.chunked:
            if incoming.received >= incoming.need:
                self._dispatch(incoming)
            return
        if incoming.received > intake.max_body_bytes + HEAD_LIMIT:
            self._dispatch(incoming)  # over the limit whatever its framing: the app answers 413
        elif self._chunked_complete(incoming):
            self._dispatch(incoming)

    def _chunked_complete(self, incoming: _Incoming) -> bool:
        """Whether gunicorn's parser reads the whole chunked body from what has arrived (tried only
        when what arrived ends as a chunked body ends)."""
        tail = b"".join(incoming.pieces[-4:])[-4:]
        if tail != b"\r\n\r\n":
            return False
        try:
            request = Request(self.cfg, IterUnreader([incoming.head, *incoming.pieces]), incoming.conn.client)
            while request.body.read(_RECV):
                pass
        except NoMoreData:
            return False
        except Exception:  # malformed: the request thread's parse answers it
            return True
        return True

    # -- the body budget ----------------------------------------------------------------------------

    def _try_reserve(self, incoming: _Incoming, intake: Intake) -> bool:
        if incoming.reserve and self._reserved + incoming.reserve > intake.max_inflight_body_bytes:
            return False
        self._reserved += incoming.reserve
        self._reservations[id(incoming.conn)] = incoming.reserve
        return True

    def _release(self, conn: Any) -> None:
        self._reserved -= self._reservations.pop(id(conn), 0)
        intake = self._app_intake()
        if intake is None:
            return
        for incoming in list(self._parked):
            if self._try_reserve(incoming, intake):
                self._parked.remove(incoming)
                self.poller.register(
                    incoming.conn.sock, selectors.EVENT_READ, partial(self._on_readable, incoming)
                )
                self._on_body(incoming, intake)

    # -- handing over, and closing -----------------------------------------------------------------

    def _dispatch(
        self, incoming: _Incoming, pool: ThreadPoolExecutor | None = None, *, close: bool = False
    ) -> None:
        """To a request thread, wholly received; `close`: its body was not received (refused from its
        headers), so the connection ends with the answer rather than a thread draining the body."""
        conn = incoming.conn
        conn.bridge_close = close
        del self._incoming[id(conn)]
        self.poller.unregister(conn.sock)
        conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader = _Buffered(
            conn.sock, deque([incoming.head or bytes(incoming.buf), *incoming.pieces])
        )
        incoming.buf, incoming.pieces = bytearray(), []
        conn.initialized = True  # TConn.init() would make a parser of its own
        conn.data_ready = True
        conn.sock.setblocking(True)
        # The thread should find everything it reads already received; should it still read or write
        # the socket (a framing the main loop misjudged, a client that does not read its answer),
        # the kernel bounds each call, whatever blocking mode gunicorn sets.
        intake = self._app_intake()
        limit = struct.pack("ll", int(intake.body_timeout_seconds) if intake else 30, 0)
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        future = (pool or self.tpool).submit(self.handle, conn)
        future.add_done_callback(lambda done: self.method_queue.defer(self.finish_request, conn, done))

    def finish_request(self, conn: Any, future: Future[Any]) -> None:
        """After the response: release the body's bytes, then close without blocking the main loop."""
        if self._app_intake() is None:
            super().finish_request(conn, future)
            return
        self._release(conn)
        try:
            keep = bool(future.result()) and self.alive
        except Exception:  # the request thread logged it; the connection is done
            keep = False
        if keep:
            self._await_request(conn)
        else:
            self._linger(conn.sock)

    def handle_request(self, req: Any, conn: Any) -> Any:
        if getattr(conn, "bridge_close", False):
            req.force_close()  # answered with Connection: close
        return super().handle_request(req, conn)

    def _await_request(self, conn: Any) -> None:
        """A kept-alive connection waits for its next request in the main loop, like a new one."""
        intake = self._app_intake()
        unreader = conn.parser.unreader
        leftover = bytearray(unreader.take_buffered())
        for piece in getattr(unreader, "pieces", ()):
            leftover += piece
        conn.sock.setblocking(False)
        incoming = _Incoming(conn, time.monotonic() + (intake.header_timeout_seconds if intake else 5))
        self._incoming[id(conn)] = incoming
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, incoming))
        if leftover and intake is not None:  # a pipelined request already read with the last one
            incoming.buf = leftover
            self._on_head(incoming, intake)

    def _refuse(self, incoming: _Incoming, answer: bytes) -> None:
        del self._incoming[id(incoming.conn)]
        self.poller.unregister(incoming.conn.sock)
        self._send_quietly(incoming.conn.sock, answer)
        self._linger(incoming.conn.sock)

    def _drop(self, incoming: _Incoming) -> None:
        if self._incoming.pop(id(incoming.conn), None) is None:
            return  # handed over meanwhile (a release that made room dispatched it)
        if incoming in self._parked:
            self._parked.remove(incoming)
        else:
            self._unregister(incoming.conn.sock)
        self._release(incoming.conn)
        self._close(incoming.conn.sock)

    def _linger(self, sock: socket.socket) -> None:
        """RFC 9112 section 9.6: send FIN, drain what the client still sends, then close, so unread
        bytes do not make the kernel reset the connection before the client read the answer."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            self._close(sock)
            return
        lingering = _Lingering(sock, time.monotonic() + LINGER_SECONDS)
        self._lingering[id(sock)] = lingering
        self.poller.register(sock, selectors.EVENT_READ, partial(self._on_lingering, lingering))

    def _on_lingering(self, lingering: _Lingering, _sock: Any) -> None:
        try:
            data = lingering.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        lingering.drained += len(data)
        if not data or lingering.drained > LINGER_BYTES:
            self._end_lingering(lingering)

    def _end_lingering(self, lingering: _Lingering) -> None:
        self._lingering.pop(id(lingering.sock), None)
        self._unregister(lingering.sock)
        self._close(lingering.sock)

    def _unregister(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)

    def _close(self, sock: socket.socket) -> None:
        self.nr_conns -= 1
        with contextlib.suppress(OSError):
            sock.close()

    @staticmethod
    def _send_quietly(sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.send(data)

    # -- deadlines ------------------------------------------------------------------------------------

    def murder_pending(self) -> None:
        """Runs from the main loop at least once a second: past-deadline connections are closed."""
        super().murder_pending()
        now = time.monotonic()
        # A stopping worker does not wait for requests that have not begun to arrive.
        expired: list[Callable[[], None]] = [
            partial(self._drop, incoming)
            for incoming in self._incoming.values()
            if incoming.deadline <= now or (not self.alive and not incoming.buf and not incoming.head)
        ]
        expired += [
            partial(self._end_lingering, lingering)
            for lingering in self._lingering.values()
            if lingering.deadline <= now
        ]
        for close in expired:
            close()
