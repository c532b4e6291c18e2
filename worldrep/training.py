"""Our own training loop for the tiny Qwen2 (METHOD §7): the paper's recipe, written for throughput.

Why not the HF `Trainer`: with a 1.6M-parameter model a step is bound by overhead, not FLOPs. Here the
mixture's token matrix sits on the device once, a batch is an index into it (no tokenization, no DataLoader),
and every batch has the mixture's width. Padding to the mixture's longest item instead of the batch's is the
same math: pads come last, attention is causal, and pad targets are ignored.

The math is the recipe's: AdamW (decay on matrices and embeddings only), linear warmup then linear decay to 0,
batch 128 with the last partial batch kept, global-norm clipping, loss over every non-pad target token.

A run lives in a work directory until it finishes: resume state (weights, optimizer, loss scaler, RNG, log
window) at every checkpoint step, Hugging Face checkpoints, and the two log files. A rerun of a killed job
resumes from the last state; on CPU it ends bit-identical to an uninterrupted run. Outputs appear only at the
end (`publish`), the final model last, so nothing half-written ever looks complete.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .evaluation import autocast, evaluate_items, summarize
from .tokenizer import PAD_ID

PRECISIONS = ("fp32", "fp16", "bf16")
TRAINING_LOG_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm")
VALIDATION_LOG_FIELDS = ("step", "task", "n", "loss", "metric", "value", "failures")
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class Recipe:
    """Everything that shapes a run's weights (METHOD §7.1–7.2). Part of the run's fingerprint."""
    peak_lr: float
    epochs: int
    batch_size: int = 128
    warmup_steps: int = 50
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_fraction: float = 0.025
    validation_fraction: float = 0.005
    log_every: int = 10
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")


# ---- schedule and data order: pure functions of (step, sizes, seed) ------------------------------------

def steps_per_epoch(n_items: int, batch_size: int) -> int:
    """The last partial batch is kept (§7.1)."""
    return math.ceil(n_items / batch_size)


def total_steps(n_items: int, batch_size: int, epochs: int) -> int:
    return epochs * steps_per_epoch(n_items, batch_size)


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """The lr of update `step` (0-based): linear warmup from 0 over `warmup` updates, then linear decay to 0
    at `total`. Hugging Face's `get_linear_schedule_with_warmup` convention, so update 0 has lr 0. Indexed
    by update, so under fp16 a step the loss scaler skips still advances the schedule (the HF Trainer holds
    it back): the decay reaches 0 exactly at the last step, as the spec says."""
    if step < warmup:
        return peak * step / max(1, warmup)
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def every(total: int, fraction: float) -> int:
    """The interval ⌈fraction · T⌉ of checkpoints (0.025) and validation (0.005), §7.2."""
    return max(1, math.ceil(fraction * total))


def checkpoint_steps(total: int, fraction: float) -> list[int]:
    """Step 0, every multiple of ⌈fraction · T⌉, and T (§7.2)."""
    return sorted(set(range(0, total + 1, every(total, fraction))) | {total})


def epoch_order(seed: int, epoch: int, n_items: int) -> np.ndarray:
    """A fresh permutation per epoch from the run's seed alone, so a resumed run needs no data RNG state."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))).permutation(n_items)


def batch_indices(seed: int, step: int, n_items: int, batch_size: int) -> np.ndarray:
    """The items of update `step`."""
    epoch, position = divmod(step, steps_per_epoch(n_items, batch_size))
    return epoch_order(seed, epoch, n_items)[position * batch_size:(position + 1) * batch_size]


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices and embeddings, none on biases or RMSNorm gains (§7.1, the HF Trainer rule)."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def token_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the whole sequence, pad targets ignored, averaged over the batch's
    non-pad targets (§7.1). No attention mask: pads come last and attention is causal."""
    logits = model(input_ids=tokens[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                           ignore_index=PAD_ID)


def item_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """Per-item mean token loss (the validation loss of each item), same masking as `token_loss`."""
    logits = model(input_ids=tokens[:, :-1]).logits.float()
    targets = tokens[:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD_ID, reduction="none")
    mask = targets != PAD_ID
    return (losses * mask).sum(dim=1) / mask.sum(dim=1)


def fingerprint(description: dict) -> str:
    """Identity of a run's inputs and settings; a resume state from any other run is never used."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


# ---- the loop ----------------------------------------------------------------------------------------

@dataclass
class Validation:
    """The mixture's validation split (§7.2: loss and greedy metric per task, on the whole split)."""
    tokens: np.ndarray
    task: np.ndarray          # index into task_names
    answers: np.ndarray
    task_names: list[str]
    batch_size: int = 1024


