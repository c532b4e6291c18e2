"""Are two GPU runs of the same short training with the same seed identical? If not, how far
apart do they end, and what makes them differ?

Each variant runs in a fresh process of this script (deterministic mode must be set before CUDA starts) and
trains twice there with `worldrep.training.train`: a fresh model from the same seed, the same rows, the same
recipe (paper peak lr, 1 epoch of steps·128 rows so the schedule spans the run), no validation, checkpoints
only at the ends and written nowhere. Then:

  default        what the workflow runs;
  deterministic  `torch.use_deterministic_algorithms(True)` with CUBLAS_WORKSPACE_CONFIG=:4096:8. If an op has
                 no deterministic implementation it raises; the error is reported and the runs are repeated
                 with `warn_only=True`, listing every op that warned.

Run 1 against run 2 of each variant: identical weights? max |Δ|, max |Δ| / max |w|, the 5 worst tensors, and
the first logged training loss that differs. A gradient probe then repeats one forward + backward from the
same weights and batch and lists the parameters whose gradients change between repeats (which kernels are
nondeterministic: attention backward shows in q/k/v), once more with
attention forced to the math SDPA backend. On the CPU every comparison must come out identical.

    python benchmarks/gpu_determinism.py --synthetic 70000             # CUDA: 200 steps, fp16
    python benchmarks/gpu_determinism.py --precision bf16 --steps 500
    python benchmarks/gpu_determinism.py --device cpu --threads 1 --steps 4
    python benchmarks/gpu_determinism.py --synthetic 70000 --stack-invariance 7   # and a stacked run against alone
"""
import argparse
import csv
import io
import os
import re
import subprocess
import sys
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.training import BATCH, PEAK_LR, SEED, hardware, synthetic_mixture  # noqa: E402
from worldrep.evaluation import autocast  # noqa: E402
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.stack import from_hf_models, stacked_token_losses  # noqa: E402
from worldrep.training import LossScaler, Recipe, Validation, train  # noqa: E402

VARIANTS = {"default": {}, "deterministic": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}}


# ---- one variant, in its own process ------------------------------------------------------------------

def recipe_for(args) -> Recipe:
    """One epoch of exactly `steps` batches; validation and checkpoints only at steps 0 and T."""
    return Recipe(peak_lr=PEAK_LR, epochs=1, precision=args.precision, checkpoint_fraction=1.0,
                  validation_fraction=1.0)


def no_validation(width: int) -> Validation:
    """An empty validation split: `write_validation` loops over no task (nothing evaluated, nothing logged)."""
    return Validation(np.zeros((0, width), np.uint8), np.zeros(0, np.uint8), np.zeros(0, "S1"), [])


def train_once(tokens: np.ndarray, recipe: Recipe, device: torch.device, work: Path) -> dict:
    """A fresh model from SEED trained by `train`; its final weights (CPU), logged losses and ms/step."""
    model = build_model(ModelSettings(), SEED)
    log = io.StringIO()
    train(model, tokens, no_validation(tokens.shape[1]), recipe, SEED, device, work, "gpu-determinism",
          save_checkpoint=lambda model, step: None, log=log)
    with open(work / "training_log.csv", newline="") as handle:
        losses = [(int(r["step"]), r["loss"]) for r in csv.DictReader(handle)]
    timing = re.search(r"\(([0-9.]+) ms/step\)", log.getvalue())
    return {"weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, "losses": losses,
            "ms_per_step": float(timing.group(1)) if timing else float("nan")}


def gradient_probe(tokens: np.ndarray, recipe: Recipe, device: torch.device, repeats: int, math_sdpa: bool) -> dict:
    """Repeat one forward + backward (scaled as in training) from the same init and batch; per parameter,
    the max |Δ grad| against the first pass, and whether the loss ever differed."""
    stack = from_hf_models([build_model(ModelSettings(), SEED)]).to(device).train()  # the trainer's model
    scale = LossScaler(1, device, enabled=recipe.precision == "fp16").scale
    batch = torch.from_numpy(tokens[:BATCH]).to(device)[None]
    backend = nullcontext()
    if math_sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = sdpa_kernel(SDPBackend.MATH)
    first, loss_differs, worst = None, False, {}
    for _ in range(repeats + 1):
        stack.zero_grad(set_to_none=True)
        with backend, autocast(device, recipe.precision, cache=False):
            loss = stacked_token_losses(stack, batch.long())
        (loss * scale).sum().backward()
        grads = {n: p.grad.detach().clone() for n, p in stack.named_parameters()}
        if first is None:
            first = (loss.detach().clone(), grads)
            continue
        loss_differs |= not torch.equal(loss.detach(), first[0])
        for name, grad in grads.items():
            worst[name] = max(worst.get(name, 0.0), float((grad - first[1][name]).abs().max()))
    return {"loss_differs": loss_differs, "grad_diff": {n: d for n, d in worst.items() if d > 0}}


def two_runs(tokens, recipe, device, directory: Path) -> list[dict]:
    return [train_once(tokens, recipe, device, directory / f"run{i}") for i in (1, 2)]


