"""Where a training step's time goes (kernel count, launch gaps, optimizer, data indexing): the paper's
model at batch 128 under `torch.profiler` (CPU and CUDA activities), driven like `worldrep.training.train_stack`.

Printed: ms/step of the real `StackStep` (a stack of `--stack K` models, default 1) without the profiler; CUDA
kernels per step; GPU busy (kernel) time against wall time per step, the difference being idle GPU (launch and
host overhead); the gaps between GPU ops; host syncs; the top-15 ops by self time; and the split into data
indexing / forward / backward / optimizer (zero_grad, unscale + clip, AdamW, scaler update).

The split needs named ranges inside the step: the profiled step is `StackStep` itself with `span=record_function`,
each part of its update inside a named range. Two checks keep it honest: the script trains
3 steps with both from the same init and prints how far the weights end apart (0 on CPU), and it times both
without the profiler. Kernels are put in the part whose range was open on the host when they were launched
(their CUDA runtime call, matched by correlation id), so backward kernels launched from autograd's worker
thread still land in "backward".

    python benchmarks/profile_training.py --synthetic 70000              # CUDA: 30 profiled steps, fp16
    python benchmarks/profile_training.py --compile --trace trace.json.gz
    python benchmarks/profile_training.py --mixture results/mixtures/pt7 --device cpu --threads 1 --steps 3
"""
import argparse
import bisect
import gzip
import json
import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.training import BATCH, PEAK_LR, hardware, paper_stack, synchronize, synthetic_mixture  # noqa: E402
from worldrep.training import Recipe, StackStep, learning_rate, steps_per_epoch  # noqa: E402

# Report rows: (label, range names summed into it). Range names are what `StackStep` (`span`) and `Loop` open.
PARTS = [
    ("data indexing", ["loop.indexing"]),
    ("forward", ["step.forward"]),
    ("backward", ["step.backward"]),
    ("optimizer, all of:", ["step.set_lr", "step.zero_grad", "step.unscale_clip", "step.adamw", "step.scaler_update"]),
    ("  set lr", ["step.set_lr"]),
    ("  zero_grad", ["step.zero_grad"]),
    ("  unscale + clip", ["step.unscale_clip"]),
    ("  AdamW step", ["step.adamw"]),
    ("  scaler update", ["step.scaler_update"]),
    ("loss window + log sync", ["loop.log"]),
]
RANGES = sorted({name for _, names in PARTS for name in names})
RUNTIME_CATEGORIES = ("cuda_runtime", "cuda_driver")  # triton kernels (--compile) launch through the driver API
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