class CsvLog:
    """A CSV log in the work directory that a resumed run cuts back to its resume step."""

    def __init__(self, path: Path, fields: tuple[str, ...], resume_step: int | None):
        self.path, self.fields = path, fields
        rows = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", newline="") as handle:  # a kill here must not lose the kept rows
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, path)
        self.handle = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fields)

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def train(model, train_tokens: np.ndarray, validation: Validation, recipe: Recipe, seed: int,
          device: torch.device, work: Path, run_fingerprint: str, save_checkpoint, log=None,
          stop_after: int | None = None) -> dict:
    """Train `model` in place to the recipe's last step, resuming from `work` when it holds a state of the
    same run. `save_checkpoint(model, step)` writes a Hugging Face checkpoint (or nothing). `stop_after`
    ends the loop early (tests of resume). Returns a summary for the run's metadata."""
    work.mkdir(parents=True, exist_ok=True)
    n_items = len(train_tokens)
    total = total_steps(n_items, recipe.batch_size, recipe.epochs)
    checkpoints = set(checkpoint_steps(total, recipe.checkpoint_fraction))
    validate_every = every(total, recipe.validation_fraction)

    model.to(device).train()
    optimizer, scaler = make_optimizer(model, recipe, device)
    window = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, updates) since the last log

    start = load_state(work, run_fingerprint, model, optimizer, scaler, window, device, log)
    if start is None:  # nothing of another configuration (old checkpoints, logs) may reach this run's outputs
        shutil.rmtree(work)
        work.mkdir(parents=True)
    training_log = CsvLog(work / "training_log.csv", TRAINING_LOG_FIELDS, start)
    validation_log = CsvLog(work / "validation_log.csv", VALIDATION_LOG_FIELDS, start)
    resumed, start = start is not None, start or 0

    tokens = torch.from_numpy(train_tokens).to(device)  # once; uint8 keeps a 7M-item mixture under 0.5 GB
    step_fn = training_step(model, optimizer, scaler, recipe, device)
    order, order_epoch = None, -1
    spe = steps_per_epoch(n_items, recipe.batch_size)
    progress = tqdm(total=total, initial=start, desc="train", unit="step", file=log, mininterval=10,
                    smoothing=0.05)
    last = total if stop_after is None else min(total, stop_after)
    began = time.perf_counter()
    for step in range(start, last + 1):
        # A resume state is saved after its step's validation rows, which the logs therefore already hold.
        if (step % validate_every == 0 or step == total) and not (resumed and step == start):
            write_validation(model, validation, recipe.precision, device, step, validation_log)
        if step in checkpoints and step != start:
            save_checkpoint(model, step)
            save_state(work, run_fingerprint, step, model, optimizer, scaler, window)
        elif step == 0:
            save_checkpoint(model, step)
        if step == last:
            break
        epoch, position = divmod(step, spe)
        if epoch != order_epoch:
            order = torch.from_numpy(epoch_order(seed, epoch, n_items)).to(device)
            order_epoch = epoch
        lr = learning_rate(step, recipe.peak_lr, recipe.warmup_steps, total)
        loss, grad_norm = step_fn(tokens[order[position * recipe.batch_size:(position + 1) * recipe.batch_size]], lr)
        window += torch.stack([loss.double(), torch.ones((), dtype=torch.float64, device=device)])
        done = step + 1
        if done % recipe.log_every == 0 or done == total:
            mean, count = window.tolist()  # the only host sync of the loop, every log_every steps
            training_log.write({"step": done, "epoch": f"{done / spe:.4f}", "loss": f"{mean / count:.6f}",
                                "lr": f"{lr:.6e}", "grad_norm": f"{float(grad_norm):.6f}"})
            window.zero_()
        progress.update()
    progress.close()
    training_log.close()
    validation_log.close()
    elapsed = time.perf_counter() - began
    steps_run = last - start
    if log is not None:
        print(f"{steps_run} steps in {elapsed:.1f} s ({1000 * elapsed / max(1, steps_run):.2f} ms/step)",
              file=log, flush=True)
    return {"total_steps": total, "steps_per_epoch": spe, "n_train": n_items,
            "checkpoint_steps": sorted(checkpoints), "validation_every": validate_every}


