"""Writing artifacts so that a killed job never leaves a file that looks complete."""
from __future__ import annotations

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
