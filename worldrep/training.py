"""Our own training loop for the tiny Qwen2 (METHOD §7): the paper's recipe, written for throughput, training a
stack of K runs at once (§7.1). A lone run is a stack of one: there is no other loop.

Why not the HF `Trainer`: with a 1.6M-parameter model a step is bound by overhead, not FLOPs. Here every run's
token matrix sits on the device once, a batch is an index into it (no tokenization, no DataLoader), and every
batch has the stack's widest mixture's width. Padding to the mixture's longest item instead of the batch's is
the same math: pads come last, attention is causal, and pad targets are ignored. And K runs of one architecture
share every kernel (`stack.StackedQwen2`).

The math is the recipe's, per run: AdamW (decay on matrices and embeddings only), linear warmup then linear
decay to 0, batch 128 with the last partial batch kept, global-norm clipping, loss over every non-pad target
token. A run's result never depends on which runs share its stack: its loss, gradient norm and clipping, fp16
loss scale and skipped updates, data order and resume state are its own.

Each run lives in its own work directory until it finishes: resume state (its weights, optimizer moments, loss
scale, RNG, log window) at every checkpoint step, Hugging Face checkpoints, and the two log files. A rerun of a
killed job resumes from the last states; on CPU it ends bit-identical to an uninterrupted run. A finished run's
work directory becomes its store entry in one rename (worldrep.entry), so nothing half-written ever looks complete.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .evaluation import (autocast, decode_text, evaluate_items, max_new_tokens, prompt_tokens, score_items,
                         stacked_greedy_generate, summarize)
from .model import build_model
from .stack import stacked_token_losses
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


def decays(tensor: torch.Tensor, stacked: bool = False) -> bool:
    """Weight decay on weight matrices and embeddings, none on biases or RMSNorm gains (§7.1, the HF Trainer
    rule): a parameter decays when it has >= 2 dimensions as a Hugging Face tensor (one more in a stack)."""
    return tensor.dim() - int(stacked) >= 2


def token_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """A Hugging Face model's next-token cross-entropy over the whole sequence, pad targets ignored, averaged
    over the batch's non-pad targets (§7.1): the per-run loss of `stack.stacked_token_losses`, for one model."""
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


