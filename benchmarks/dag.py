"""How long Snakemake takes to plan the paper grid (config/config.yaml): `snakemake -n` from an empty results
folder, and the no-op replan of a finished one, without and with Snakemake's metadata records. Targets on 2
cores: dry run <= 10 s, no-op <= 15 s.

    python benchmarks/dag.py               # median of 5 of each, in a temporary copy of the workflow
    python benchmarks/dag.py --repeats 3

The finished tree is synthetic: every output the dry run lists (files empty, `directory()` outputs empty
folders) created in the order the dry run lists the jobs, one after another, so each is newer than its inputs.
The metadata case then runs `snakemake --touch --forceall` over it, which writes a record per output.
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worldrep.archive import copy_workflow, cpu_model  # noqa: E402

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def hardware() -> str:
    """benchmarks/training.py's hardware() without torch, which planning never loads."""
    cpu = cpu_model() or "unknown CPU"
    version = subprocess.run([*SNAKEMAKE, "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{cpu}; {len(os.sched_getaffinity(0))} CPU cores (load average {os.getloadavg()[0]:.1f}); "
            f"Python {platform.python_version()}, Snakemake {version}")


def dry_run(workdir: Path) -> tuple[float, int, str]:
    """Seconds, planned jobs and output of `snakemake -n`."""
    start = time.perf_counter()
    out = subprocess.run([*SNAKEMAKE, "-n"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, check=True).stdout
    seconds = time.perf_counter() - start
    total = re.search(r"^total\s+(\d+)$", out, re.M)
    assert total or "Nothing to be done" in out, out[-2000:]
    return seconds, int(total[1]) if total else 0, out


def timed(workdir: Path, repeats: int) -> tuple[float, int, str]:
    runs = [dry_run(workdir) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), runs[0][1], runs[0][2]


def finish(workdir: Path, plan: str) -> int:
    """Creates every output of a dry run's jobs, each job's after those it lists before it: a dry run lists a
    job only after the jobs it needs. Returns how many outputs."""
    rules = "".join(smk.read_text() for smk in (workdir / "rules").glob("*.smk"))
    patterns = re.findall(r'directory\("([^"]+)"\)', rules)
    folders = [re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(p)) for p in patterns]  # {wildcard} -> one path part
    folder = re.compile("|".join(folders) or "(?!)")
    jobs = [line.split(":", 1)[1].strip().split(", ") for line in plan.splitlines() if line.startswith("    output: ")]
    start = time.time()
    for i, outputs in enumerate(jobs):
        for rel in outputs:
            path = workdir / rel
            if folder.fullmatch(rel):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            os.utime(path, (start + i / 100, start + i / 100))  # strictly after its inputs, ns timestamps
    return sum(map(len, jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(hardware())
    rows = []
    with tempfile.TemporaryDirectory(prefix="worldrep-dag-") as tmp:
        workdir = copy_workflow(Path(tmp))
        seconds, jobs, plan = timed(workdir, args.repeats)
        rows.append((f"dry run (paper, {jobs} jobs)", seconds))
        n_outputs = finish(workdir, plan)
        seconds, jobs, out = timed(workdir, args.repeats)
        assert jobs == 0, f"the finished tree still plans {jobs} jobs:\n{out[-3000:]}"
        rows.append((f"no-op, no metadata ({n_outputs} outputs, {jobs} jobs)", seconds))
        start = time.perf_counter()
        subprocess.run([*SNAKEMAKE, "--touch", "--forceall", "--cores", "1", "--quiet", "all"], cwd=workdir,
                       check=True, capture_output=True)
        touch = time.perf_counter() - start
        records = sum(len(files) for _, _, files in os.walk(workdir / ".snakemake/metadata"))
        seconds, jobs, out = timed(workdir, args.repeats)
        assert jobs == 0, f"after --touch the tree plans {jobs} jobs:\n{out[-3000:]}"
        rows.append((f"no-op, {records} metadata records ({jobs} jobs)", seconds))
    for label, seconds in rows:
        print(f"{label:48s} {seconds:5.1f} s median of {args.repeats}")
    print(f"(`snakemake --touch --forceall` itself: {touch:.0f} s)")


if __name__ == "__main__":
    main()
