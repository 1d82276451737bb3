"""Errors the CLI turns into exit codes: BadInput -> 2 (one line, no traceback)."""


class BadInput(ValueError):
    """Bad config, data or path. The message is one line that names the file, row, field or key."""


def validation_message(error, what: str = "key") -> str:
    """One line for the first problem in a pydantic ValidationError, naming its dotted key."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return f"{what} {key!r}: {message}" if key else message
