"""Secrets of the rules (bearer token, basic-auth password, API token): only ever read from files.

A :class:`SecretFile`'s ``repr`` never shows the content, and the file is re-read when it changes (Kubernetes
rotates projected tokens in place).
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretFile:
    """A secret read from a file: content never shown, re-read when the file changes.

    >>> SecretFile("/run/secrets/token")     # doctest: +SKIP
    SecretFile('/run/secrets/token')
    """

    __slots__ = ("_mtime", "_value", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime: float | None = None
        self._value = ""

    def read(self) -> str:
        """The current content, stripped of surrounding whitespace; ``OSError`` if unreadable."""
        mtime = os.stat(self.path).st_mtime
        if mtime != self._mtime:
            self._value = Path(self.path).read_text(encoding="utf-8").strip()
            self._mtime = mtime
        return self._value

    def __repr__(self) -> str:
        return f"SecretFile({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretFile) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)
