"""The canary: about a minute at the start of a GPU window that answers what every later stage
assumes, each answer printed as one line and written to `--json`:

  attention     the attention kernel SDPA actually dispatches to for the stack's shapes, forward and backward
                (read off the aten ops of one training step: flash, memory-efficient, cuDNN, or the decomposed math
                path), and which SDPA backends are enabled. cuDNN attention is preferred on Hopper by recent torch
                and is not deterministic, so the determinism stage's results depend on this line
  libraries     torch, CUDA, `torch.backends.cudnn.version()`, the TF32 settings of matmul and cuDNN
  graphs        a stack of K runs (default 7) trained N steps (default 50) eagerly, then again from the same state
                with CUDA graphs: whether capture worked, max |Δ weight| and max |Δ loss| between the two. If capture
                fails the line says so and the window goes on eagerly (the trainer falls back by itself)
  fp16          how many updates the per-run loss scaler skipped (overflow) in the eager leg, per run
  memory        peak GPU memory of a stack of 21 paper models over a few fused steps, beside the trainer's
                estimate (`stack_memory_bytes`) that refuses stacks before training

    python benchmarks/gpu_canary.py --json canary.json                           # CUDA: K 7, 50 steps, fp16
    python benchmarks/gpu_canary.py --device cpu --k 2 --steps 2 --memory-k 0    # the CPU rehearsal

On the CPU the graph leg runs eagerly too (no CUDA graphs there), so its difference must be exactly 0, and the
step runs fused, the GPU's way, so the attention line names the kernel the fused step takes.
"""
import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.training import BATCH, PEAK_LR, hardware, paper_stack, synchronize, synthetic_mixture  # noqa: E402
from worldrep.artifacts import atomic_write_bytes  # noqa: E402
from worldrep.training import Recipe, StackStep, learning_rate, stack_memory_bytes  # noqa: E402

# aten ops of the fused attention kernels, forward and backward; without any of them SDPA took its math path,
# which decomposes into matmuls and a softmax.
ATTENTION_OPS = {"_scaled_dot_product_flash_attention": "flash",
                 "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
                 "_scaled_dot_product_efficient_attention": "memory-efficient",
                 "_scaled_dot_product_cudnn_attention": "cuDNN",
                 "_efficient_attention_forward": "memory-efficient", "_flash_attention_forward": "flash"}


def attention_kernels(ops: set[str]) -> list[str]:
    """The fused attention kernels among the aten op names of a step (backward ops named by their forward)."""
    found = {ATTENTION_OPS[name.removesuffix("_backward")] for name in ops
             if name.removesuffix("_backward") in ATTENTION_OPS}
    return sorted(found) or ["math (decomposed: no fused attention op dispatched)"]