def run_variant(args) -> None:
    device = torch.device(args.device)
    deterministic = args.child == "deterministic"
    if deterministic:
        torch.use_deterministic_algorithms(True)
    tokens = np.load(args.data)["tokens"]
    recipe = recipe_for(args)
    result = {"variant": args.child, "error": None, "warned": []}
    with tempfile.TemporaryDirectory() as directory:
        try:
            result["runs"] = two_runs(tokens, recipe, device, Path(directory))
        except RuntimeError as error:  # an op with no deterministic implementation
            if not deterministic:
                raise
            result["error"] = str(error).strip().splitlines()[0]
            torch.use_deterministic_algorithms(True, warn_only=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result["runs"] = two_runs(tokens, recipe, device, Path(directory))
            result["warned"] = sorted({str(w.message).splitlines()[0] for w in caught
                                       if "deterministic" in str(w.message)})
    result["probe"] = gradient_probe(tokens, recipe, device, args.repeats, math_sdpa=False)
    if device.type == "cuda":
        result["probe_math"] = gradient_probe(tokens, recipe, device, args.repeats, math_sdpa=True)
    torch.save(result, args.child_out)


# ---- comparison and report ----------------------------------------------------------------------------

def tensor_gaps(a: dict, b: dict) -> list[dict]:
    """Per tensor: max |Δ|, max |Δ| / max |w| (w from either run), and how many entries differ."""
    rows = []
    for name in a:
        x, y = a[name].double(), b[name].double()
        diff = (x - y).abs()
        scale = torch.maximum(x.abs().max(), y.abs().max()).clamp(min=1e-30)
        rows.append({"name": name, "max_abs": float(diff.max()), "max_rel": float(diff.max() / scale),
                     "differ": int((diff > 0).sum()), "size": diff.numel()})
    return sorted(rows, key=lambda r: -r["max_abs"])


def first_divergence(losses_a, losses_b):
    return next((step for (step, x), (_, y) in zip(losses_a, losses_b) if x != y), None)


def report_pair(label: str, a: dict, b: dict) -> bool:
    rows = tensor_gaps(a["weights"], b["weights"])
    if rows[0]["max_abs"] == 0:
        print(f"{label}: weights identical ({len(rows)} tensors, bit for bit)")
        return True
    differing = sum(r["max_abs"] > 0 for r in rows)
    step = first_divergence(a["losses"], b["losses"])
    print(f"{label}: weights DIFFER in {differing}/{len(rows)} tensors; max |Δ| {rows[0]['max_abs']:.3g}, "
          f"max |Δ|/max|w| {max(r['max_rel'] for r in rows):.3g}; first logged loss that differs: "
          + (f"step {step}" if step is not None else "none (differences stay below the log's 6 decimals)"))
    print(f"  {'worst tensors':<48}{'max |Δ|':>11}{'/max|w|':>11}{'entries differ':>16}")
    for r in rows[:5]:
        print(f"  {r['name']:<48}{r['max_abs']:>11.3g}{r['max_rel']:>11.3g}{r['differ']:>9,}/{r['size']:<,}")
    return False


def report_probe(label: str, probe: dict) -> bool:
    grads = probe["grad_diff"]
    if not grads and not probe["loss_differs"]:
        print(f"{label}: loss and every gradient identical across repeats")
        return True
    worst = sorted(grads.items(), key=lambda kv: -kv[1])
    names = ", ".join(f"{n} ({d:.2g})" for n, d in worst[:8]) + (f", … {len(worst) - 8} more" if len(worst) > 8 else "")
    print(f"{label}: loss {'DIFFERS' if probe['loss_differs'] else 'identical'}; gradients differ in "
          f"{len(grads)} tensors: {names or 'none'}")
    return False


def conclusion(same: dict, results: dict, device: torch.device) -> str:
    default, deterministic = same["default"], same["deterministic"]
    ms = {v: results[v]["runs"][1]["ms_per_step"] for v in results}  # run 2: warm
    cost = f"deterministic mode costs {ms['deterministic'] / ms['default']:.2f}x the ms/step ({ms['default']:.2f} -> " \
           f"{ms['deterministic']:.2f})"
    if default:
        where = "on this GPU and stack" if device.type == "cuda" else "on the CPU (as required)"
        return (f"same seed, same weights {where}: the default kernels are run-to-run deterministic for this "
                f"training, so deterministic mode is not needed ({cost}).")
    if deterministic:
        probe = results["default"]["probe"]["grad_diff"]
        culprit = f"The gradients of {', '.join(sorted(probe))} vary between identical backward passes" if probe \
            else "Single passes repeat exactly, so the variation builds up elsewhere (optimizer or loss scaler)"
        return (f"the runs differ only through nondeterministic kernels: with deterministic algorithms they are "
                f"identical. {culprit}. {cost}.")
    return ("the runs differ even with deterministic algorithms: something outside kernel choice varies "
            f"(check the probes above). {cost}.")


def stack_invariance(tokens: np.ndarray, args, device: torch.device) -> None:
    """Stack invariance (§7.1) on this device: run 0 (seed SEED) trained in a fused stack of K runs (seeds SEED..,
    the same rows in each run's own order) against the same run trained alone, same recipe and steps."""
    from worldrep.stack import from_hf_models
    from worldrep.training import StackRun, train_stack

    recipe = recipe_for(args)
    ends = {}
    with tempfile.TemporaryDirectory() as directory:
        for k in (args.stack_invariance, 1):
            stack = from_hf_models([build_model(ModelSettings(), SEED + i) for i in range(k)])
            runs = [StackRun(f"r{i}", SEED + i, tokens, no_validation(tokens.shape[1]), Path(directory, f"{k}-{i}"),
                             "invariance", lambda model, step: None) for i in range(k)]
            train_stack(stack, runs, recipe, device, log=io.StringIO(), fused=True, name=f"invariance-{k}")
            ends[k] = {n: t.detach().cpu().clone() for n, t in stack.slice_state_dict(0).items()}
    alone, stacked = ends[1], ends[args.stack_invariance]
    gap = max(float((alone[n] - stacked[n]).abs().max()) for n in alone)
    scale = max(float(w.abs().max()) for w in alone.values())
    same = all(torch.equal(alone[n], stacked[n]) for n in alone)
    print(f"stack invariance ({device.type}, fused, {args.steps} steps, {args.precision}): run 0 in a stack of "
          f"{args.stack_invariance} vs alone: " + ("identical weights" if same else
                                                   f"max |Δw| {gap:.3g} ({gap / scale:.3g} of max |w|)"))


def run_children(tokens: np.ndarray, args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        data = Path(directory, "tokens.npz")
        np.savez(data, tokens=tokens)
        for variant, extra in VARIANTS.items():
            env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"} | extra
            out = Path(directory, f"{variant}.pt")
            subprocess.run([sys.executable, __file__, "--child", variant, "--child-out", str(out), "--data", str(data),
                            "--steps", str(args.steps), "--device", args.device, "--precision", args.precision,
                            "--repeats", str(args.repeats), "--threads", str(args.threads)], env=env, check=True)
            results[variant] = torch.load(out, weights_only=False)
    return results


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixture", type=Path, help="mixture directory (default results/mixtures/pt7)")
    parser.add_argument("--synthetic", type=int, help="build a mixture of this many items in memory instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 200 on CUDA, 4 on CPU)")
    parser.add_argument("--repeats", type=int, help="gradient-probe repeats (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--stack-invariance", type=int, default=0, metavar="K",
                        help="also train run 0 in a fused stack of K runs and alone, and compare (METHOD §7.1)")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (200 if cuda else 4)
    args.repeats = args.repeats or (5 if cuda else 1)
    args.precision = args.precision or ("fp16" if cuda else "fp32")
    if not args.child and args.mixture is None and args.synthetic is None:
        args.mixture = REPO / "results/mixtures/pt7"
        if not (args.mixture / "train.npz").exists():
            parser.error(f"{args.mixture} is missing: pass --mixture DIR or --synthetic N")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        run_variant(args)
        return
    device = torch.device(args.device)
    if args.synthetic:
        tokens, what = synthetic_mixture(args.synthetic)
    else:
        tokens, what = np.load(args.mixture / "train.npz")["tokens"], str(args.mixture)
    rows = tokens[np.arange(args.steps * BATCH) % len(tokens)]  # one epoch of exactly `steps` batches
    print(f"hardware: {hardware(device)}")
    print(f"data: first {len(rows):,} rows of {what} ({rows.shape[1]} tokens); {args.steps} steps of batch {BATCH}, "
          f"{args.precision}, seed {SEED}, peak lr {PEAK_LR}; 2 runs per variant in one process, variants in "
          f"separate processes")
    results = run_children(rows, args)
    init = build_model(ModelSettings(), SEED).state_dict()
    moved = max(float((w - init[k]).abs().max()) for k, w in results["default"]["runs"][0]["weights"].items())
    print(f"training moved the weights by up to {moved:.3g} from the init (so identical means something)")
    same = {}
    for variant, result in results.items():
        if result["error"]:
            print(f"{variant}: strict mode raised: {result['error']}")
            print(f"  rerun with warn_only=True; ops that warned: {result['warned'] or 'none'}")
        same[variant] = report_pair(f"{variant} (ms/step {result['runs'][1]['ms_per_step']:.2f}), run 1 vs run 2",
                                    *result["runs"])
    report_pair("default run 1 vs deterministic run 1 (how far the kernel choice moves the result)",
                results["default"]["runs"][0], results["deterministic"]["runs"][0])
    print(f"gradient probe: one forward + backward from the same init and batch, repeated {args.repeats}x:")
    for variant, result in results.items():
        report_probe(f"  {variant}", result["probe"])
        if "probe_math" in result:
            report_probe(f"  {variant}, SDPA forced to the math backend", result["probe_math"])
    print(f"conclusion: {conclusion(same, results, device)}")
    if args.stack_invariance:
        stack_invariance(rows, args, device)


if __name__ == "__main__":
    main()
