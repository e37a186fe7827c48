"""Reading the auth backends' text files (password file, ACL file) the same way."""

from __future__ import annotations

from mqtt_twisted.errors import ValidationError


def read_utf8(path: str) -> str:
    """The file's text; OSError if it cannot be read, and a ValidationError naming the
    file and line if it is not UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        number = data[:e.start].count(b"\n") + 1
        raise ValidationError(f"{path}:{number}: not UTF-8") from None
