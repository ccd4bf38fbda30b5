"""The exceptions users see: DscoError (a message that names the bad value and the fix) and
JobFailed; both are light to import, so the CLI can catch them without loading Ray or torch."""


class DscoError(Exception):
    """An input, config or environment problem the user can fix; the CLI prints it and exits 2."""


class JobFailed(Exception):
    """Some work units failed after every retry; the run stays incomplete (a rerun resumes)."""
