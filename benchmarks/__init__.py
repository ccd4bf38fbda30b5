"""On-demand benchmarks; results go to benchmarks/results/."""
from __future__ import annotations

import sys
from typing import Callable

from pipeline.errors import DscoError


def run_command(main: Callable[[], None]) -> None:
    """Run a benchmark command's ``main``: bad input (an unknown key or value in an override, a
    folder that is not a benchmark's) prints its message and exits 2, as `dsco` does."""
    try:
        main()
    except DscoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