def training_step(model, optimizer, scaler, recipe: Recipe, device: torch.device):
    """One update of the recipe as a function of (uint8 batch on the device, lr) -> (loss, grad norm), both
    left on the device. The loop and the throughput benchmark both time exactly this."""
    forward = torch.compile(model) if recipe.compile else model
    parameters = list(model.parameters())

    def step(batch: torch.Tensor, lr: float):
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, recipe.precision):
            loss = token_loss(forward, batch.long())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, as the HF Trainer does under fp16
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, recipe.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach(), grad_norm

    return step


def make_optimizer(model, recipe: Recipe, device: torch.device):
    """AdamW over the decay groups (fused on CUDA) and the fp16 loss scaler (a no-op in fp32 and bf16)."""
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.weight_decay), lr=0.0, betas=recipe.betas,
                                  eps=recipe.eps, fused=device.type == "cuda")
    return optimizer, torch.amp.GradScaler(device.type, enabled=recipe.precision == "fp16")


@torch.no_grad()
def write_validation(model, validation: Validation, precision: str, device: torch.device, step: int,
                     validation_log: CsvLog) -> None:
    """Validation loss and greedy metric of each task in the mixture (§7.2), one row per task."""
    model.eval()
    for index in np.unique(validation.task):
        task = validation.task_names[index]
        rows = validation.task == index
        tokens = validation.tokens[rows]
        losses = []
        for start in range(0, len(tokens), validation.batch_size):
            batch = torch.from_numpy(tokens[start:start + validation.batch_size].astype(np.int64)).to(device)
            with autocast(device, precision):
                losses.append(item_losses(model, batch))
        _, values, failed = evaluate_items(model, tokens, validation.answers[rows], task, validation.batch_size,
                                           device, precision)
        summary = summarize(task, values, failed)
        validation_log.write({"step": step, "task": task, "n": summary["n"],
                              "loss": f"{float(torch.cat(losses).mean()):.6f}", "metric": summary["metric"],
                              "value": f"{summary['value']:.6f}", "failures": summary["failures"]})
    model.train()


# ---- resume state --------------------------------------------------------------------------------------

def save_state(work: Path, run_fingerprint: str, step: int, model, optimizer, scaler, window) -> None:
    state = {
        "fingerprint": run_fingerprint, "step": step, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "window": window.cpu(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }
    partial = work / (STATE_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, work / STATE_FILE)  # a kill during the save leaves the previous state intact


def load_state(work: Path, run_fingerprint: str, model, optimizer, scaler, window, device, log) -> int | None:
    """Restore the last resume state in `work`; returns its step, or None to start from scratch."""
    path = work / STATE_FILE
    if not path.exists():
        return None
    # On the CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest to the parameters.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["fingerprint"] != run_fingerprint:
        if log is not None:
            print(f"ignoring {path}: it belongs to another configuration of this run", file=log, flush=True)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    window.copy_(state["window"].to(device))
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if log is not None:
        print(f"resuming from step {state['step']} ({path})", file=log, flush=True)
    return state["step"]


# ---- outputs -------------------------------------------------------------------------------------------

def save_hf_model(model, directory: Path, tokenizer_dir: Path, metadata: dict | None = None) -> None:
    """A Hugging Face model directory (safetensors) with the tokenizer beside it, so the Auto classes load
    both from one path (§5). Written under a `.partial` name and renamed: complete or absent."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    for name in os.listdir(tokenizer_dir):
        shutil.copyfile(tokenizer_dir / name, partial / name)
    if metadata is not None:
        (partial / "run.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(partial, directory)


def link_tree(source: Path, target: Path) -> None:
    """`target` as a hard-linked copy of `source` (file or directory), complete or absent. Hard links, not a
    move: Snakemake deletes an incomplete job's outputs, and the work directory must survive that."""
    partial = target.with_name(target.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    elif partial.exists():
        partial.unlink()
    if source.is_dir():
        shutil.copytree(source, partial, copy_function=os.link)
    else:
        os.link(source, partial)
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(partial, target)


def publish(work: Path, outputs: dict[str, Path]) -> None:
    """Move a finished run's files from `work` into place, the final model last, then drop `work`.
    `outputs` maps names in `work` (e.g. "final", "checkpoints", "training_log.csv") to output paths."""
    names = sorted(outputs, key=lambda name: name == "final")
    for name in names:
        outputs[name].parent.mkdir(parents=True, exist_ok=True)
        link_tree(work / name, outputs[name])
    # Out of the way in one rename before deleting: a kill during a long rmtree must not leave a resume
    # state beside half-deleted logs and checkpoints, which a rerun would publish as complete.
    trash = work.with_name(work.name + ".trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(work, trash)
    shutil.rmtree(trash)


