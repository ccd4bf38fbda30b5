"""The one exception type users see: a message that names the bad value and the fix."""


class DscoError(Exception):
    """An input, config or environment problem the user can fix; the CLI prints it and exits 2."""