def per_run(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[K] values shaped to broadcast over a stacked tensor [K, ...]."""
    return values.view(-1, *[1] * (like.dim() - 1))


# ---- optimizer and loss scaling, per run ----------------------------------------------------------------

class StackedAdamW:
    """AdamW (§7.1) over stacked parameters, with its own step count per run.

    torch's `AdamW` update written out (`_single_tensor_adamw`'s operations in its order, bias corrections in
    float64 as its Python scalars, per-run values where it has scalars), so a stack of one takes torch's steps to
    a few ulps (tests/test_stack.py). The one addition is `ok` [K]: it leaves a run's weights, moments and step
    count untouched when its fp16 gradients overflowed, exactly as a lone run's `GradScaler` skips
    `optimizer.step()`. The lr is a float64 0-dim tensor and every
    operation is a tensor op with no host sync, so a whole step can be captured in a CUDA graph."""

    def __init__(self, named_parameters, k: int, recipe: Recipe, device: torch.device):
        self.params = [(name, p, decays(p, stacked=True)) for name, p in named_parameters]
        self.exp_avg = {name: torch.zeros_like(p) for name, p, _ in self.params}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p, _ in self.params}
        self.steps = torch.zeros(k, dtype=torch.float64, device=device)
        self.beta1, self.beta2 = recipe.betas
        self.eps, self.weight_decay = recipe.eps, recipe.weight_decay

    @torch.no_grad()
    def step(self, lr: torch.Tensor, ok: torch.Tensor | None = None) -> None:
        self.steps += 1 if ok is None else ok.to(self.steps.dtype)
        step_size = (lr / (1 - self.beta1 ** self.steps)).float()
        correction2 = ((1 - self.beta2 ** self.steps) ** 0.5).float()
        shrink = 1 - lr * self.weight_decay
        for name, p, decay in self.params:
            grad, m, v = p.grad, self.exp_avg[name], self.exp_avg_sq[name]
            if ok is None:
                if decay:
                    p.mul_(shrink)
                m.lerp_(grad, 1 - self.beta1)
                v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
                p.sub_(m / (v.sqrt() / per_run(correction2, p)).add_(self.eps) * per_run(step_size, p))
            else:  # the same update, kept only where the run's step is ok
                keep = per_run(ok, p)
                new_p = p * shrink if decay else p
                new_m = torch.lerp(m, grad, 1 - self.beta1)
                new_v = (v * self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
                new_p = new_p - new_m / (new_v.sqrt() / per_run(correction2, p)).add_(self.eps) * per_run(step_size, p)
                p.copy_(torch.where(keep, new_p, p))
                m.copy_(torch.where(keep, new_m, m))
                v.copy_(torch.where(keep, new_v, v))

    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.exp_avg.values(), *self.exp_avg_sq.values(), self.steps]

    def slice_state(self, index: int) -> dict:
        # copies, also on a CPU (where .cpu() would be a view): a snapshot is written while training goes on
        return {"exp_avg": {n: t[index].to("cpu", copy=True) for n, t in self.exp_avg.items()},
                "exp_avg_sq": {n: t[index].to("cpu", copy=True) for n, t in self.exp_avg_sq.items()},
                "step": float(self.steps[index])}

    @torch.no_grad()
    def load_slice(self, index: int, state: dict) -> None:
        for name in self.exp_avg:
            self.exp_avg[name][index].copy_(state["exp_avg"][name])
            self.exp_avg_sq[name][index].copy_(state["exp_avg_sq"][name])
        self.steps[index] = state["step"]


class LossScaler:
    """fp16 dynamic loss scaling with one scale per run: `torch.amp.GradScaler`'s rule (start 2^16, halve on an
    overflow and skip that update, double after 2,000 clean updates), kept per run so that an overflow in one run
    skips that run's update only. Disabled (scale 1, nothing skipped) in fp32 and bf16."""

    INIT, GROWTH, BACKOFF, INTERVAL = 2.0 ** 16, 2.0, 0.5, 2000

    def __init__(self, k: int, device: torch.device, enabled: bool):
        self.enabled = enabled
        self.scale = torch.full((k,), self.INIT if enabled else 1.0, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros(k, dtype=torch.int32, device=device)

    def inverse(self) -> torch.Tensor:
        return self.scale.double().reciprocal().float()  # as GradScaler.unscale_

    @torch.no_grad()
    def update(self, ok: torch.Tensor) -> None:
        tracker = torch.where(ok, self.growth_tracker + 1, torch.zeros_like(self.growth_tracker))
        grow = tracker == self.INTERVAL
        self.scale.copy_(torch.where(ok, torch.where(grow, self.scale * self.GROWTH, self.scale),
                                     self.scale * self.BACKOFF))
        self.growth_tracker.copy_(torch.where(grow, torch.zeros_like(tracker), tracker))

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.scale, self.growth_tracker]


# ---- one update of a whole stack -------------------------------------------------------------------------

def fused_by_default(device: torch.device) -> bool:
    """One forward for the whole stack on a GPU, where a step is bound by kernel launches; run after run on a CPU,
    where it is bound by arithmetic and memory: there a stack's large activations fall out of cache (a fused stack
    of 21 paper models cost 2.3x a lone run per run-step on our Xeon), and run by run costs what lone runs cost."""
    return device.type == "cuda"