class Loop:
    """The loop of `worldrep.training.train_stack` minus validation and checkpoints (as in
    benchmarks/training.py): a fresh stack of K models from seeds SEED.., the token matrix on the device once, a
    batch is one gather, a host sync every `log_every` steps. `ranges` wraps the loop's own parts (indexing, log)
    and the step's (`StackStep`'s `span`) in profiler ranges."""

    def __init__(self, tokens_np: np.ndarray, recipe: Recipe, device: torch.device, ranges: bool, k: int = 1):
        self.recipe, self.device = recipe, device
        self.stack, self.data = paper_stack(tokens_np, k, device)
        self.spe = self.data.steps_per_epoch
        self.total = recipe.epochs * self.spe
        self.span = record_function if ranges else (lambda name: nullcontext())
        self.step_fn = StackStep(self.stack, recipe, device, widths=self.data.widths,
                                 span=record_function if ranges else None)
        self.window = torch.zeros(k, 2, dtype=torch.float64, device=device)

    def batch(self, step: int) -> torch.Tensor:
        return self.data.batch(step)

    def run_step(self, step: int) -> None:
        with self.span("iteration"):
            lr = learning_rate(step, self.recipe.peak_lr, self.recipe.warmup_steps, self.total)
            with self.span("loop.indexing"):
                batch = self.batch(step)  # [K, 128, width] uint8, a gather on the device
            losses, grad_norms = self.step_fn(batch, lr)
            with self.span("loop.log"):
                self.window.add_(torch.stack([losses.double(), torch.ones_like(self.window[:, 1])], dim=1))
                if (step + 1) % self.recipe.log_every == 0:
                    self.window.tolist()  # the real loop's one host sync per log line
                    grad_norms.tolist()
                    self.window.zero_()

    def ms_per_step(self, first: int, count: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for step in range(first, first + count):
            self.run_step(step)
        synchronize(self.device)
        return 1000 * (time.perf_counter() - start) / count


def indexing_ms(loop: Loop, calls: int) -> float:
    """The indexing line alone, `calls` times back to back."""
    loop.batch(0)
    synchronize(loop.device)
    start = time.perf_counter()
    for step in range(calls):
        loop.batch(step % loop.spe)
    synchronize(loop.device)
    return 1000 * (time.perf_counter() - start) / calls


def weight_gap(tokens_np: np.ndarray, recipe: Recipe, device: torch.device, steps: int = 3) -> float:
    """Max |Δw| after `steps` updates of `StackStep` without and with its named ranges, from one init and data."""
    loops = [Loop(tokens_np, recipe, device, ranges=ranges) for ranges in (False, True)]
    for loop in loops:
        for step in range(steps):
            loop.run_step(step)
    pairs = zip(loops[0].stack.parameters(), loops[1].stack.parameters())
    return max(float((a - b).detach().abs().max()) for a, b in pairs)


def profile_steps(loop: Loop, first: int, steps: int, trace: str) -> dict:
    """Profile `steps` steps (after 1 skipped and 2 discarded profiler warm-up steps); export the chrome trace
    to `trace` and return the table of host ops by self CPU time."""
    cuda = loop.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tables = {}

    def ready(prof):  # kernels are ranked from the trace: this table's GPU rows would include our ranges' spans
        prof.export_chrome_trace(trace)
        tables["self_cpu_time_total"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                                                   max_name_column_width=60)

    wait, warmup = 1, 2
    with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=steps, repeat=1),
                 on_trace_ready=ready) as prof:
        for i in range(wait + warmup + steps):
            loop.run_step(first + i)
            if i in (wait + warmup - 1, wait + warmup + steps - 1):
                synchronize(loop.device)  # the window starts on an idle GPU, and its last kernel ends inside it
            prof.step()
    return tables


# ---- reading the chrome trace -------------------------------------------------------------------------

