"""The one error a configuration mistake raises, naming the file, line and field."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A configuration mistake, with the file, line and field it is at."""

    def __init__(self, message: str, *, file: Path | None = None, line: int | None = None,
                 field_path: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field_path = field_path
        super().__init__(self.describe())

    def describe(self) -> str:
        """Return ``FILE:LINE: FIELD: message`` with whatever parts are known."""
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        what = f"{self.field_path}: " if self.field_path else ""
        return f"{where}{what}{self.message}"
