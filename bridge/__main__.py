"""`python -m bridge`: the same CLI as the `bridge` and `codebuild-bridge` commands."""

from __future__ import annotations

import sys

from bridge.cli import main

sys.exit(main())