def load_trace(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as handle:
        return [e for e in json.load(handle)["traceEvents"] if e.get("ph") == "X"]


def span(event: dict) -> tuple[float, float]:
    return float(event["ts"]), float(event["ts"]) + float(event.get("dur", 0))


def busy_and_gaps(gpu: list[dict]) -> tuple[float, list[float]]:
    """Union of GPU op intervals (µs) and the idle gaps between consecutive ones."""
    busy, gaps, end = 0.0, [], None
    for start, stop in sorted(span(e) for e in gpu):
        if end is None or start >= end:
            busy += stop - start
            if end is not None:
                gaps.append(start - end)
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy, gaps


def launch_part(events: list[dict], gpu: list[dict]) -> list[str | None]:
    """For each GPU op, the range of ours that was open on the host when its runtime call launched it."""
    launches = {e["args"]["correlation"]: float(e["ts"]) for e in events
                if e.get("cat") in RUNTIME_CATEGORIES and "correlation" in e.get("args", {})}
    ranges = sorted((*span(e), e["name"]) for e in events
                    if e.get("cat") == "user_annotation" and e["name"] in RANGES)
    starts = [r[0] for r in ranges]
    parts = []
    for op in gpu:
        launched = launches.get(op.get("args", {}).get("correlation"))
        i = bisect.bisect_right(starts, launched) - 1 if launched is not None else -1
        parts.append(ranges[i][2] if i >= 0 and launched <= ranges[i][1] else None)
    return parts


def summarize_trace(path: str, steps: int) -> dict:
    """Per-step numbers of the profiled window: wall, GPU busy, kernels, gaps, syncs, and each part's host
    time, kernel count and kernel time."""
    events = load_trace(path)
    iterations = [span(e) for e in events if e.get("cat") == "user_annotation" and e["name"] == "iteration"]
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES]
    start = min(s for s, _ in iterations)
    end = max([stop for _, stop in iterations] + [span(e)[1] for e in gpu])
    busy, gaps = busy_and_gaps(gpu)
    host = Counter()
    for e in events:
        if e.get("cat") == "user_annotation" and e["name"] in RANGES:
            host[e["name"]] += float(e.get("dur", 0))
    kernels, kernel_us, by_name = Counter(), Counter(), defaultdict(lambda: {"calls": 0, "us": 0.0, "parts": Counter()})
    for op, part in zip(gpu, launch_part(events, gpu)):
        if op["cat"] == "kernel":
            kernels[part] += 1
            kernel_us[part] += float(op.get("dur", 0))
        row = by_name[op["name"]]
        row["calls"] += 1
        row["us"] += float(op.get("dur", 0))
        row["parts"][part] += 1
    syncs = [e for e in events if e.get("cat") in RUNTIME_CATEGORIES and e["name"] in SYNC_CALLS]
    kinds = Counter(e["cat"] for e in gpu)
    durations = [float(e.get("dur", 0)) for e in gpu if e["cat"] == "kernel"]
    return {
        "wall_ms": (end - start) / 1000 / steps, "busy_ms": busy / 1000 / steps, "gpu_ops": kinds,
        "median_kernel_us": float(np.median(durations)) if durations else math.nan,
        "median_gap_us": float(np.median(gaps)) if gaps else math.nan, "gaps": len(gaps),
        "syncs": len(syncs), "sync_ms": sum(float(e.get("dur", 0)) for e in syncs) / 1000 / steps,
        "runtime_ms": sum(float(e.get("dur", 0)) for e in events if e.get("cat") in RUNTIME_CATEGORIES) / 1000 / steps,
        "host_ms": {k: v / 1000 / steps for k, v in host.items()},
        "kernels": {k: v / steps for k, v in kernels.items()},
        "kernel_ms": {k: v / 1000 / steps for k, v in kernel_us.items()},
        "top": sorted(by_name.items(), key=lambda kv: -kv[1]["us"])[:15],
    }


# ---- report -------------------------------------------------------------------------------------------

def print_summary(s: dict, steps: int, cuda: bool) -> None:
    print(f"\nprofiled window, {steps} steps (profiler on: slower than the timing above):")
    if cuda:
        idle = s["wall_ms"] - s["busy_ms"]
        print(f"  wall {s['wall_ms']:.3f} ms/step; GPU busy (kernels, copies, memsets) {s['busy_ms']:.3f} ms/step; "
              f"GPU idle {idle:.3f} ms/step ({100 * idle / s['wall_ms']:.0f}%): launch and host overhead")
        ops = s["gpu_ops"]
        print(f"  per step: {ops['kernel'] / steps:.1f} CUDA kernels, {ops['gpu_memcpy'] / steps:.1f} memcpy, "
              f"{ops['gpu_memset'] / steps:.1f} memset; median kernel {s['median_kernel_us']:.1f} µs, "
              f"median idle gap between GPU ops {s['median_gap_us']:.1f} µs")
        print(f"  host: {s['runtime_ms']:.3f} ms/step inside CUDA runtime/driver calls; {s['syncs'] / steps:.2f} "
              f"blocking syncs/step holding the host {s['sync_ms']:.3f} ms/step")
    else:
        print(f"  wall {s['wall_ms']:.3f} ms/step (CPU: no kernels; the host times below are the whole story)")
    print(f"  {'part':<28}{'host ms/step':>14}" + (f"{'kernels/step':>14}{'kernel ms/step':>16}" if cuda else ""))
    for label, names in PARTS:
        host = sum(s["host_ms"].get(n, 0.0) for n in names)
        line = f"  {label:<28}{host:>14.3f}"
        if cuda:
            kernels, ms = (sum(s[key].get(n, 0) for n in names) for key in ("kernels", "kernel_ms"))
            line += f"{kernels:>14.1f}{ms:>16.3f}"
        print(line)
    if cuda and s["kernels"].get(None):
        print(f"  {'(launched outside the parts)':<28}{'':>14}{s['kernels'][None]:>14.1f}{s['kernel_ms'][None]:>16.3f}")
    if cuda:
        print_kernels(s, steps)


