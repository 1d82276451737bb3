"""Errors the CLI turns into exit codes: BadInput -> 2 (one line, no traceback)."""


class BadInput(ValueError):
    """Bad config, data or path. The message is one line that names the file, row, field or key."""
