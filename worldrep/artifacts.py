"""Writing artifacts so that a killed job never leaves a file that looks complete."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary sibling and rename, so a killed job never leaves a complete-looking file."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), lambda h: h.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (mixtures and checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