def print_kernels(s: dict, steps: int) -> None:
    """The 15 GPU ops (kernels, copies, memsets) with the most time, with the part that launched them."""
    print(f"\ntop-15 GPU ops by self time, over {steps} steps:")
    print(f"  {'GPU op':<72}{'calls/step':>11}{'µs/call':>9}{'ms/step':>9}{'% busy':>8}  part")
    for name, row in s["top"]:
        part = row["parts"].most_common(1)[0][0] or "-"
        short = name if len(name) <= 70 else name[:67] + "..."
        print(f"  {short:<72}{row['calls'] / steps:>11.1f}{row['us'] / row['calls']:>9.1f}"
              f"{row['us'] / 1000 / steps:>9.3f}{100 * row['us'] / 1000 / steps / s['busy_ms']:>8.1f}  {part}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixture", type=Path, help="mixture directory (default results/mixtures/pt7)")
    parser.add_argument("--synthetic", type=int, help="build a mixture of this many items in memory instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (Recipe.compile)")
    parser.add_argument("--steps", type=int, help="profiled steps (default 30 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 50 on CUDA, 2 on CPU)")
    parser.add_argument("--timed", type=int, help="steps timed without the profiler (default 300 on CUDA, 3 on CPU)")
    parser.add_argument("--trace", help="keep the chrome trace here (.json or .json.gz; chrome://tracing, Perfetto)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--stack", type=int, default=1, help="models in the profiled stack")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (50 if cuda else 2)
    args.timed = args.timed or (300 if cuda else 3)
    args.precision = args.precision or ("fp16" if cuda else "fp32")
    if args.mixture is None and args.synthetic is None:
        args.mixture = REPO / "results/mixtures/pt7"
        if not (args.mixture / "train.npz").exists():
            parser.error(f"{args.mixture} is missing: pass --mixture DIR or --synthetic N")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.synthetic:
        tokens, what = synthetic_mixture(args.synthetic)
    else:
        tokens, what = np.load(args.mixture / "train.npz")["tokens"], str(args.mixture)
    needed = 2 * args.warmup + 2 * args.timed + args.steps + 3
    recipe = Recipe(peak_lr=PEAK_LR, epochs=math.ceil(needed / steps_per_epoch(len(tokens), BATCH)),
                    precision=args.precision, compile=args.compile)
    print(f"hardware: {hardware(device)}")
    print(f"data: {what}: {tokens.shape[0]:,} items x {tokens.shape[1]} tokens; batch {BATCH}, {args.precision}"
          + (", compiled" if args.compile else "") + f"; {args.warmup} warm-up steps, {args.timed} timed, "
          f"{args.steps} profiled")

    gap = weight_gap(tokens, recipe, device)
    print(f"StackStep with vs without its named ranges, 3 updates from one init: max |Δw| = {gap:.3g}"
          + (" (identical)" if gap == 0 else " (GPU nondeterminism? see benchmarks/gpu_determinism.py)"))
    plain = Loop(tokens, recipe, device, ranges=False, k=args.stack)
    for step in range(args.warmup):
        plain.run_step(step)
    ms_plain = plain.ms_per_step(args.warmup, args.timed)
    ms_index = indexing_ms(plain, max(10, args.timed))
    del plain
    ranged = Loop(tokens, recipe, device, ranges=True, k=args.stack)
    for step in range(args.warmup):
        ranged.run_step(step)
    ms_ranged = ranged.ms_per_step(args.warmup, args.timed)
    print(f"without the profiler: StackStep {ms_plain:.3f} ms/step; with the named ranges {ms_ranged:.3f} "
          f"ms/step; the indexing line alone {ms_index:.4f} ms/call")

    with tempfile.TemporaryDirectory() as directory:
        trace = args.trace or str(Path(directory, "trace.json"))
        tables = profile_steps(ranged, args.warmup + args.timed, args.steps, trace)
        print_summary(summarize_trace(trace, args.steps), args.steps, cuda)
    print(f"\ntop-15 ops by self CPU time (host), over {args.steps} steps:")
    print(tables["self_cpu_time_total"])
    if args.trace:
        print(f"chrome trace: {args.trace}")


if __name__ == "__main__":
    main()
