"""What a CUDA graph of the training step needs, guarded on the CPU. `StackStep.capture` records
one `StackStep.compute` (forward, backward, unscaling, clipping, AdamW, loss-scale update) and every later update
replays it, so that region must:

(a) never wait for the device: no op that copies a value to the host (`.item()`, `bool(t)`, `nonzero`, ...); in a
    capture it raises, and eagerly it stalls the launch queue once per step;
(b) update its state in place: a replay writes to the addresses captured, so a state tensor that is rebound to a
    new tensor (`self.steps = self.steps + 1`) silently stops being trained;
(c) create no tensor off the step's device: a stray CPU tensor is a host-to-device copy in every step, and an error
    inside a capture. Run on the `meta` device, any op that touches another device shows.

Each guard is shown to catch what it guards against on a step with that fault planted.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.test_stack import GQA, TINY, padded_ids
from worldrep import training
from worldrep.model import build_model
from worldrep.stack import StackedQwen2, from_hf_models
from worldrep.training import Recipe, StackStep

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# aten ops that read a tensor's value on the host: `.item()` and `bool(t)` end in _local_scalar_dense; the others
# have an output size that depends on values.
HOST_SYNC_OPS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "masked_select", "equal",
                 "allclose", "unique", "_unique2", "repeat_interleave", "index (boolean mask)"}


class Dispatched(TorchDispatchMode):
    """Every aten op dispatched inside the mode (below autograd: backward kernels too) and the devices of every
    tensor they took or returned. The mode sees the ops Python code dispatches, not those a kernel calls inside
    itself: indexing with a boolean mask runs `nonzero` inside `index`, so such an `index` is recorded as
    "index (boolean mask)"."""

    def __init__(self):
        super().__init__()
        self.ops, self.devices = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if name in ("index", "index_put", "index_put_") and any(t.dtype == torch.bool for t in tensors[1:]):
            name = "index (boolean mask)"
        self.ops.append(name)
        self.devices |= {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        return out


def cpu_step(settings, precision: str, step_class=StackStep) -> StackStep:
    stack = from_hf_models([build_model(settings, seed) for seed in range(2)])
    return step_class(stack, Recipe(peak_lr=1e-3, epochs=1, precision=precision), torch.device("cpu"), fused=True)


def batch() -> torch.Tensor:
    return padded_ids(2, 4, 9).to(torch.uint8)  # the trainer's batches are uint8 [K, B, W]


def host_syncs(step: StackStep) -> set[str]:
    """The host-sync ops of one captured region (what `capture` records: `compute`)."""
    ids = batch()  # made outside the recorded region (its padding is a boolean-mask assignment)
    with Dispatched() as seen:
        step.compute(ids)
    return set(seen.ops) & HOST_SYNC_OPS


def moved_state(step: StackStep, updates: int = 3) -> list[int]:
    """Indices of the state tensors (and the lr) whose storage changed over a few updates through `__call__`."""
    state = lambda: [*step.state_tensors(), step.lr]  # noqa: E731
    before = state()  # held, so that no new tensor can be given a freed tensor's address
    pointers = [t.data_ptr() for t in before]
    for update in range(updates):
        step(batch(), 1e-3 * (update + 1))
    return [i for i, (a, t) in enumerate(zip(pointers, state())) if t.data_ptr() != a]


class PlantedItem(StackStep):
    def compute(self, batch):
        losses, norms = super().compute(batch)
        if losses.sum().item() > 1e9:  # a log line guarded by a host-side check
            print("large loss")
        return losses, norms


class PlantedBooleanIndex(StackStep):
    def compute(self, batch):
        losses, norms = super().compute(batch)
        return losses + losses[losses > 1e9].sum(), norms  # "the runs that diverged": a value-dependent shape


class PlantedRebind(StackStep):
    def compute(self, batch):
        out = super().compute(batch)
        self.optimizer.steps = self.optimizer.steps.clone()  # rebinds a state tensor to new memory
        return out


class PlantedCpuTensor(StackStep):
    def compute(self, batch):
        losses, norms = super().compute(batch)
        return losses * torch.ones(len(losses)), norms  # a tensor made on the CPU, whatever the step's device


@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # fp16: the per-run loss scale and skipped updates too
@pytest.mark.parametrize("settings", [TINY, GQA], ids=["mha", "gqa"])
def test_the_captured_step_never_syncs_with_the_host(settings, precision):
    assert host_syncs(cpu_step(settings, precision)) == set()
    assert host_syncs(cpu_step(settings, precision, PlantedItem)) == {"_local_scalar_dense"}
    assert host_syncs(cpu_step(settings, precision, PlantedBooleanIndex)) == {"index (boolean mask)"}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_state_tensor_keeps_its_storage_across_updates(precision):
    step = cpu_step(TINY, precision)
    assert len(step.state_tensors()) > len(step.parameters) + 2  # parameters, moments, steps, scale, tracker
    assert moved_state(step) == []
    planted = cpu_step(TINY, precision, PlantedRebind)
    steps_index = next(i for i, t in enumerate(planted.state_tensors()) if t is planted.optimizer.steps)
    assert moved_state(planted) == [steps_index]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_update_runs_on_the_meta_device(precision, monkeypatch):
    """The whole update on `meta`: every op's tensors are meta tensors. Autocast has no meta backend, so its
    contexts become no-ops here (they make no tensors); the fp16 path still runs its loss scaling."""
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    monkeypatch.setattr(training, "autocast", lambda *args, **kwargs: contextlib.nullcontext())

    def meta_step(step_class=StackStep):
        with torch.device("meta"):
            stack = StackedQwen2(TINY, 2)
        return step_class(stack, Recipe(peak_lr=1e-3, epochs=1, precision=precision), torch.device("meta"),
                          fused=True)

    with Dispatched() as seen:
        losses, norms = meta_step().compute(torch.zeros(2, 4, 9, dtype=torch.uint8, device="meta"))
    assert seen.devices == {"meta"} and len(seen.ops) > 100
    assert losses.device.type == norms.device.type == "meta"
    with Dispatched() as planted, contextlib.suppress(RuntimeError):  # mixing devices may also raise: caught too
        meta_step(PlantedCpuTensor).compute(torch.zeros(2, 4, 9, dtype=torch.uint8, device="meta"))
    assert "cpu" in planted.devices
