"""SQLite files that cannot be written, made so the way the system does it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


class ReadOnlyFile:
    """Makes a file unwritable for this process the way the system does: chattr +i as root, 0444 otherwise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = os.geteuid() == 0
        self.locked = False

    def lock(self) -> None:
        if self.root:
            if shutil.which("chattr") is None:
                pytest.skip("running as root without chattr: cannot make a file read-only for root")
            r = subprocess.run(["chattr", "+i", str(self.path)], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"chattr +i not supported here: {r.stderr.strip()}")
        else:
            self.path.chmod(0o444)
        self.locked = True

    def unlock(self) -> None:
        if self.locked:
            if self.root:
                subprocess.run(["chattr", "-i", str(self.path)], check=True)
            else:
                self.path.chmod(0o644)
            self.locked = False