class StackStep:
    """One update of every run of a stack: (uint8 batch [K, B, W] on the device, lr) -> (loss [K], grad norm [K]),
    both left on the device. Per run, as a lone run would: its own loss, fp16 loss scale and skipped update, and
    global-norm clipping over its own parameters only. The loop and the throughput benchmark both time exactly
    this.

    Forward and backward run `fused` (all K runs in one pass, batches padded to the stack's widest mixture) or run
    by run (each run's slices of the stacked weights, its batch cut to its own mixture's width `widths[k]`: the
    computation of a lone run, op for op). Clipping and AdamW then update the whole stack at once either way.

    With `cuda_graphs` on a CUDA device (fused) the first call captures the whole update (forward, backward,
    unscaling, clipping, optimizer) into one CUDA graph after three warm-up updates that are then undone, and every
    later call copies the batch into the graph's input and replays it. If capture fails the step stays eager.

    `span(name)` wraps each part of the update (set_lr, zero_grad, forward, backward, unscale_clip, adamw,
    scaler_update, each named `step.{part}`) in a context: `torch.profiler.record_function` for
    benchmarks/profile_training.py, nothing otherwise."""

    WARMUP = 3

    def __init__(self, stack, recipe: Recipe, device: torch.device, cuda_graphs: bool = False, log=None,
                 fused: bool | None = None, widths: list[int] | None = None, span=None):
        self.stack, self.recipe, self.device, self.log = stack, recipe, device, log
        self.named = list(stack.named_parameters())
        self.parameters = [p for _, p in self.named]
        self.optimizer = StackedAdamW(self.named, stack.k, recipe, device)
        self.scaler = LossScaler(stack.k, device, enabled=recipe.precision == "fp16")
        self.lr = torch.zeros((), dtype=torch.float64, device=device)
        self.forward = torch.compile(stacked_token_losses) if recipe.compile else stacked_token_losses
        self.fused = fused_by_default(device) if fused is None else fused
        self.widths = widths
        self.use_graph = cuda_graphs and device.type == "cuda" and self.fused
        self.graph = None
        self.span = span or (lambda name: nullcontext())

    def backward(self, batch: torch.Tensor) -> torch.Tensor:
        """Each run's loss [K], its scaled gradient left in the stacked parameters' `.grad`."""
        if self.fused:
            with self.span("step.zero_grad"):
                for p in self.parameters:
                    p.grad = None
            with self.span("step.forward"), autocast(self.device, self.recipe.precision, cache=False):
                losses = self.forward(self.stack, batch.long())
            with self.span("step.backward"):  # each run's weights get their own run's gradient only
                (losses * self.scaler.scale).sum().backward()
            return losses.detach()
        losses = []
        for k in range(self.stack.k):
            own = {name: p.detach()[k:k + 1].requires_grad_() for name, p in self.named}  # views, no copies
            width = batch.shape[2] if self.widths is None else self.widths[k]
            with self.span("step.forward"), autocast(self.device, self.recipe.precision, cache=False):
                loss = self.forward(self.stack, batch[k:k + 1, :, :width].long(), own)
            with self.span("step.backward"):
                (loss * self.scaler.scale[k:k + 1]).sum().backward()
                for name, p in self.named:
                    if p.grad is None:
                        p.grad = torch.empty_like(p)
                    p.grad[k].copy_(own[name].grad[0])
            losses.append(loss.detach())
        return torch.cat(losses)

    def compute(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses = self.backward(batch)
        grads = [p.grad for p in self.parameters]
        with torch.no_grad():
            with self.span("step.unscale_clip"):
                if self.scaler.enabled:
                    inverse = self.scaler.inverse()
                    for g in grads:
                        g.mul_(per_run(inverse, g))
                norms = torch.stack([torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1) for g in grads], dim=1)
                total = torch.linalg.vector_norm(norms, dim=1)  # each run's global norm, as clip_grad_norm_
                clip = (self.recipe.grad_clip / (total + 1e-6)).clamp(max=1.0)
                for g in grads:
                    g.mul_(per_run(clip, g))
                # An overflow anywhere in a run's gradients makes its norm inf or nan: GradScaler's found_inf.
                ok = torch.isfinite(total) if self.scaler.enabled else None
            with self.span("step.adamw"):
                self.optimizer.step(self.lr, ok)
            with self.span("step.scaler_update"):
                if ok is not None:
                    self.scaler.update(ok)
        return losses, total

    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.parameters, *self.optimizer.state_tensors(), *self.scaler.state_tensors()]

    def __call__(self, batch: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        with self.span("step.set_lr"):
            self.lr.fill_(lr)
        if self.use_graph and self.graph is None:
            self.capture(batch)
        if self.graph is None:
            return self.compute(batch)
        self.static_batch.copy_(batch)
        self.graph.replay()
        return self.static_out

    def capture(self, batch: torch.Tensor) -> None:
        self.use_graph = False  # one attempt
        saved = [t.detach().clone() for t in self.state_tensors()]
        try:
            self.static_batch = batch.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on a side stream, as torch's whole-network capture recipe
                for _ in range(self.WARMUP):
                    self.compute(self.static_batch)
            torch.cuda.current_stream().wait_stream(side)
            self.restore(saved)  # the warm-up updates are undone: the run starts from its true state
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_out = self.compute(self.static_batch)
            self.graph = graph
            if self.log is not None:
                print("CUDA graph captured: every update is one replay", file=self.log, flush=True)
        except Exception as error:  # noqa: BLE001 - any capture failure falls back to the eager step
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            for p in self.parameters:  # gradients from a broken capture belong to its memory pool
                p.grad = None
            self.restore(saved)
            self.graph = None
            if self.log is not None:
                print(f"CUDA graph capture failed ({type(error).__name__}: {error}); training eagerly",
                      file=self.log, flush=True)

    @torch.no_grad()
    def restore(self, saved: list[torch.Tensor]) -> None:
        for tensor, value in zip(self.state_tensors(), saved):
            tensor.copy_(value)


# ---- the runs of a stack and their data --------------------------------------------------------------------

@dataclass
class Validation:
    """The mixture's validation split (§7.2: loss and greedy metric per task, on the whole split)."""
    tokens: np.ndarray
    task: np.ndarray          # index into task_names
    answers: np.ndarray
    task_names: list[str]
    batch_size: int = 1024


@dataclass
class StackRun:
    """One run of a stack: its own data (train tokens, validation split), seed (init is the caller's, data order
    here), work directory (resume state, logs, checkpoints) and checkpoint writer `save_checkpoint(hf_model,
    step)`, which gets a Hugging Face model holding this run's weights."""
    name: str
    seed: int
    train_tokens: np.ndarray
    validation: Validation
    work: Path
    fingerprint: str
    save_checkpoint: Callable


class StackData:
    """The runs' token matrices on the device once (runs that share a mixture share its matrix), padded to the
    stack's widest mixture, with one all-pad row after each; a batch is one gather of [K, B] row indices. A run
    whose epoch is shorter than the stack's steps per epoch × B is filled up with the all-pad row, so every
    batch has the static shape [K, B, W] (all-pad rows add no loss target)."""

    def __init__(self, runs: list[StackRun], batch_size: int, device: torch.device):
        self.batch_size, self.device = batch_size, device
        self.seeds = [run.seed for run in runs]
        self.sizes = [len(run.train_tokens) for run in runs]
        self.widths = [run.train_tokens.shape[1] for run in runs]  # each run's own mixture width
        matrices, index = [], []
        for run in runs:
            found = next((i for i, m in enumerate(matrices) if m is run.train_tokens), None)
            if found is None:
                matrices.append(run.train_tokens)
                found = len(matrices) - 1
            index.append(found)
        self.pad_row = max(len(m) for m in matrices)
        width = max(m.shape[1] for m in matrices)
        tokens = np.full((len(matrices), self.pad_row + 1, width), PAD_ID, dtype=np.uint8)
        for i, m in enumerate(matrices):
            tokens[i, :len(m), :m.shape[1]] = m
        self.tokens = torch.from_numpy(tokens).to(device)  # uint8 keeps a 7M-item mixture under 0.5 GB
        self.matrix = torch.tensor(index, device=device).view(-1, 1)
        spe = {run.name: steps_per_epoch(len(run.train_tokens), batch_size) for run in runs}
        if len(set(spe.values())) > 1:
            raise ValueError(f"a stack's runs must have the same steps per epoch; got {spe}")
        self.steps_per_epoch = next(iter(spe.values()))
        self.order, self.order_epoch = None, -1

    def batch(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self.order_epoch:
            span = self.steps_per_epoch * self.batch_size
            order = np.full((len(self.seeds), span), self.pad_row, dtype=np.int64)
            for k, (seed, n) in enumerate(zip(self.seeds, self.sizes)):
                order[k, :n] = epoch_order(seed, epoch, n)
            self.order, self.order_epoch = torch.from_numpy(order).to(self.device), epoch
        rows = self.order[:, position * self.batch_size:(position + 1) * self.batch_size]
        return self.tokens[self.matrix, rows]


def stack_memory_bytes(settings, k: int, batch_size: int, width: int, token_bytes: int, fused: bool = True) -> int:
    """An upper estimate of a stack's training memory on its device: per run, fp32 weights, gradients and two
    AdamW moments; the activations autograd keeps for one step of B sequences of `width` tokens (per layer and
    token ~ 9 hidden-size and 4 intermediate-size fp32 vectors plus the attention row; the logits three times),
    for every run at once when `fused`, else for one; and the token matrices. Used to refuse a stack that cannot
    fit before any training."""
    h, i, layers = settings.hidden_size, settings.intermediate_size, settings.num_hidden_layers
    heads, vocab = settings.num_attention_heads, settings.vocab_size
    kv = settings.num_key_value_heads * (h // heads)
    params = vocab * h * 2 + h + layers * (2 * h + h * h + h + 2 * (kv * h + kv) + h * h + 3 * h * i)
    tokens = batch_size * width
    activations = tokens * (layers * (9 * h + 4 * i + heads * width) + 3 * vocab) * 4
    return k * 16 * params + (k if fused else 1) * activations + token_bytes


def available_memory(device: torch.device) -> int:
    """Free memory of the device: CUDA's free bytes, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) * 1024


def check_memory(name: str, stack, data: StackData, device: torch.device, available: int | None = None,
                 fused: bool = True) -> None:
    """Fail before training, naming the stack, its size and the memory it needs, when it cannot fit."""
    need = stack_memory_bytes(stack.settings, stack.k, data.batch_size, data.tokens.shape[2],
                              data.tokens.numel(), fused)
    have = available_memory(device) if available is None else available
    if need > have:
        raise MemoryError(f"stack {name} ({stack.k} runs) needs about {need / 2**30:.2f} GiB on {device}, "
                          f"but only {have / 2**30:.2f} GiB is free: use a smaller stack (training.stack: mixture) "
                          "or a larger device")


# ---- the loop ----------------------------------------------------------------------------------------

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


def train_stack(stack, runs: list[StackRun], recipe: Recipe, device: torch.device, log=None,
                stop_after: int | None = None, cuda_graphs: bool = False, name: str = "stack",
                fused: bool | None = None) -> dict:
    """Train every run of `stack` (slice k is `runs[k]`) in place to the recipe's last step, resuming when every
    run's work directory holds a state of that run at one common step. Returns the summary every run shares
    (step counts) for the runs' metadata. `stop_after` ends the loop early (tests of resume); `fused` overrides
    the device's way of computing a stack (`StackStep`)."""
    if stack.k != len(runs):
        raise ValueError(f"stack {name} holds {stack.k} models for {len(runs)} runs")
    for run in runs:
        run.work.mkdir(parents=True, exist_ok=True)
    data = StackData(runs, recipe.batch_size, device)
    fused = fused_by_default(device) if fused is None else fused
    check_memory(name, stack, data, device, fused=fused)
    total = recipe.epochs * data.steps_per_epoch
    checkpoints = set(checkpoint_steps(total, recipe.checkpoint_fraction))
    validate_every = every(total, recipe.validation_fraction)

    stack.to(device).train()
    step_fn = StackStep(stack, recipe, device, cuda_graphs, log, fused=fused, widths=data.widths)
    window = torch.zeros(len(runs), 2, dtype=torch.float64, device=device)  # (sum of losses, updates) per run
    start = load_states(runs, stack, step_fn, window, device, log)
    if start is None:  # nothing of another configuration (old checkpoints, logs) may reach these runs' outputs
        for run in runs:
            shutil.rmtree(run.work)
            run.work.mkdir(parents=True)
    logs = [(CsvLog(run.work / "training_log.csv", TRAINING_LOG_FIELDS, start),
             CsvLog(run.work / "validation_log.csv", VALIDATION_LOG_FIELDS, start)) for run in runs]
    resumed, start = start is not None, start or 0
    view = stack.hf_model(0).eval()  # one Hugging Face model that each run's weights pass through in turn
    writer = BackgroundWriter(stack)

    def each_run(action):
        for k, run in enumerate(runs):
            stack.export(k, view)
            action(k, run)

    progress = tqdm(total=total, initial=start, desc=f"train {name} ({len(runs)} runs)", unit="step", file=log,
                    mininterval=10, smoothing=0.05)
    last = total if stop_after is None else min(total, stop_after)
    began = time.perf_counter()
    for step in range(start, last + 1):
        # A resume state is saved after its step's validation rows, which the logs therefore already hold.
        if (step % validate_every == 0 or step == total) and not (resumed and step == start):
            if fused:  # all runs in one pass, as they train
                for k, rows in enumerate(stacked_validation(stack, [run.validation for run in runs],
                                                            recipe.precision, device)):
                    for row in rows:
                        logs[k][1].write({"step": step, **row})
            else:
                each_run(lambda k, run: write_validation(view, run.validation, recipe.precision, device, step,
                                                         logs[k][1]))
        if (step in checkpoints and step != start) or step == 0:
            for k, run in enumerate(runs):  # copies taken now, written while training goes on
                writer.checkpoint(run, k, step)
            if step != 0:  # queued after the step's checkpoints: a state never outlives a missing checkpoint
                for k, run in enumerate(runs):
                    writer.submit(write_state, run, state_snapshot(run, k, step, stack, step_fn, window))
        if step == last:
            break
        lr = learning_rate(step, recipe.peak_lr, recipe.warmup_steps, total)
        losses, grad_norms = step_fn(data.batch(step), lr)
        window += torch.stack([losses.double(), torch.ones_like(window[:, 1])], dim=1)
        done = step + 1
        if done % recipe.log_every == 0 or done == total:
            sums = window.tolist()  # the only host sync of the loop, every log_every steps
            norms = grad_norms.tolist()
            for k, (loss_sum, count) in enumerate(sums):
                logs[k][0].write({"step": done, "epoch": f"{done / data.steps_per_epoch:.4f}",
                                  "loss": f"{loss_sum / count:.6f}", "lr": f"{lr:.6e}",
                                  "grad_norm": f"{norms[k]:.6f}"})
            window.zero_()
        progress.update()
    progress.close()
    writer.close()
    for training_log, validation_log in logs:
        training_log.close()
        validation_log.close()
    elapsed = time.perf_counter() - began
    steps_run = last - start
    if log is not None:
        print(f"{steps_run} steps of {len(runs)} runs in {elapsed:.1f} s ({1000 * elapsed / max(1, steps_run):.2f} "
              f"ms/step, {1000 * elapsed / max(1, steps_run * len(runs)):.2f} ms/run-step)", file=log, flush=True)
    return {"total_steps": total, "steps_per_epoch": data.steps_per_epoch, "checkpoint_steps": sorted(checkpoints),
            "validation_every": validate_every, "stack": name, "stack_runs": [run.name for run in runs],
            "stack_fused": fused}


def train(model, train_tokens: np.ndarray, validation: Validation, recipe: Recipe, seed: int,
          device: torch.device, work: Path, run_fingerprint: str, save_checkpoint, log=None,
          stop_after: int | None = None, cuda_graphs: bool = False) -> dict:
    """Train one Hugging Face `Qwen2ForCausalLM` in place: a stack of one (`train_stack`), its final weights
    copied back into `model`. `save_checkpoint(model, step)` writes a Hugging Face checkpoint (or nothing)."""
    from .stack import from_hf_models

    stack = from_hf_models([model])
    run = StackRun("run", seed, train_tokens, validation, work, run_fingerprint, save_checkpoint)
    summary = train_stack(stack, [run], recipe, device, log, stop_after, cuda_graphs, name=work.name)
    model.to(device)
    stack.export(0, model)
    return {**summary, "n_train": len(train_tokens)}


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
        validation_log.write({"step": step, **validation_row(task, torch.cat(losses), values, failed)})
    model.train()


def validation_row(task: str, losses: torch.Tensor, values: np.ndarray, failed: np.ndarray) -> dict:
    """One task's row of the validation log: mean item loss (fp32, as summed on the device) and greedy metric."""
    summary = summarize(task, values, failed)
    return {"task": task, "n": summary["n"], "loss": f"{float(losses.float().mean()):.6f}",
            "metric": summary["metric"], "value": f"{summary['value']:.6f}", "failures": summary["failures"]}


@torch.no_grad()
def stacked_validation(stack, validations: list[Validation], precision: str, device: torch.device) -> list[list[dict]]:
    """`write_validation`'s rows (without the step) of every run of a stack at once: each batch holds batch_size
    val items of every run (its items in task order, all-pad rows once a run has none left), one fused forward
    gives their losses and one `stacked_greedy_generate` their answers, each row to its own task's limit. What a
    fused training step is to a lone one, this is to `write_validation`: the same per-run numbers up to float
    rounding (tests/test_stack.py). Used where the stack trains fused (`fused_by_default`: a GPU)."""
    k, batch = len(validations), validations[0].batch_size
    orders = [np.argsort(v.task, kind="stable") for v in validations]
    width = max(v.tokens.shape[1] for v in validations)
    losses = [torch.empty(len(order)) for order in orders]
    texts = [[] for _ in validations]
    was_training = stack.training
    stack.eval()
    for start in range(0, max(len(order) for order in orders), batch):
        tokens = np.full((k, batch, width), PAD_ID, dtype=np.int64)
        prompts = np.full_like(tokens, PAD_ID)
        limits = np.zeros((k, batch), dtype=np.int64)
        counts = []
        for i, (validation, order) in enumerate(zip(validations, orders)):
            rows = order[start:start + batch]
            counts.append(len(rows))
            if len(rows):
                tokens[i, :len(rows), :validation.tokens.shape[1]] = validation.tokens[rows]
                cut = prompt_tokens(validation.tokens[rows])
                prompts[i, :len(rows), :cut.shape[1]] = cut
                limits[i, :len(rows)] = [max_new_tokens(validation.task_names[t]) for t in validation.task[rows]]
        ids = torch.from_numpy(tokens).to(device)
        with autocast(device, precision):
            logits = stack(ids[:, :, :-1]).float()
        targets = ids[:, :, 1:]
        item = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID,
                               reduction="none").view(targets.shape)
        mask = targets != PAD_ID
        item = ((item * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).cpu()
        new = stacked_greedy_generate(stack, torch.from_numpy(prompts).to(device), torch.from_numpy(limits).to(device),
                                      precision).cpu().numpy()
        for i, n in enumerate(counts):
            losses[i][start:start + n] = item[i, :n]
            texts[i] += decode_text(np.concatenate([prompts[i, :n], new[i, :n]], axis=1))
    stack.train(was_training)
    out = []
    for validation, order, run_losses, run_texts in zip(validations, orders, losses, texts):
        tasks = validation.task[order]
        rows = []
        for index in np.unique(tasks):
            mine = np.flatnonzero(tasks == index)
            task = validation.task_names[index]
            values, failed = score_items(task, [run_texts[i] for i in mine], validation.answers[order[mine]])
            rows.append(validation_row(task, run_losses[mine], values, failed))
        out.append(rows)
    return out


# ---- resume state --------------------------------------------------------------------------------------

class BackgroundWriter:
    """Checkpoints and resume states written on one background thread, in the order queued, from CPU copies taken at
    their step, so that training goes on while they are written (a checkpoint of a paper model takes ~0.2 s; on a GPU
    a stack step takes a few ms). `checkpoint` copies a run's weights off the device at once; the thread loads them
    into its own Hugging Face model (made here, its init drawing from a forked RNG) and calls the run's
    `save_checkpoint`. `close` waits for every write; a failed write raises there or at the next `submit`."""

    def __init__(self, stack):
        from concurrent.futures import ThreadPoolExecutor

        self.pool, self.pending = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer"), []
        with torch.random.fork_rng(devices=[]):
            self.model = build_model(stack.settings, 0).eval()
        self.stack = stack

    def submit(self, fn, *args) -> None:
        for future in [f for f in self.pending if f.done()]:
            future.result()  # a failed write stops training here
            self.pending.remove(future)
        self.pending.append(self.pool.submit(fn, *args))

    def checkpoint(self, run: StackRun, index: int, step: int) -> None:
        weights = {name: t.detach().to("cpu", copy=True) for name, t in self.stack.slice_state_dict(index).items()}

        def write():
            with torch.no_grad():
                self.model.load_state_dict(weights, strict=False)
            run.save_checkpoint(self.model, step)

        self.submit(write)

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending = []
            self.pool.shutdown()


def write_state(run: StackRun, state: dict) -> None:
    partial = run.work / (STATE_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, run.work / STATE_FILE)  # a kill during the save leaves the previous state intact


def state_snapshot(run: StackRun, index: int, step: int, stack, step_fn: StackStep, window: torch.Tensor) -> dict:
    """Run `index`'s resume state, copied off the device: its weights, AdamW moments and step count, loss scale,
    log window and the RNG, all of its own slice, so it never depends on the other runs of the stack."""
    return {
        "fingerprint": run.fingerprint, "step": step,
        "model": {name: tensor.cpu().clone() for name, tensor in stack.slice_state_dict(index).items()},
        "optimizer": step_fn.optimizer.slice_state(index),
        "scaler": {"scale": float(step_fn.scaler.scale[index]),
                   "growth_tracker": int(step_fn.scaler.growth_tracker[index])},
        "window": window[index].cpu().clone(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def load_states(runs: list[StackRun], stack, step_fn: StackStep, window: torch.Tensor, device, log) -> int | None:
    """Restore every run's resume state; returns their common step, or None to start the stack from scratch
    (a run without a state of its own configuration, or states of different steps)."""
    states = []
    for run in runs:
        path = run.work / STATE_FILE
        # On the CPU first: RNG states must stay CPU tensors; copies into the stack move the rest to the device.
        state = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
        if state is not None and state["fingerprint"] != run.fingerprint:
            if log is not None:
                print(f"ignoring {path}: it belongs to another configuration of run {run.name}", file=log, flush=True)
            state = None
        states.append(state)
    steps = {state["step"] for state in states if state is not None}
    if not steps:
        return None
    if None in states or len(steps) > 1:
        if log is not None:
            have = {run.name: state and state["step"] for run, state in zip(runs, states)}
            print(f"not resuming: the runs' states are not all at one step ({have}); starting over",
                  file=log, flush=True)
        return None
    with torch.no_grad():
        for index, state in enumerate(states):
            stack.load_slice(index, state["model"])
            step_fn.optimizer.load_slice(index, state["optimizer"])
            step_fn.scaler.scale[index] = state["scaler"]["scale"]
            step_fn.scaler.growth_tracker[index] = state["scaler"]["growth_tracker"]
            window[index].copy_(state["window"].to(device))
    torch.set_rng_state(states[0]["rng"])
    if states[0]["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(states[0]["cuda_rng"])
    step = steps.pop()
    if log is not None:
        print(f"resuming {len(runs)} run(s) from step {step}", file=log, flush=True)
    return step


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
