"""Container entrypoint for both front doors.

With no arguments (as GitHub runs a container action) it is the Action; with arguments it is the
CLI, so `docker run IMAGE bridge serve` and `docker run IMAGE serve` both start the server (and
`docker run IMAGE --version` prints the version).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    prog = "bridge"
    if argv and argv[0] in ("bridge", "codebuild-bridge"):
        prog, argv = argv[0], argv[1:]
    if argv:
        from bridge.cli import main as cli_main

        return cli_main(argv, prog=prog)
    from bridge.action import main as action_main

    return action_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
