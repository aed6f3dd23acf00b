"""`bridge serve | plan | check-config` (also installed as `codebuild-bridge`; `python -m bridge` works too).

Every BridgeError ends here as its message and fix-it hint on stderr and its exit code
(2 for bad input or config, 3 for missing credentials or secrets, 1 otherwise). `plan` also exits 3
when the event would be ignored, so a script can tell "builds" from "does not" without parsing.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from bridge import __version__
from bridge.errors import BadRequestError, BridgeError, ConfigError, InputError
from bridge.logs import LOG_FORMATS

if TYPE_CHECKING:
    from bridge.config import Config
    from bridge.queue import DeliveryQueue
    from bridge.store import StateStore

DEFAULT_CONFIG: Final = "bridge.toml"
CONFIG_ENV: Final = "BRIDGE_CONFIG"
# The whole routing file in one variable, for platforms where mounting a file is awkward (ECS, Lambda-like).
CONFIG_TEXT_ENV: Final = "BRIDGE_CONFIG_TOML"
METRICS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
LOG_LEVEL_ENV: Final = "BRIDGE_LOG_LEVEL"
LOG_FORMAT_ENV: Final = "BRIDGE_LOG_FORMAT"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
EXIT_IGNORED: Final = 3  # `plan`: understood, but no route builds it
# The names the CLI may be called by; anything else (a wrapper, a test runner) shows as `bridge`.
PROGRAM_NAMES: Final = ("bridge", "codebuild-bridge")
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
PLAN_DELIVERY_ID: Final = "plan"


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _require_config_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found",
            hint="copy examples/bridge.toml to ./bridge.toml and edit it, or pass --config FILE "
            f"(or set {CONFIG_ENV})",
        )


# -- serve ----------------------------------------------------------------------------------------


def _serve_config(option: str | None) -> Config:
    """--config, else $BRIDGE_CONFIG_TOML (the text), else $BRIDGE_CONFIG (a path), else ./bridge.toml.

    The text wins over the path variable because the image sets BRIDGE_CONFIG by default: whoever
    sets BRIDGE_CONFIG_TOML means it.
    """
    from bridge.config import load_config, parse_config

    text = os.environ.get(CONFIG_TEXT_ENV)
    if option is None and text:
        return parse_config(text, base_dir=Path.cwd(), source=f"${CONFIG_TEXT_ENV}")
    path = _config_path(option)
    _require_config_file(path)
    return load_config(path)


def _prepare_metrics_dir() -> Path:
    """Before prometheus_client is imported: the directory every process of `bridge serve` counts in
    (the server process and its worker process; see bridge.metrics).

    A PROMETHEUS_MULTIPROC_DIR already set is used (its `*.db` files, counts of an earlier run, are
    removed: the library adds up every file there); otherwise a temporary one, removed when this
    process exits.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("the metrics directory must be set before prometheus_client is imported")
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        directory = Path(given)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("*.db"):
                stale.unlink()
        except OSError as exc:
            raise ConfigError(
                f"$PROMETHEUS_MULTIPROC_DIR {given} cannot be used: {exc.strerror}",
                hint="point it at a writable directory for this server's metrics, or unset it",
            ) from None
        return directory
    directory = Path(tempfile.mkdtemp(prefix="bridge-metrics-"))
    os.environ[METRICS_DIR_ENV] = str(directory)
    atexit.register(_remove_if_made_here, directory, os.getpid())
    return directory


def _remove_if_made_here(directory: Path, maker: int) -> None:
    """gunicorn's forked processes inherit atexit handlers: only the process that made it removes it."""
    if os.getpid() == maker:
        shutil.rmtree(directory, ignore_errors=True)


def _log_settings(log_format: str) -> tuple[str, str]:
    """The level and format of the log lines, checked: a typo in a variable fails the start, loudly."""
    level = os.environ.get(LOG_LEVEL_ENV, "info").strip().lower() or "info"
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"${LOG_LEVEL_ENV} is {level!r}, not a log level",
            hint=f"set it to one of {', '.join(LOG_LEVELS)}",
        )
    if log_format not in LOG_FORMATS:
        raise ConfigError(
            f"${LOG_FORMAT_ENV} is {log_format!r}, not a log format",
            hint=f"set it to one of {', '.join(LOG_FORMATS)}, or pass --log-format",
        )
    return level, log_format


