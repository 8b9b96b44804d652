"""The README's library example runs as printed: a user who copies it into a file gets a working script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start: end if end >= 0 else len(README)]


def test_the_library_example_runs_as_a_script(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("Using the engine as a library"), re.S)
    assert len(blocks) == 1, "one example, the one the section describes"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("P(fail) at 5x traffic: ")
    assert lines[1] == "production_api healthy None"   # rolled back to the snapshot taken at creation
    assert lines[2] == "['production_api']"
    assert "asyncio.run(main())" in blocks[0] and "\nawait " not in blocks[0]   # no top-level await


def test_the_example_imports_the_public_face() -> None:
    (block,) = re.findall(r"```python\n(.*?)```", _section("Using the engine as a library"), re.S)
    assert "from sidecar.engine import SystemMetrics, SystemType, TwinEngine" in block
