"""The actor boundary is the one place for a broad except: a work unit comes back failed."""
from __future__ import annotations

import traceback

from pipeline.samples import UnitOutput


def failed_unit(unit_id: int, exc: BaseException) -> UnitOutput:
    """A UnitOutput carrying the error (type, message and the innermost frames)."""
    frames = "".join(traceback.format_exception(exc)[-3:])
    return UnitOutput(unit_id, error=f"{type(exc).__name__}: {exc}\n{frames}")