def _serve(args: argparse.Namespace) -> int:
    config = _serve_config(args.config)
    _prepare_metrics_dir()  # before bridge.server imports prometheus_client

    from bridge.logs import configure_logging

    if args.poll_interval is not None:
        config = replace(config, server=replace(config.server, poll_interval_seconds=args.poll_interval))
    configure_logging(*_log_settings(args.log_format))

    from bridge import server

    def app_factory() -> Any:
        return server.served_app(config, host=args.host)

    threads = args.threads if args.threads is not None else config.server.threads
    server.run(app_factory, host=args.host, port=args.port, threads=threads)
    return 0


# -- plan -----------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """What the server would do with this delivery, through the server's own functions: the same
    reading of the payload (events.parse_delivery), decision (admission.intake) and StartBuild request
    (admission.start_request). Only an approval is not judged: that asks the provider's API who the
    approver is, and plan calls no API."""
    from bridge import events
    from bridge.admission import delivery_key, intake, start_request
    from bridge.config import load_config
    from bridge.core.approval import ApprovalCommand
    from bridge.core.trust import AwaitingApproval
    from bridge.model import Ignored

    path = _config_path(args.config)
    _require_config_file(path)
    config = load_config(path)
    try:
        payload = json.loads(Path(args.payload).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(
            "--payload", f"cannot read {args.payload}: {exc.strerror}", hint="pass a JSON file"
        ) from None
    except ValueError:
        raise InputError(
            "--payload", f"{args.payload} is not valid JSON", hint="pass the webhook body as saved"
        ) from None
    if not isinstance(payload, dict):
        raise InputError("--payload", "must hold a JSON object", hint="pass the webhook body as saved")

    settings = config.github if args.provider == "github" else config.gitlab
    try:
        result = events.parse_delivery(
            args.provider,
            args.event,
            payload,
            api_url=config.github.api_url if config.github is not None else None,
            approval_command=settings.approval_command if settings is not None else None,
        )
    except BadRequestError as exc:  # a payload of the wrong shape is the user's input, as the file is
        raise InputError("--payload", exc.message, hint=exc.hint or None) from None
    if isinstance(result, ApprovalCommand):
        reason = (
            f"approval of {result.label} by {result.by}: the server asks {args.provider}'s API whether "
            f"{result.by} may approve, then builds the head as the route allows"
        )
        json.dump({"approval": reason}, out, indent=2)
        out.write("\n")
        return EXIT_IGNORED
    approved: str | None = args.approved_sha
    # The server's own intake: the same host check, route and trust decision as a real delivery.
    outcome = intake(config, result, approved_sha=lambda event: approved)
    if isinstance(outcome, AwaitingApproval):
        print(f"route: {outcome.route}", file=err)
        json.dump({"waiting": outcome.reason}, out, indent=2)
        out.write("\n")
        return EXIT_IGNORED
    if isinstance(outcome, Ignored):
        json.dump({"ignored": outcome.reason}, out, indent=2)
        out.write("\n")
        return EXIT_IGNORED
    # The server's key for this delivery, so the idempotency token is the one the worker would send.
    request = start_request(
        outcome.event, outcome.route, outcome.grant, delivery_key(args.provider, args.delivery_id)
    )
    print(f"route: {outcome.route.name}", file=err)
    for line in outcome.grant.describe():
        print(f"grant: {line}", file=err)
    if request.image_uri:
        print(f"image: {request.image_uri}", file=err)
    # The JSON is exactly StartBuild's input: `aws codebuild start-build --cli-input-json` takes it.
    json.dump(dict(request.start_build_kwargs), out, indent=2, sort_keys=True)
    out.write("\n")
    return 0


# -- check-config ---------------------------------------------------------------------------------


def _check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bridge.config import InvalidConfigError, load_config

    try:
        config = load_config(args.file)
    except InvalidConfigError as exc:
        print(f"{args.file}: {len(exc.errors)} error{'' if len(exc.errors) == 1 else 's'}", file=err)
        for error in exc.errors:
            print(f"error: {error.message}", file=err)
            if error.hint:
                print(f"  hint: {error.hint}", file=err)
        return exc.exit_code
    count = len(config.routes)
    print(f"ok: {count} route{'' if count == 1 else 's'}", file=out)
    return 0


# -- status -----------------------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdefABCDEF")


def _server_state(option: str | None, hint: str) -> tuple[StateStore, DeliveryQueue | None]:
    """The store (and queue) of the server that runs with this config, for `status` and `redeliver`;
    a missing SQLite file means that server never ran here (opening it would create an empty one)."""
    from bridge.services import shared_state

    config = _serve_config(option)
    if config.store.backend != "dynamodb" and not config.server.state_path.exists():
        raise ConfigError(
            f"no state file at {config.server.state_path}: this server has recorded nothing yet",
            key="server.state_path",
            hint=hint,
        )
    return shared_state(config)


def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """What became of a delivery (by id) or of a commit's deliveries (by SHA or its start)."""
    from bridge.operator_page import delivery_detail, delivery_lines, detail_lines, overview

    store, _queue = _server_state(
        args.config, "pass the --config the server runs with (bridge demo prints its own)"
    )
    try:
        target = args.target.strip()
        detail = delivery_detail(store, target)
        if detail is not None:
            if args.json:
                json.dump(_status_json([detail.view], detail), out, indent=2, sort_keys=True, default=str)
                out.write("\n")
            else:
                print("\n".join(detail_lines(detail)), file=out)
            return 0
        views = overview(store, sha=target, limit=args.limit).deliveries if _looks_like_sha(target) else []
        if not views:
            print(f"nothing is recorded under {target!r}: neither a delivery id nor a commit", file=err)
            print("hint: give a delivery id or a commit SHA (its first 7 characters are enough)", file=err)
            return 1
        if args.json:
            json.dump(_status_json(views, None), out, indent=2, sort_keys=True, default=str)
            out.write("\n")
        else:
            print("\n\n".join("\n".join(delivery_lines(view)) for view in views), file=out)
        return 0
    finally:
        store.close()


