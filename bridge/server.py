"""`bridge serve`: gunicorn embedded in-process, one server process with threads, and its worker process.

Why exactly one server process: the default store is a SQLite file, and the background worker that
starts and tracks builds must run once per server. Threads (gthread) give the concurrency a webhook
endpoint needs, since each request is short and mostly waits on the disk. Several replicas need a
shared store (DynamoDB/SQS), not more processes here.

The worker runs in a process of its own (`bridge.worker_process`), forked by the server process in
`post_worker_init`, before its request threads exist, and stopped in `worker_exit`, which gunicorn
runs on SIGTERM after in-flight requests finish (graceful timeout). The app is loaded in the server
process (no preload), so no connection is created before a fork that would share it.
"""

from __future__ import annotations

import errno
import gc
import logging
import resource
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

from flask import Flask
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.glogging import Logger as GunicornLogger  # type: ignore[import-untyped]

from bridge.app import WORKER_KEY, create_app
from bridge.config import Config
from bridge.errors import BridgeError, InputError
from bridge.intake import IntakeWorker
from bridge.logs import LOGGED_BY_APP, current_formatter
from bridge.operator_page import is_loopback
from bridge.services import Services, build_services
from bridge.worker import Worker
from bridge.worker_process import WorkerProcess

log = logging.getLogger("bridge.server")

GRACEFUL_TIMEOUT_SECONDS: Final = 30
MAX_CONNECTIONS: Final = 2000
RESERVED_DESCRIPTORS: Final = 128  # the state file, clients to AWS, GitHub and GitLab, logs


class LineLogger(GunicornLogger):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's own log lines and the access log, in the format every other line has (JSON or text,
    as bridge.logs.configure_logging chose)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(current_formatter())

    def access(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled or environ.get(LOGGED_BY_APP):
            return
        status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "")).split(" ", 1)[0]
        self.access_log.info(
            "access",
            extra={
                "remote": environ.get("REMOTE_ADDR"),
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),  # no query string: it is nobody's business here
                "status": int(status) if str(status).isdigit() else status,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 2),
            },
        )


def warn_without_aws(config: Config) -> None:
    """Say at start-up, once, what would otherwise show only when the first build cannot start:
    no AWS credentials or no region for the routes that build on CodeBuild. A warning, not an exit:
    deliveries are still accepted and kept, and build once the server is given what it lacks."""
    if not any(route.builder == "codebuild" for route in config.routes):
        return
    from bridge import aws

    if aws.resolve_region(config.aws.region) is None:
        log.warning(
            "no AWS region: CodeBuild builds cannot start",
            extra={"hint": "set [aws] region in the config, or AWS_REGION in the server's environment"},
        )
        return
    try:
        aws.check_credentials(aws.session(region=config.aws.region))
    except BridgeError as exc:
        log.warning(
            "no AWS credentials: CodeBuild builds cannot start",
            extra={"error": exc.message, "hint": exc.hint},
        )


def served_app(
    config: Config, *, host: str | None = None, make_services: Callable[[Config], Services] = build_services
) -> Flask:
    """The app `bridge serve` runs: its worker in a process of its own, with its own collaborators.

    `host`: the address the server binds (a loopback one serves the operator page by default).
    `make_services`: how each process makes its collaborators (`bridge demo` passes stand-ins).
    """
    services = make_services(config)
    if make_services is build_services:
        warn_without_aws(config)
    worker = WorkerProcess(
        lambda: Worker(make_services(config)), Worker(services), stop_timeout=GRACEFUL_TIMEOUT_SECONDS
    )
    loopback = host is not None and is_loopback(host)
    return create_app(config, services, worker=worker, loopback_bind=loopback)


