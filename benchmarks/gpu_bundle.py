"""The bundle a GPU window sends back through one folder, and its unpacking into `evidence/`.

A short GPU allocation returns only what its command leaves in one folder (at most 8 files, 16 MiB each), and a
command killed at its limit returns whatever is there at that moment. So the window keeps exactly two files in
its bundle folder and rewrites both after every stage (and every 30 s during one):

  summary.md        what has finished, what is running, and the headline lines of each stage
  evidence.tar.gz   everything in the window's evidence folder by then (tables, figures, logs, facts), never models
                    or arrays, kept under 15 MiB by leaving out the largest files (each named in the summary)

Each file is written beside its final name and renamed over it, so a kill mid-write leaves the previous bundle
(and a `.partial` file, which the next window removes: `worldrep.artifacts.atomic_write_bytes`); the summary is replaced first, so it is never older than
the archive's.

    python benchmarks/gpu_bundle.py unpack /work/.device/.../files            # -> evidence/{date}-{gpu}-window/
    python benchmarks/gpu_bundle.py unpack BUNDLE --into /tmp/evidence
"""
from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worldrep.artifacts import atomic_write_bytes  # noqa: E402

SUMMARY, ARCHIVE = "summary.md", "evidence.tar.gz"
LIMIT_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have, counted before compression (an upper bound)
LEFT_OUT_SUFFIXES = (".safetensors", ".npz", ".npy", ".pt", ".pth", ".bin", ".ckpt")  # models and arrays


def bundled_files(out: Path, limit: int = LIMIT_BYTES) -> tuple[list[Path], list[Path]]:
    """(files to pack, files left out for size) of the evidence folder `out`: no models or arrays; the largest
    files go first when the rest would not fit under `limit`."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.endswith((*LEFT_OUT_SUFFIXES, ".partial")))
    kept, total = [], 0
    left_out = []
    for path in sorted(files, key=lambda p: p.stat().st_size):  # smallest first: as many files as fit
        size = path.stat().st_size
        if total + size > limit:
            left_out.append(path)
        else:
            kept.append(path)
            total += size
    return sorted(kept), sorted(left_out)


def write_bundle(out: Path, bundle: Path, summary: str) -> list[Path]:
    """Rewrite `bundle/summary.md` and `bundle/evidence.tar.gz` (the evidence folder `out` with this summary);
    the files left out for size."""
    bundle.mkdir(parents=True, exist_ok=True)
    kept, left_out = bundled_files(out)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        files = {str(path.relative_to(out)): path for path in kept}
        files[SUMMARY] = summary.encode()  # from memory: the newest
        for name, source in files.items():
            try:  # read whole first: a stage may be rewriting or removing the file right now
                data = source if isinstance(source, bytes) else source.read_bytes()
            except FileNotFoundError:
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
    # By a rename: a reader (or a kill) sees the old file or the new one, never half.
    atomic_write_bytes(bundle / SUMMARY, lambda handle: handle.write(summary.encode()))
    atomic_write_bytes(bundle / ARCHIVE, lambda handle: handle.write(buffer.getvalue()))
    return left_out


def gpu_slug(name: str | None) -> str:
    """A short folder name for a GPU: 'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA GeForce RTX 4090' ->
    'geforce-rtx-4090'; no GPU -> 'cpu'."""
    if not name:
        return "cpu"
    name = name.replace("NVIDIA", "")
    model = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)  # a data-centre part number: H100, A100, L40S
    return (model.group(1) if model else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def unpack(bundle: Path, into: Path) -> Path:
    """Extract a bundle into `into/{date}-{gpu}-window/` (date and GPU from its facts.json) with the newest
    summary; refuses to overwrite an existing folder."""
    archive, summary = bundle / ARCHIVE, bundle / SUMMARY
    if not archive.exists() or not summary.exists():
        raise FileNotFoundError(f"{bundle} is not a window bundle: it needs {SUMMARY} and {ARCHIVE}")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        facts = json.load(tar.extractfile("facts.json")) if "facts.json" in names else {}
        date = str(facts.get("date", "undated"))[:10]
        target = into / f"{date}-{gpu_slug((facts.get('gpus') or [None])[0])}-window"
        if target.exists():
            raise FileExistsError(f"{target} exists: move it away or unpack with --into elsewhere")
        target.mkdir(parents=True)
        tar.extractall(target, filter="data")  # "data": no absolute paths, links out or devices
    (target / SUMMARY).write_bytes(summary.read_bytes())
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    unpacking = commands.add_parser("unpack", help="a returned bundle -> evidence/{date}-{gpu}-window/")
    unpacking.add_argument("bundle", type=Path)
    unpacking.add_argument("--into", type=Path, default=REPO / "evidence")
    args = parser.parse_args(argv)
    try:
        target = unpack(args.bundle, args.into)
    except (FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"unpacked into {target}: {sum(1 for p in target.rglob('*') if p.is_file())} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
