"""The README's library example runs as printed: a user who copies it into a file gets a working script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def _slug(heading: str) -> str:
    """The anchor GitHub derives from a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


DOCS = ("README.md", "ARCHITECTURE.md", "benchmarks/README.md")


def test_every_link_between_the_documents_resolves() -> None:
    """The README links its sections, ARCHITECTURE.md and benchmarks/README.md; none of those links may dangle."""
    anchors = {doc: {_slug(h) for h in re.findall(r"(?m)^#+ (.+)$", (ROOT / doc).read_text(encoding="utf-8"))}
               for doc in DOCS}
    dangling = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (ROOT / doc).parent / path if path else ROOT / doc
            name = str(resolved.resolve().relative_to(ROOT))
            if not resolved.exists() or (anchor and anchor not in anchors.get(name, set())):
                dangling.append(f"{doc}: {target}")
    assert dangling == []


def test_the_user_manual_keeps_its_sections_and_the_two_commands() -> None:
    headings = re.findall(r"(?m)^## (.+)$", README)
    for section in ("The two commands", "Install and run", "Rules (YAML)", "Exported metrics", "JSON API",
                    "What the engine computes", "Storage", "Simulation", "Offline tools",
                    "Using the engine as a library", "Kubernetes, Grafana, Alertmanager", "Operations and runbook",
                    "Benchmarks"):
        assert section in headings, section
    two = _section("The two commands")
    assert "```sh\nscripts/demo\n```" in two and "```sh\nscripts/test\n```" in two
    # the user's manual links the history instead of carrying it
    assert "benchmarks/README.md" in _section("Benchmarks") and "ARCHITECTURE.md" in README
