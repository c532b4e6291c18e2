"""Imported first by every script: puts this workflow copy's `worldrep` package first on sys.path.

Snakemake runs a script from a temporary copy but appends the script's own folder to sys.path, so this
module is found here and its location tells where the workflow root is.

With `WORLDREP_MODULES_LOG=FILE` in the environment, the job also appends to FILE, at exit, one JSON line
naming every module it loaded from this workflow's worldrep/ and scripts/: evidence that a rule's code hash
(`worldrep.codehash.closure`) covers all the code the job ran (`missing_from_closure`).
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inside(path: Path) -> bool:
    return path.is_relative_to(ROOT / "worldrep") or path.is_relative_to(ROOT / "scripts")


def _log_modules(log: str, snakemake, script: Path | None) -> None:
    import json

    files = [Path(f).resolve() for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))]
    files += [script] if script else []  # __main__ has lost its __file__ by now (see below)
    scriptdir = getattr(snakemake, "scriptdir", None)
    record = {
        "rule": getattr(snakemake, "rule", None),
        "scriptdir": None if scriptdir is None else str(scriptdir),
        "script": script.relative_to(ROOT).as_posix() if script and script.is_relative_to(ROOT) else None,
        "modules": sorted({f.relative_to(ROOT).as_posix() for f in files if _inside(f)}),
    }
    # One O_APPEND write() per record: jobs running in parallel append whole lines, never interleaved parts.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


if os.environ.get("WORLDREP_MODULES_LOG"):
    import atexit

    # Read now, while the script runs: its preamble has set `snakemake`, and `__file__` to the real path of the
    # original script (Snakemake runs a temporary copy); Python deletes __main__.__file__ before atexit hooks.
    _main = sys.modules.get("__main__")
    _script = getattr(_main, "__file__", None)
    atexit.register(_log_modules, os.environ["WORLDREP_MODULES_LOG"], getattr(_main, "snakemake", None),
                    Path(_script).resolve() if _script else None)