class OpNames(TorchDispatchMode):
    """The aten op names dispatched inside the mode (below autograd: forward and backward kernels both)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def library_facts(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    settings = {"float32_matmul_precision": torch.get_float32_matmul_precision,
                "tf32_matmul": lambda: torch.backends.cuda.matmul.allow_tf32,
                "tf32_cudnn": lambda: torch.backends.cudnn.allow_tf32,
                "fp32_precision_matmul": lambda: torch.backends.cuda.matmul.fp32_precision,  # torch >= 2.9's API
                "fp32_precision_cudnn": lambda: torch.backends.cudnn.fp32_precision}
    for key, read in settings.items():
        with warnings.catch_warnings():  # torch >= 2.9 warns that allow_tf32 gives way to fp32_precision
            warnings.simplefilter("ignore")
            try:
                facts[key] = read()
            except (AttributeError, RuntimeError) as error:  # absent in this torch, or refused: say which
                facts[key] = f"unreadable ({type(error).__name__})"
    if device.type == "cuda":
        facts["sdpa_enabled"] = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                                 for name in ("flash", "mem_efficient", "cudnn", "math")
                                 if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")}
    return facts


def train_leg(tokens: np.ndarray, k: int, steps: int, device: torch.device, precision: str, cuda_graphs: bool,
              record_ops: bool = False, log=None) -> dict:
    """A fresh stack of K paper models (seeds 42, 43, ...: the same init every call) trained `steps` fused
    updates; its final weights, every step's losses, skipped updates per run, whether a graph ran, and (with
    `record_ops`) the aten ops of the first update."""
    stack, data = paper_stack(tokens, k, device)
    recipe = Recipe(peak_lr=PEAK_LR, epochs=1, precision=precision)
    step_fn = StackStep(stack, recipe, device, cuda_graphs, log, fused=True, widths=data.widths)  # log: capture
    total = max(steps, data.steps_per_epoch)
    losses, ops = [], OpNames()
    for step in range(steps):
        lr = learning_rate(step, recipe.peak_lr, recipe.warmup_steps, total)
        if record_ops and step == 0:
            with ops:
                loss, _ = step_fn(data.batch(step), lr)
        else:
            loss, _ = step_fn(data.batch(step), lr)
        losses.append(loss.detach().clone())
    synchronize(device)
    return {"weights": {n: t.detach().float().cpu() for n, t in stack.state_dict().items()},
            "losses": torch.stack(losses).float().cpu(), "graph": step_fn.graph is not None,
            "skipped": [int(steps - s) for s in step_fn.optimizer.steps.tolist()], "ops": ops.names}


def leg_gaps(a: dict, b: dict) -> tuple[float, float]:
    """Max |Δ weight| over every tensor and max |Δ loss| over every step and run between two legs."""
    weight_gap = max(float((a["weights"][n] - b["weights"][n]).abs().max()) for n in a["weights"])
    return weight_gap, float((a["losses"] - b["losses"]).abs().max())


def peak_memory(tokens: np.ndarray, k: int, device: torch.device, precision: str, steps: int = 3) -> dict:
    """Peak GPU memory of a fused stack of K paper models over a few eager updates, and the trainer's estimate
    (running out of memory is an answer too)."""
    from worldrep.model import ModelSettings

    # As `check_memory` sees the stack: one shared token matrix with its all-pad row.
    width = tokens.shape[1]
    estimate = stack_memory_bytes(ModelSettings(), k, BATCH, width, (len(tokens) + 1) * width) / 2**30
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        stack, data = paper_stack(tokens, k, device)
        step_fn = StackStep(stack, Recipe(peak_lr=PEAK_LR, epochs=1, precision=precision), device, fused=True,
                            widths=data.widths)
        for step in range(steps):
            step_fn(data.batch(step), PEAK_LR)
        synchronize(device)
    except torch.cuda.OutOfMemoryError as error:
        return {"k": k, "peak_gib": None, "estimate_gib": estimate, "error": str(error).splitlines()[0]}
    peak = torch.cuda.max_memory_allocated(device) - before
    return {"k": k, "peak_gib": peak / 2**30, "estimate_gib": estimate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--k", type=int, default=7, help="stack size of the eager-vs-graph legs")
    parser.add_argument("--steps", type=int, default=50, help="updates per leg")
    parser.add_argument("--memory-k", type=int, default=21, help="stack size of the memory probe (0: none)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="write every answer here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = args.precision or ("fp16" if cuda else "fp32")
    began = time.monotonic()
    tokens, what = synthetic_mixture(args.steps * BATCH)
    result = {"hardware": hardware(device), "data": what, "precision": precision}
    libraries = library_facts(device)
    print(f"hardware: {result['hardware']}", flush=True)

    def say(key: str, line: str, value) -> None:
        result[key] = value
        print(line, flush=True)
        if args.json:  # after every answer, by a rename: a canary stopped mid-way still leaves what it found
            text = json.dumps(result, indent=2, default=str) + "\n"
            atomic_write_bytes(args.json, lambda handle: handle.write(text.encode()))

    say("libraries", f"libraries: torch {libraries['torch']}, CUDA {libraries['cuda']}, cuDNN {libraries['cudnn']}; "
        f"TF32 matmul {libraries['tf32_matmul']}, cuDNN {libraries['tf32_cudnn']}; fp32 precision matmul "
        f"{libraries['fp32_precision_matmul']}, cuDNN {libraries['fp32_precision_cudnn']}; float32 matmul precision "
        f"{libraries['float32_matmul_precision']}" + (f"; SDPA enabled {libraries['sdpa_enabled']}" if cuda else ""),
        libraries)
    eager = train_leg(tokens, args.k, args.steps, device, precision, cuda_graphs=False, record_ops=True)
    kernels = attention_kernels(eager["ops"])
    say("attention", f"attention (SDPA, stack K {args.k}, batch {BATCH}x{tokens.shape[1] - 1}, {precision}): "
        f"{', '.join(kernels)}; ops {sorted(n for n in eager['ops'] if 'attention' in n)}", kernels)
    graphed = train_leg(tokens, args.k, args.steps, device, precision, cuda_graphs=True, log=sys.stdout)
    weight_gap, loss_gap = leg_gaps(eager, graphed)
    how = "CUDA graph captured" if graphed["graph"] else (
        "CUDA graph capture FAILED: the trainer trains eagerly" if cuda else "no CUDA: both legs eager")
    say("graphs", f"graphs: stack K {args.k}, {args.steps} steps eager vs {'graphed' if cuda else 'eager again'} "
        f"from the same state: {how}; max |Δ weight| {weight_gap:.3g}, max |Δ loss| {loss_gap:.3g}",
        {"k": args.k, "steps": args.steps, "captured": graphed["graph"], "max_weight_diff": weight_gap,
         "max_loss_diff": loss_gap})
    say("fp16_overflows", f"fp16: updates skipped by the loss scaler (overflow), per run, eager leg: "
        f"{eager['skipped']}" + ("" if precision == "fp16" else f" ({precision}: no loss scaling)"), eager["skipped"])
    if cuda and args.memory_k:
        memory = peak_memory(tokens, args.memory_k, device, precision)
        peak = (f"{memory['peak_gib']:.2f} GiB" if memory["peak_gib"] is not None else
                f"OUT OF MEMORY ({memory['error']})")
        say("memory", f"memory: stack K {memory['k']} of the paper model, fused {precision}: peak {peak} (the "
            f"trainer's estimate {memory['estimate_gib']:.2f} GiB)", memory)
    else:
        say("memory", "memory: not measured (" + ("no CUDA" if not cuda else "--memory-k 0") + ")", None)
    say("seconds", f"canary done in {time.monotonic() - began:.0f} s", round(time.monotonic() - began, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