def _start_worker(gunicorn_worker: Any) -> None:
    # Everything alive now (imports, the app, boto3's service models) lives as long as the process:
    # frozen out of the collector's reach, a full collection no longer walks it. Measured under
    # 200 deliveries/s: two full collections in 15 s, each stopping every request thread for
    # 39-54 ms, became 0.6-0.9 ms. Before the fork, so the worker process inherits it too.
    gc.freeze()
    app = gunicorn_worker.wsgi
    bridge_worker = app.extensions.get(WORKER_KEY) if isinstance(app, Flask) else None
    if isinstance(bridge_worker, WorkerProcess):

        def restart_server_process(_exit_code: int) -> None:
            gunicorn_worker.alive = False  # finish in-flight requests and exit; the arbiter forks anew

        bridge_worker.start(close_in_child=gunicorn_worker.sockets, on_unexpected_exit=restart_server_process)
    elif bridge_worker is not None:
        bridge_worker.start()


def _stop_worker(_arbiter: Any, gunicorn_worker: Any) -> None:
    app = getattr(gunicorn_worker, "wsgi", None)
    bridge_worker = app.extensions.get(WORKER_KEY) if isinstance(app, Flask) else None
    if bridge_worker is not None:
        bridge_worker.stop(timeout=GRACEFUL_TIMEOUT_SECONDS)
        bridge_worker.close_builders()


class BridgeServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, app_factory: Callable[[], Flask], options: Mapping[str, Any]) -> None:
        self._app_factory = app_factory
        self._options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app_factory()


def _connection_capacity() -> int:
    """As many connections as file descriptors allow, up to `MAX_CONNECTIONS`: the soft limit is
    raised to the hard one first (a container's soft limit is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(64, min(MAX_CONNECTIONS, soft - RESERVED_DESCRIPTORS))


_HOST_HINT: Final = "pass an address of this machine: 127.0.0.1 (this host only) or 0.0.0.0 (every interface)"


def listen(host: str, port: int) -> int:
    """Bind the server's socket before gunicorn starts, and hand gunicorn its file descriptor.

    gunicorn, binding itself, answers a port in use with five error lines a second apart and then a
    sixth; here it is one error naming the port and what to do. gunicorn takes the descriptor over
    (`fd://N`) and closes it, so nothing is left open in this process.
    """
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(
            "--host",
            f"{host!r} is not an address or a name this host can resolve ({exc})",
            hint=_HOST_HINT,
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn sets it
        sock.bind(address)
        sock.listen(2048)  # gunicorn's default backlog; it listens again with its own
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                "--port",
                f"{where} is already in use by another process",
                hint=f"stop the process listening there (`ss -ltnp 'sport = :{port}'` shows it), "
                "or pass another --port",
            ) from None
        if exc.errno == errno.EACCES:
            raise InputError(
                "--port",
                f"no permission to listen on {where}",
                hint="ports below 1024 need root: pass --port 1024 or above (8080 by default)",
            ) from None
        raise InputError(
            "--host",
            f"cannot listen on {where}: {exc.strerror}",
            hint=_HOST_HINT,
        ) from None
    return sock.detach()


def server_options(*, host: str, port: int, threads: int, fd: int | None = None) -> dict[str, Any]:
    """gunicorn's settings; `fd`, a socket from listen(), is served instead of binding host:port."""
    return {
        "bind": f"fd://{fd}" if fd is not None else f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": 1,  # see the module docstring: one writer of the SQLite store
        "worker_class": IntakeWorker,  # gthread, receiving each request before a thread takes it
        "threads": threads,
        # Connections held at once, most of them waiting for their request at no thread's cost.
        "worker_connections": _connection_capacity(),
        "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
        "timeout": 60,
        "keepalive": 5,
        "preload_app": False,
        "accesslog": "-",
        "errorlog": "-",
        "logger_class": LineLogger,
        "post_worker_init": _start_worker,
        "worker_exit": _stop_worker,
        "proc_name": "bridge",
        # gunicorn 23+ opens a control socket in ~/.gunicorn; bridge needs none, and two servers
        # on one host (or a read-only home) must not collide over it.
        "control_socket_disable": True,
    }


def run(app_factory: Callable[[], Flask], *, host: str, port: int, threads: int) -> None:
    """Serve until SIGTERM/SIGINT; returns after a graceful shutdown. InputError if it cannot listen."""
    fd = listen(host, port)
    BridgeServer(app_factory, server_options(host=host, port=port, threads=threads, fd=fd)).run()