def _redeliver(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Start a delivery whose start failed again, from the store the server runs with: what GitHub's
    Redeliver does, for GitLab and for deliveries GitHub no longer lists."""
    store, queue = _server_state(args.config, "pass the --config the server runs with")
    try:
        given = args.delivery_id.strip()
        # Stored keys are per provider (github:ID, gitlab:ID); the provider's own id is accepted too.
        delivery_id = next(
            (
                key
                for key in (given, f"github:{given}", f"gitlab:{given}")
                if store.get_delivery(key) is not None
            ),
            given,
        )
        if store.restart_delivery(delivery_id):
            if queue is not None:
                queue.enqueue(delivery_id)
            print(f"delivery {delivery_id} will be started again by the running server", file=out)
            return 0
        row = store.get_delivery(delivery_id)
        if row is None:
            print(f"no delivery {delivery_id!r} is recorded", file=err)
            print("hint: `bridge status SHA` lists a commit's deliveries and their ids", file=err)
        elif row.state == "started":
            print(f"delivery {delivery_id} already started build {row.build_id}", file=err)
            print("hint: re-run its check or pipeline to build the commit again", file=err)
        else:
            print(f"delivery {delivery_id} asked for no build ({row.state}): nothing to start", file=err)
            print("hint: only a delivery whose build did not start can be redelivered", file=err)
        return 1
    finally:
        store.close()


def _looks_like_sha(text: str) -> bool:
    return 4 <= len(text) <= 64 and set(text) <= _HEX


def _status_json(views: Sequence[Any], detail: Any) -> dict[str, Any]:
    """The same facts as the text, as JSON (`--json`): for scripts."""
    listed = []
    for view in views:
        row = view.row
        listed.append(
            {
                "delivery": row.delivery_id,
                "provider": row.provider,
                "event": row.event_name,
                "repository": row.repository,
                "sha": row.sha,
                "received": view.received,
                "outcome": view.outcome,
                "reason": view.reason or None,
                "route": row.route_name or None,
                "build": view.build.build_id if view.build is not None else None,
                "build_status": view.build_state or None,
                "phase": view.phase or None,
                "duration": view.duration or None,
                "link": view.link or None,
                "commit_status": view.commit_status or None,
            }
        )
    result: dict[str, Any] = {"deliveries": listed}
    if detail is not None:
        result["start_build_request"] = detail.request
        result["grant"] = detail.grant
    return result


# -- demo -----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from bridge import demo

    return demo.run(
        state_dir=args.state_dir or demo.default_demo_dir(), port=args.port, builder=args.builder, out=out
    )


# -- entry point ----------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# Every variable the CLI reads, as --help lists it (tests/test_cli.py checks the list is complete).
SERVE_ENVIRONMENT: Final = (
    (CONFIG_TEXT_ENV, "the whole routing file as text; wins over $BRIDGE_CONFIG, not over --config"),
    (CONFIG_ENV, f"the routing file's path when --config is not given (default ./{DEFAULT_CONFIG})"),
    (LOG_LEVEL_ENV, "debug, info (default), warning or error"),
    (LOG_FORMAT_ENV, "text, json or auto (default: text on a terminal, JSON otherwise); --log-format wins"),
    (METRICS_DIR_ENV, "where the server's processes count /metrics (default: a temporary directory)"),
    (
        "XDG_STATE_HOME",
        "the default state file is $XDG_STATE_HOME/bridge/bridge.sqlite3 (~/.local/state/...)",
    ),
    ("AWS_REGION", "the region when [aws] region is not set; then AWS_DEFAULT_REGION; else us-east-1"),
    ("AWS_PROFILE, ...", "credentials come from botocore's usual chain (AWS_* variables, profile, role)"),
    ("env:NAME references", "a secret-valued config key may name any variable of the server's environment"),
)
PLAN_ENVIRONMENT: Final = (
    (CONFIG_ENV, f"the routing file's path when --config is not given (default ./{DEFAULT_CONFIG})"),
)
STATUS_ENVIRONMENT: Final = (
    (CONFIG_TEXT_ENV, "the whole routing file as text; wins over $BRIDGE_CONFIG, not over --config"),
    (CONFIG_ENV, f"the routing file's path when --config is not given (default ./{DEFAULT_CONFIG})"),
    (
        "XDG_STATE_HOME",
        "the default state file is $XDG_STATE_HOME/bridge/bridge.sqlite3 (~/.local/state/...)",
    ),
    ("AWS_REGION, AWS_PROFILE, ...", "for a DynamoDB store: its region and credentials (botocore's chain)"),
)
PLAN_EXIT_STATUS: Final = (
    "exit status: 0 a build would start (the StartBuild request on stdout), 3 the event is ignored"
    " (the reason on stdout), 2 bad input (config, payload or arguments), 1 any other error"
)
GITLAB_EVENT_HELP: Final = (
    "GitHub: the X-GitHub-Event value (push, pull_request, release, check_run, ...); GitLab: the"
    " X-Gitlab-Event value (Push Hook, Tag Push Hook, Merge Request Hook, Note Hook) or its short name"
    " (push, tag_push, merge_request, note)"
)


def _environment_help(variables: Sequence[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in variables)
    lines = [f"  {name:<{width}}  {text}" for name, text in variables]
    return "environment variables:\n" + "\n".join(lines)


def _demo_environment() -> list[tuple[str, str]]:
    from bridge.demo import SECRET_ENV

    variables = [
        (name, f"the demo's {key} (default: generated, printed once)") for key, name in SECRET_ENV.items()
    ]
    variables.append(("XDG_STATE_HOME", "the default state directory is $XDG_STATE_HOME/bridge/demo"))
    return variables


def called_as(argv0: str) -> str:
    """The program name for usage lines: the one the user typed, so `codebuild-bridge` says so."""
    name = Path(argv0).name
    if name in PROGRAM_NAMES:
        return name
    if name == "__main__.py":
        return "python -m bridge"
    return "bridge"


def build_parser(prog: str = "bridge") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Container builds on AWS CodeBuild for GitHub and GitLab webhooks.",
        epilog=_environment_help(SERVE_ENVIRONMENT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the webhook server (gunicorn, SQLite state)",
        description="Run the webhook server: gunicorn in this process, SQLite state by default.",
        epilog=_environment_help(SERVE_ENVIRONMENT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", help=f"routing file (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument(
        "--threads", type=_positive, help="request threads (default: server.threads in the config)"
    )
    serve.add_argument(
        "--poll-interval",
        type=_positive,
        metavar="SECONDS",
        help="poll running builds this often, overriding server.poll_interval_seconds (at least 1)",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get(LOG_FORMAT_ENV) or "auto",
        help=f"log lines as text, JSON, or auto: text on a terminal, JSON otherwise"
        f" (default: ${LOG_FORMAT_ENV} or auto)",
    )

    plan = commands.add_parser(
        "plan",
        help="print the StartBuild request a webhook payload would make",
        description="Print the StartBuild request a webhook payload would make (no AWS call), or why none.",
        epilog=PLAN_EXIT_STATUS + "\n\n" + _environment_help(PLAN_ENVIRONMENT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("--config", help=f"routing file (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")
    plan.add_argument("--provider", required=True, choices=("github", "gitlab"))
    plan.add_argument("--event", required=True, help=GITLAB_EVENT_HELP)
    plan.add_argument("--payload", required=True, help="file holding the webhook's JSON body")
    plan.add_argument(
        "--delivery-id",
        default=PLAN_DELIVERY_ID,
        help="delivery id the idempotency token is derived from (default: %(default)s)",
    )
    plan.add_argument(
        "--approved-sha",
        metavar="SHA",
        help="plan a fork's change as if a maintainer had approved this head commit (forks = approve)",
    )

    check = commands.add_parser("check-config", help="validate a routing file")
    check.add_argument("file", help="the routing file to check")

    status = commands.add_parser(
        "status",
        help="what became of a delivery or a commit: outcome, reason, build, commit status",
        description="Print what the operator page shows for one delivery (by id: with its StartBuild request)"
        " or for a commit's deliveries (by SHA, or its first characters), from the store the config names.",
        epilog="exit status: 0 found, 1 nothing recorded under that name, 2 bad config\n\n"
        + _environment_help(STATUS_ENVIRONMENT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "target", metavar="SHA|DELIVERY-ID", help="a delivery id, or a commit SHA or its start"
    )
    status.add_argument("--config", help=f"routing file (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.add_argument(
        "--limit", type=_positive, default=20, help="at most this many deliveries of a commit (default: 20)"
    )

    redeliver = commands.add_parser(
        "redeliver",
        help="start again a delivery whose build did not start (refused, or still waiting for CodeBuild)",
        description="Make a delivery whose start failed for good, or is waiting between attempts, due now:"
        " the running server's worker starts it (GitHub's Redeliver does the same). A delivery whose build"
        " started is left alone: re-run its check instead.",
        epilog="exit status: 0 restarted, 1 nothing to restart under that id, 2 bad config\n\n"
        + _environment_help(STATUS_ENVIRONMENT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    redeliver.add_argument(
        "delivery_id", metavar="DELIVERY-ID", help="the delivery's id (X-GitHub-Delivery, ...)"
    )
    redeliver.add_argument("--config", help=f"routing file (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")

    demo = commands.add_parser(
        "demo",
        help="try it: a server on 127.0.0.1, signed sample deliveries, the operator page (no AWS)",
        description="Start the bridge with a generated config (secrets as env: references, printed once),"
        " send it signed GitHub and GitLab sample deliveries, build them with the local builder when"
        " buildah, podman or docker is installed (or record the StartBuild requests CodeBuild would get),"
        " and show the result on the operator page. Runs until Ctrl-C or SIGTERM. See docs/demo.md.",
        epilog=_environment_help(_demo_environment()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default: {DEFAULT_PORT})"
    )
    demo.add_argument(
        "--state-dir",
        type=Path,
        help="where the demo keeps its config, store, recorded requests and log"
        " (default: $XDG_STATE_HOME/bridge/demo, i.e. ~/.local/state/bridge/demo)",
    )
    demo.add_argument(
        "--builder",
        choices=("auto", "local", "record"),
        default="auto",
        help="local: build with buildah, podman or docker; record: record the StartBuild requests CodeBuild"
        " would get and run nothing; auto (default): local when one of those tools is installed, else record",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """`prog`: the name usage lines show; by default the one this process was started as."""
    parser = build_parser(prog or called_as(sys.argv[0]))
    args = parser.parse_args(list(argv) if argv is not None else None)
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "plan":
            return _plan(args, out, err)
        if args.command == "demo":
            return _demo(args, out)
        if args.command == "status":
            return _status(args, out, err)
        if args.command == "redeliver":
            return _redeliver(args, out, err)
        return _check_config(args, out, err)
    except BridgeError as exc:
        print(f"error: {exc.message}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
