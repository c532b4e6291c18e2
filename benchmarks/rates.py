"""The rates the run plan and `benchmarks/grid_estimate.py` project with, measured on this machine for one config's
model: a stack job's start-up (interpreter and the imports of scripts/train.py), loading one model, greedy
evaluation per 10,000 items, extracting one model's representations, writing one checkpoint, and one training
step. Prints the hardware, a table, and the `plan.rates` block to paste into a config (worldrep.plan reads it).

    python benchmarks/rates.py                                  # the laptop model on this CPU, one thread
    python benchmarks/rates.py --config config/quick.yaml --device cuda

Also, the questions of one process per stack (docs/METHOD.md §7.5):
  - extraction of CHECKPOINT_STACK (21) models at once through their stack (`extract_stack`), against one model;
  - greedy decoding of K models at once through their stack (`stacked_greedy_generate`) against one model after
    another (`greedy_generate`), the same items, measured in the same run: the speed-up per item;
  - a checkpoint's cost beside the training it interrupts: write time over the steps between two checkpoints at
    the measured step time (and at an assumed GPU step time), to be under 2%.

On a GPU it also times a stack of one's whole update (forward, backward, clipping, AdamW) eagerly and replayed as a
CUDA graph: the plan's fixed cost per stack step (`step_overhead_ms`, `graph_step_overhead_ms`).

Evaluation items are prompts of the distance task decoded to 6 new tokens each (a 4-digit answer, its `<eos>`
and one more: what a trained model emits; a random-init one would run to the task's limit of 20).

On a GPU a stack job's start-up also creates the CUDA context: `job_start_s` there times the imports and a first
kernel. `--json PATH` writes every figure and the `plan.rates` block as JSON (the GPU window's `rates` stage keeps
it in its evidence and in facts.json).
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.training import hardware, synchronize  # noqa: E402 (one hardware line for every benchmark)
from worldrep.evaluation import greedy_generate, load_model, prompt_tokens, stacked_greedy_generate  # noqa: E402
from worldrep.artifacts import write_json  # noqa: E402
from worldrep.entry import CHECKPOINT_STACK  # noqa: E402
from worldrep.grid import checkpoint_count, model_settings, recipe_settings, step_counts, validate_config  # noqa: E402
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.stack import from_hf_models, stacked_token_losses  # noqa: E402
from worldrep.tokenizer import encode_compact  # noqa: E402

NEW_TOKENS = 6
# What a stack job imports before it trains: scripts/train.py's imports (its lease module first).
STACK_IMPORTS = ("import torch, transformers; from transformers import AutoModelForCausalLM; "
                 "import worldrep.lease, worldrep.training, worldrep.entry, worldrep.provenance, "
                 "worldrep.representations")
GPU_STEP_MS = 5.0  # an assumed ms per stack step on one GPU, for the checkpoint share there
# ... and on a GPU, the CUDA context and a first kernel, which every stack job pays before its first step.
CUDA_START = "; import torch; torch.zeros(1, device='cuda').add_(1); torch.cuda.synchronize()"


def median_seconds(fn, repeats: int, device: torch.device, warmup: bool = True) -> float:
    """Median wall seconds of `repeats` calls, after one untimed call (first-call costs: kernel selection, caches)."""
    if warmup:
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def subprocess_seconds(code: str, repeats: int) -> float:
    def run():
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return median_seconds(run, repeats, torch.device("cpu"), warmup=False)  # every start is a first start


def distance_prompts(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    compact = np.array([f"dist(c_{a:04d},c_{b:04d})=".encode() for a, b in rng.integers(1000, 10_000, (n, 2))])
    return torch.from_numpy(prompt_tokens(encode_compact(compact)).astype(np.int64))


UPDATES = 50  # updates timed per repeat: one takes about a millisecond on a GPU, below a timer's noise alone


def update_seconds(config: dict, settings: ModelSettings, batch: torch.Tensor, device: torch.device, repeats: int,
                   measured) -> bool:
    """A GPU's seconds per training update of a stack of one at the config's recipe and precision, eager and as a
    replayed CUDA graph (worldrep.training.StackStep, as scripts/train.py runs it): `update_s` and `graph_update_s`.
    Whether the capture succeeded: a failed one is printed, and the eager update stands for both in the plan."""
    from worldrep.evaluation import resolve_device_precision
    from worldrep.training import Recipe, StackStep

    shared = recipe_settings(config, next(iter(config["mixtures"]["pretraining"])))
    recipe = Recipe(**{**shared, "betas": tuple(shared["betas"]),
                       "precision": resolve_device_precision(device, config["training"]["precision"])})
    for key, graphs in (("update_s", False), ("graph_update_s", True)):
        step_fn = StackStep(from_hf_models([build_model(settings, 1)]).to(device).train(), recipe, device, graphs,
                            fused=True)

        def updates():
            for _ in range(UPDATES):
                step_fn(batch, 1e-4)

        seconds = median_seconds(updates, repeats, device) / UPDATES  # its warm-up call captures the graph
        if graphs and step_fn.graph is None:
            print(f"{key:<16}  CUDA graph capture failed: the update stays eager", flush=True)
            return False
        measured(key, seconds)
    return True


# The plan's rate for each measured one: (plan key, scale, decimals). job_start_s is python, the imports and (on a
# GPU) the CUDA context; a Snakemake job adds its own start-up and the lease (the CPU default in worldrep.plan is
# 5.0 s against 2.9 s measured here for the imports alone). At this model's size an update is launch-bound: its
# time is the plan's fixed cost per stack step (the FLOPs the plan adds on top are microseconds here).
PLAN_KEYS = {"job_start_s": ("job_start_s", 1, 2), "model_load_s": ("model_load_s", 1, 3),
             "eval_10k_s": ("eval_10k_s", 1, 2), "extract_s": ("extract_s", 1, 2),
             "checkpoint_s": ("checkpoint_s", 1, 3), "extract_stack_s": ("extract_stack_s", 1, 2),
             "update_s": ("step_overhead_ms", 1000, 3), "graph_update_s": ("graph_step_overhead_ms", 1000, 3)}


def plan_block(rates: dict[str, float], hardware_name: str, full_extract_stack: bool = True,
               capture_failed: bool = False) -> dict:
    """The `plan.rates.{device}` block of the rates in `rates`. A fused extraction counts only at the stack
    job's own size (entry.CHECKPOINT_STACK). An update measured eagerly whose capture failed stands for the graph
    step too: training then runs eagerly as well (worldrep.training.StackStep)."""
    block = {}
    for rate, (key, scale, decimals) in PLAN_KEYS.items():
        if rate in rates and (rate != "extract_stack_s" or full_extract_stack):
            block[key] = round(scale * rates[rate], decimals)
    if "step_overhead_ms" in block and capture_failed:
        block["graph_step_overhead_ms"] = block["step_overhead_ms"]
    return {**block, "source": f"measured: benchmarks/rates.py, {hardware_name}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "config/laptop.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a stack job has one)")
    parser.add_argument("--items", type=int, default=2048, help="evaluation items timed (scaled to 10,000)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch (default: the config's)")
    parser.add_argument("--cities", type=int, default=5_700, help="cities extracted (the paper world's ~5,700)")
    parser.add_argument("--stacks", type=int, nargs="+", default=[3, 7], help="K of the stacked decoding")
    parser.add_argument("--extract-stack", type=int, default=CHECKPOINT_STACK,
                        help="checkpoints extracted at once through their stack, as a GPU's stack job does (measured "
                             "on a GPU only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures and the plan.rates block here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = validate_config(yaml.safe_load(args.config.read_text()))
    settings = ModelSettings(**model_settings(config))
    batch = args.batch_size or config["evaluation"]["batch_size"]
    print(f"hardware: {hardware(device)}")
    print(f"model of {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}: hidden "
          f"{settings.hidden_size}, {settings.num_hidden_layers} layers; evaluation batch {batch}; fp32")

    layers = config["representations"]["layers"]
    what = {"checkpoint_s": "one checkpoint written (HF folder)", "model_load_s": "one saved model, Auto classes, fp32",
            "eval_10k_s": f"greedy decoding of 10,000 items, {NEW_TOKENS} new tokens each, one model",
            "extract_s": f"one model's representations of {args.cities:,} cities, layers {layers}",
            "extract_stack_s": f"the same for {args.extract_stack} models at once through their stack",
            "train_step_s": "one run's forward and backward at the config's batch",
            "update_s": f"a stack of one's update (forward, backward, clipping, AdamW), eager, {UPDATES} in a row",
            "graph_update_s": "the same update replayed as a CUDA graph (training.cuda_graphs)",
            "interpreter_s": "python -c pass",
            "job_start_s": "python importing what a stack job imports" + (", then a first CUDA kernel"
                                                                          if device.type == "cuda" else "")}
    rates: dict[str, float] = {}
    record = {"hardware": hardware(device), "device": device.type, "config": str(args.config), "rates": rates}

    def measured(key: str, seconds: float) -> None:
        """Print and keep each rate as it is measured, with the plan.rates block of every rate measured until then
        (the JSON too): a run stopped at a deadline keeps them."""
        rates[key] = seconds
        print(f"{key:<16}{seconds:>10.{5 if seconds < 0.1 else 3}f}  {what[key]}", flush=True)
        record["plan"] = {"rates": {device.type: plan_block(
            rates, record["hardware"].split(";")[0], args.extract_stack == CHECKPOINT_STACK,
            record.get("graph_captured") is False)}}
        if args.json:
            write_json(args.json, record)

    # In-process rates first, the slow start-ups after them: a deadline costs the fewest figures.
    print(f"\n{'rate':<16}{'seconds':>10}  what")
    model = build_model(settings, 0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        from worldrep.training import save_hf_model

        tokenizer = Path(tmp) / "tokenizer"
        tokenizer.mkdir()
        (tokenizer / "tokenizer.json").write_text("{}")  # the tokenizer files a checkpoint carries: two small files
        (tokenizer / "tokenizer_config.json").write_text("{}")
        measured("checkpoint_s", median_seconds(lambda: save_hf_model(model, Path(tmp) / "ckpt", tokenizer),
                                                args.repeats, device))
        measured("model_load_s", median_seconds(lambda: load_model(Path(tmp) / "ckpt", device), args.repeats, device))

    model = model.to(device)
    prompts = distance_prompts(args.items).to(device)

    def decode_alone():
        for start in range(0, len(prompts), batch):
            greedy_generate(model, prompts[start:start + batch], NEW_TOKENS)

    measured("eval_10k_s", median_seconds(decode_alone, args.repeats, device) * 10_000 / args.items)

    from worldrep.representations import extract, extract_stack, partial_prompt_tokens

    tokens = partial_prompt_tokens("distance", np.random.default_rng(0).integers(1000, 10_000, args.cities))
    measured("extract_s", median_seconds(lambda: extract(model, tokens, layers=layers, device=device), args.repeats,
                                         device))
    if device.type == "cuda":  # only a GPU's stack job extracts fused (worldrep.training.fused_by_default)
        checkpoints = from_hf_models([build_model(settings, seed) for seed in range(args.extract_stack)]).eval()
        checkpoints = checkpoints.to(device)
        measured("extract_stack_s", median_seconds(
            lambda: extract_stack(checkpoints, tokens, layers=layers, device=device), args.repeats, device))
        del checkpoints

    # One training step of one run at the config's batch and a pretraining mixture's typical width (distance + 2).
    stack = from_hf_models([build_model(settings, 1)]).to(device)
    width = prompts.shape[1] + 6
    step_batch = torch.randint(4, 98, (1, recipe_settings(config, next(iter(config["mixtures"]["pretraining"])))
                                       ["batch_size"], width), device=device)

    def step():
        stacked_token_losses(stack, step_batch).sum().backward()

    measured("train_step_s", median_seconds(step, args.repeats, device))
    if device.type == "cuda":
        try:  # never run before a GPU window: a failure here must not cost the rates after it
            record["graph_captured"] = update_seconds(config, settings, step_batch, device, args.repeats, measured)
        except Exception as error:  # noqa: BLE001
            print(f"update timing failed: {type(error).__name__}: {error}", flush=True)
    measured("interpreter_s", subprocess_seconds("pass", args.repeats))
    measured("job_start_s", subprocess_seconds(STACK_IMPORTS + (CUDA_START if device.type == "cuda" else ""),
                                               args.repeats))

    print(f"\nstacked greedy decoding, {args.items:,} items per model, {NEW_TOKENS} new tokens, "
          f"batch {batch} per model:")
    print(f"{'K':>5}{'one after another s':>22}{'stacked s':>12}{'speed-up':>10}")
    decoding = record["stacked_decoding"] = []
    for k in args.stacks:
        models = [build_model(settings, seed).eval().to(device) for seed in range(k)]
        stacked = from_hf_models(models).eval().to(device)

        def one_after_another():
            for m in models:
                for start in range(0, len(prompts), batch):
                    greedy_generate(m, prompts[start:start + batch], NEW_TOKENS)

        def together():
            for start in range(0, len(prompts), batch):
                part = prompts[start:start + batch]
                stacked_greedy_generate(stacked, part.expand(k, *part.shape), NEW_TOKENS)

        apart, joint = (median_seconds(fn, args.repeats, device) for fn in (one_after_another, together))
        print(f"K={k:>3}{apart:>22.2f}{joint:>12.2f}{apart / joint:>9.2f}x")
        decoding.append({"k": k, "one_after_another_s": apart, "stacked_s": joint, "speed_up": apart / joint})
        if args.json:
            write_json(args.json, record)

    print("\ncheckpoint cost beside the training between two checkpoints (target < 2%):")
    shares = record["checkpoint_share"] = []
    for mixture in [next(iter(config["mixtures"]["pretraining"]))]:
        recipe = recipe_settings(config, mixture)
        epochs, per_epoch = step_counts(config, mixture)
        total = epochs * per_epoch
        between = total / max(1, checkpoint_count(total, recipe["checkpoint_fraction"]) - 1)
        for label, step_s in (("measured step", rates["train_step_s"]), (f"GPU at {GPU_STEP_MS:g} ms/step (assumed)",
                                                                       GPU_STEP_MS / 1000)):
            share = rates["checkpoint_s"] / (between * step_s)
            print(f"  {mixture}: {between:,.0f} steps between checkpoints, {label}: {100 * share:.3f}%")
            shares.append({"mixture": mixture, "steps_between": between, "step": label, "share": share})

    print("\nplan.rates for a config (worldrep.plan; the GPU's come from a GPU window; job_start_s without "
          "Snakemake's own share):")
    print(yaml.safe_dump({"plan": record["plan"]}, sort_keys=False).rstrip())


if __name__ == "__main__":
    main()
