"""Stacked training (METHOD §7.1): K Qwen2 models as one stacked model, trained by one step, each run exactly as if
alone. The stack against Hugging Face's own model (logits, loss), the per-run optimizer against torch's AdamW and
GradScaler, and the invariant itself: a run's weights do not depend on the runs that share its stack."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_training import toy_tokens, toy_validation
from worldrep.model import ModelSettings, build_model
from worldrep.stack import StackedQwen2, from_hf_models, stacked_token_losses
from worldrep.tokenizer import PAD_ID
from worldrep.training import (LossScaler, Recipe, StackData, StackedAdamW, StackRun, StackStep, check_memory,
                               decays, token_loss, train_stack)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
TINY = ModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                     intermediate_size=64)
GQA = ModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=48)


def padded_ids(k: int, batch: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random ids [K, B, W] with right padding of random length and one all-pad row per model."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 98, (k, batch, width), generator=g)
    lengths = torch.randint(2, width + 1, (k, batch), generator=g)
    ids[torch.arange(width) >= lengths[..., None]] = PAD_ID
    ids[:, -1] = PAD_ID
    return ids


# ---- the stacked model against Hugging Face -------------------------------------------------------------

@pytest.mark.parametrize("settings, k, batch, width", [
    (ModelSettings(), 1, 4, 17), (ModelSettings(), 3, 5, 23), (TINY, 2, 1, 9), (GQA, 4, 3, 12)])
def test_each_slice_has_hugging_face_logits(settings, k, batch, width):
    """Same weights: slice k's logits are HF's logits of model k to <= 1e-5 in fp32, padded rows included."""
    models = [build_model(settings, seed).eval() for seed in range(k)]
    stack = from_hf_models(models).eval()
    ids = padded_ids(k, batch, width)
    with torch.no_grad():
        logits = stack(ids)
        for index, model in enumerate(models):
            reference = model(input_ids=ids[index]).logits
            assert logits[index].shape == reference.shape
            assert float((logits[index] - reference).abs().max()) <= 1e-5


def test_slices_convert_exactly_to_and_from_hugging_face_state_dicts():
    models = [build_model(TINY, seed) for seed in (3, 4)]
    stack = from_hf_models(models)
    for index, model in enumerate(models):
        own = model.state_dict()
        got = stack.slice_state_dict(index)
        assert set(got) == set(own) - {k for k in own if "rotary" in k}
        assert all(torch.equal(got[name], own[name]) for name in got)
    exported = build_model(TINY, 99)
    stack.export(1, exported)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), models[1].state_dict().values()))
    fresh = StackedQwen2(TINY, 2)
    fresh.load_slice(0, models[1].state_dict())
    assert all(torch.equal(fresh.slice_state_dict(0)[n], t) for n, t in stack.slice_state_dict(1).items())


def test_a_stack_refuses_models_of_two_architectures():
    with pytest.raises(ValueError, match="one architecture"):
        from_hf_models([build_model(TINY, 0), build_model(GQA, 0)])


def test_stacked_loss_is_each_runs_hugging_face_loss_and_ignores_all_pad_rows():
    """§7.1 per run: mean cross-entropy over the run's non-pad targets. All-pad rows (the static-shape padding of
    a last partial batch) add no target: the loss with them is the loss without, to float rounding (the sum runs
    over more zeros). Bit for bit does not matter there: a run's last batch has that padding alone or stacked."""
    models = [build_model(TINY, seed) for seed in range(3)]
    stack = from_hf_models(models)
    ids = padded_ids(3, 6, 15, seed=1)
    ids[:, -1] = ids[:, 0]  # no all-pad row in this batch
    padded = torch.cat([ids, torch.full((3, 4, 15), PAD_ID)], dim=1)
    with torch.no_grad():
        losses = stacked_token_losses(stack, ids)
        assert torch.allclose(stacked_token_losses(stack, padded), losses, rtol=1e-6, atol=0)
        for index, model in enumerate(models):
            assert float(losses[index]) == pytest.approx(float(token_loss(model, ids[index])), rel=1e-6)


# ---- per-run optimizer, clipping and loss scaling --------------------------------------------------------

def test_stacked_adamw_takes_torchs_adamw_steps():
    """A stack of one updated by `StackedAdamW` equals torch's AdamW (HF decay groups) given the same gradients,
    step after step, to float rounding (a few ulps: torch divides by its Python-scalar bias correction as a
    multiplication by the reciprocal, ours divides by a per-run tensor)."""
    model = build_model(TINY, 0)
    stack = from_hf_models([model])
    recipe = Recipe(peak_lr=1e-2, epochs=1)
    groups = [{"params": [p for n, p in model.named_parameters() if decays(p)], "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if not decays(p)], "weight_decay": 0.0}]
    reference = torch.optim.AdamW(groups, lr=1e-2, betas=recipe.betas, eps=recipe.eps)
    ours = StackedAdamW(stack.named_parameters(), 1, recipe, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        lr = 1e-2 * (step + 1) / 5
        for group in reference.param_groups:
            group["lr"] = lr
        for (name, p), (_, q) in zip(model.named_parameters(), stack.named_parameters()):
            p.grad = torch.randn(p.shape, generator=generator) * 10 ** (step - 3)
            q.grad = p.grad[None].clone()
        reference.step()
        ours.step(torch.tensor(lr, dtype=torch.float64))
        for p, q in zip(model.parameters(), stack.parameters()):
            torch.testing.assert_close(q.detach()[0], p.detach(), rtol=3e-7, atol=1e-8)


def test_loss_scaler_follows_grad_scaler_per_run():
    """GradScaler's rule per run (halve on an overflow, double after `INTERVAL` clean updates in a row), against
    the very op `torch.amp.GradScaler.update` calls, run by run."""
    reference = torch.amp.GradScaler("cpu")
    scaler = LossScaler(2, torch.device("cpu"), enabled=True)
    assert (scaler.INIT, scaler.GROWTH, scaler.BACKOFF, scaler.INTERVAL) == (
        reference.get_scale(), reference.get_growth_factor(), reference.get_backoff_factor(),
        reference.get_growth_interval())
    scaler.INTERVAL = 3
    states = [(torch.full((1,), 2.0 ** 16), torch.zeros(1, dtype=torch.int32)) for _ in range(2)]
    sequence = ([True, False], [True, True], [True, True], [False, True], [True, True], [True, True], [True, False])
    for ok in sequence:
        scaler.update(torch.tensor(ok))
        for run, (scale, tracker) in enumerate(states):
            torch._amp_update_scale_(scale, tracker, torch.tensor([0.0 if ok[run] else 1.0]), 2.0, 0.5, 3)
        assert scaler.scale.tolist() == [float(scale) for scale, _ in states]
        assert scaler.growth_tracker.tolist() == [int(tracker) for _, tracker in states]
    assert len(set(scaler.scale.tolist())) == 2  # the runs' scales went their own ways


def test_clipping_is_per_run():
    """Each run's gradient norm and clipping use its own parameters only: beside a partner whose gradient norm is
    ~75x larger, a run logs the norm it has alone and takes the same step (both are clipped, each by its own
    norm; a global norm would shrink run 0's step 75 times more)."""
    recipe = Recipe(peak_lr=1e-2, epochs=1, grad_clip=1.0)
    batch = padded_ids(1, 4, 10, seed=3)
    alone = StackStep(from_hf_models([build_model(TINY, 0)]), recipe, torch.device("cpu"))
    paired = StackStep(from_hf_models([build_model(TINY, 0), build_model(TINY, 1)]), recipe, torch.device("cpu"))
    with torch.no_grad():  # the partner's weights scaled up: its gradients dwarf run 0's
        for p in paired.stack.parameters():
            p[1].mul_(30.0)
    _, norm_alone = alone(batch, 1e-3)
    losses, norms = paired(torch.cat([batch, padded_ids(1, 4, 10, seed=4)]), 1e-3)
    assert float(norms[1]) > 50 * float(norms[0]) > 50 * recipe.grad_clip
    assert torch.equal(norms[0], norm_alone[0])
    for a, b in zip(alone.stack.parameters(), paired.stack.parameters()):
        assert torch.equal(a[0], b[0])


def test_warm_up_before_a_cuda_graph_capture_is_undone():
    """Capture warms up with three real updates, then restores every state tensor (weights, AdamW moments and
    step counts, loss scales and growth trackers), so the run starts from its true state."""
    step = StackStep(from_hf_models([build_model(TINY, 0), build_model(TINY, 1)]),
                     Recipe(peak_lr=1e-2, epochs=1, precision="fp16"), torch.device("cpu"))
    before = [t.clone() for t in step.state_tensors()]
    saved = [t.detach().clone() for t in step.state_tensors()]
    for _ in range(StackStep.WARMUP):
        step(padded_ids(2, 4, 10, seed=5), 1e-2)
    assert not all(torch.equal(a, b) for a, b in zip(before, step.state_tensors()))
    step.restore(saved)
    assert all(torch.equal(a, b) for a, b in zip(before, step.state_tensors()))


def test_a_failed_cuda_graph_capture_trains_eagerly_and_says_so():
    """Where capture fails (here: no CUDA at all), the step logs why and the run trains exactly as eager."""
    import io

    recipe = Recipe(peak_lr=1e-2, epochs=1)
    log = io.StringIO()
    eager = StackStep(from_hf_models([build_model(TINY, 0)]), recipe, torch.device("cpu"))
    graphed = StackStep(from_hf_models([build_model(TINY, 0)]), recipe, torch.device("cpu"), log=log)
    graphed.use_graph = True  # what cuda_graphs=True sets on a CUDA device
    for seed in range(3):
        batch = padded_ids(1, 4, 10, seed=seed)
        assert torch.equal(eager(batch, 1e-3)[0], graphed(batch, 1e-3)[0])
    assert "CUDA graph capture failed" in log.getvalue() and graphed.graph is None
    assert all(torch.equal(a, b) for a, b in zip(eager.stack.parameters(), graphed.stack.parameters()))


# ---- the invariant ---------------------------------------------------------------------------------------

def train_runs(directory: Path, mixtures: list[np.ndarray], seeds: list[int], recipe: Recipe, settings=TINY,
               scales: dict[int, float] | None = None, fused: bool | None = None) -> tuple[StackedQwen2, StackStep]:
    """Train one stack of these runs; `scales` sets a run's starting fp16 loss scale (to force overflows)."""
    stack = from_hf_models([build_model(settings, seed) for seed in seeds])
    runs = [StackRun(f"r{i}", seed, tokens, toy_validation(), directory / f"r{i}", f"fp{i}", lambda m, s: None)
            for i, (seed, tokens) in enumerate(zip(seeds, mixtures))]
    steps = []
    original = StackStep.__init__

    def keep(self, *args, **kwargs):  # the step object, to read its optimizer and scaler afterwards
        original(self, *args, **kwargs)
        for index, scale in (scales or {}).items():
            self.scaler.scale[index] = scale
        steps.append(self)

    StackStep.__init__ = keep
    try:
        train_stack(stack, runs, recipe, torch.device("cpu"), fused=fused)
    finally:
        StackStep.__init__ = original
    return stack, steps[0]


def equal_widths(seed: int, n_items: int) -> np.ndarray:
    """A toy mixture 14 tokens wide (every toy mixture of one width computes at that width in a stack)."""
    tokens = toy_tokens(n_items, seed=seed)
    tokens[0, -1] = tokens[0, -1] or 30  # its widest row reaches the last column
    return tokens


INVARIANT = Recipe(peak_lr=3e-3, epochs=3, batch_size=16, warmup_steps=3, checkpoint_fraction=0.5,
                   validation_fraction=0.5)
# Three runs, three mixtures (sizes 170, 175, 176: the same 11 steps per epoch, last batches of 10, 15 and 16 items
# padded to 16 with all-pad rows), three seeds; 33 steps.
SEEDS = [5, 6, 7]


def assert_as_alone(tmp_path: Path, together: StackedQwen2, mixtures, recipe: Recipe, fused: bool | None,
                    scales: dict[int, float] | None = None, steps: StackStep | None = None) -> None:
    """Each run of `together` has, bit for bit, the weights (and AdamW step count) it gets as a stack of one."""
    for index in range(len(mixtures)):
        alone, lone_step = train_runs(tmp_path / f"alone{index}", mixtures[index:index + 1], SEEDS[index:index + 1],
                                      recipe, scales={0: scales[index]} if scales and index in scales else None,
                                      fused=fused)
        for name, weights in alone.slice_state_dict(0).items():
            assert torch.equal(weights, together.slice_state_dict(index)[name]), (index, name)
        if steps is not None:
            assert float(lone_step.optimizer.steps[0]) == float(steps.optimizer.steps[index])


def test_a_run_in_a_stack_of_three_ends_exactly_as_alone(tmp_path):
    """The CPU's way (run by run, each at its own width): three runs of three mixtures of different widths (14,
    20, 11 tokens) end bit for bit as alone, and log the same rows."""
    mixtures = [equal_widths(1, 170), toy_tokens(175, seed=2, width=20), toy_tokens(176, seed=3, width=11)]
    together, _ = train_runs(tmp_path / "stack", mixtures, SEEDS, INVARIANT)
    assert_as_alone(tmp_path, together, mixtures, INVARIANT, fused=None)
    logs = [(tmp_path / f"{where}/training_log.csv").read_bytes() for where in ("stack/r1", "alone1/r0")]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 1 + 4  # 33 steps, a row every 10 and the last


def test_a_run_in_a_fused_stack_of_one_width_ends_exactly_as_alone(tmp_path):
    """The GPU's way (all runs in one forward and backward), on the CPU: three mixtures of one width end bit for
    bit as alone."""
    mixtures = [equal_widths(1, 170), equal_widths(2, 175), equal_widths(3, 176)]
    together, _ = train_runs(tmp_path / "stack", mixtures, SEEDS, INVARIANT, fused=True)
    assert_as_alone(tmp_path, together, mixtures, INVARIANT, fused=True)


def test_padding_to_a_wider_partner_moves_a_fused_run_by_float_rounding_only(tmp_path):
    """Fused, a partner with wider items pads this run's batches to its width. That is the same math (pads come
    last, attention is causal, pad targets are ignored) but not the same float reductions, so the run moves by
    rounding: measured 33 steps on, far below the learning signal (the run by run way has no such gap)."""
    narrow, wide = equal_widths(1, 170), toy_tokens(175, seed=2, width=20)
    together, _ = train_runs(tmp_path / "stack", [narrow, wide], SEEDS[:2], INVARIANT, fused=True)
    alone, _ = train_runs(tmp_path / "alone", [narrow], SEEDS[:1], INVARIANT, fused=True)
    gap = max(float((w - together.slice_state_dict(0)[n]).abs().max()) for n, w in alone.slice_state_dict(0).items())
    moved = max(float((w - build_model(TINY, 5).state_dict()[n]).abs().max())
                for n, w in alone.slice_state_dict(0).items())
    assert 0 < gap <= 1e-4 and gap < 1e-3 * moved, (gap, moved)


@pytest.mark.parametrize("fused", [False, True], ids=["run by run", "fused"])
def test_an_fp16_overflow_skips_only_that_runs_update(tmp_path, fused):
    """fp16 on the CPU with a loss scale of 2^40 for run 1: its scaled gradients overflow fp16, so it skips
    updates (weights, moments and step count untouched) and halves its scale until they fit, exactly as it does
    alone with that scale; runs 0 and 2 never overflow and end exactly as alone."""
    recipe = Recipe(**{**vars(INVARIANT), "precision": "fp16"})
    mixtures = [equal_widths(1, 170), equal_widths(2, 175), equal_widths(3, 176)]
    together, step = train_runs(tmp_path / "stack", mixtures, SEEDS, recipe, scales={1: 2.0 ** 40}, fused=fused)
    skipped = 33 - step.optimizer.steps
    assert skipped[0] == 0 and skipped[2] == 0 and 0 < skipped[1] < 33
    assert float(step.scaler.scale[1]) == 2.0 ** 40 * 0.5 ** float(skipped[1])
    assert_as_alone(tmp_path, together, mixtures, recipe, fused=fused, scales={1: 2.0 ** 40}, steps=step)


def test_run_by_run_and_fused_steps_agree():
    """The two ways of computing a stack's update give the same losses, norms and weights (float rounding)."""
    recipe = Recipe(peak_lr=1e-2, epochs=1)
    batch = padded_ids(3, 6, 12, seed=7)
    ways = [StackStep(from_hf_models([build_model(TINY, s) for s in SEEDS]), recipe, torch.device("cpu"), fused=f)
            for f in (False, True)]
    (loss_a, norm_a), (loss_b, norm_b) = (way(batch, 1e-2) for way in ways)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    torch.testing.assert_close(norm_a, norm_b, rtol=1e-5, atol=0)
    for a, b in zip(ways[0].stack.parameters(), ways[1].stack.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_runs_of_different_step_counts_do_not_share_a_stack(tmp_path):
    runs = [StackRun(f"r{i}", i, toy_tokens(n), toy_validation(), tmp_path / f"r{i}", "x", None)
            for i, n in enumerate((32, 40))]
    with pytest.raises(ValueError, match=r"same steps per epoch.*'r0': 2, 'r1': 3"):
        StackData(runs, 16, torch.device("cpu"))


def test_a_stack_too_large_for_the_device_fails_before_training(tmp_path):
    runs = [StackRun(f"r{i}", i, toy_tokens(32), toy_validation(), tmp_path / f"r{i}", "x", None) for i in range(7)]
    stack = from_hf_models([build_model(TINY, i) for i in range(7)])
    data = StackData(runs, 16, torch.device("cpu"))
    check_memory("pt1", stack, data, torch.device("cpu"), available=2 ** 40)  # fits
    with pytest.raises(MemoryError, match=r"stack pt1 \(7 runs\) needs about 0\.\d\d GiB on cpu, but only 0\.00 GiB"):
        check_memory("pt1", stack, data, torch.device("cpu"), available=2 ** 20)


# ---- resume ----------------------------------------------------------------------------------------------

STACK_DRIVER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from tests.test_stack import TINY, equal_widths
    from tests.test_training import toy_validation
    from worldrep.model import build_model
    from worldrep.stack import from_hf_models
    from worldrep.training import Recipe, StackRun, train_stack
    torch.set_num_threads(1)
    recipe = Recipe(peak_lr=3e-3, epochs=40, batch_size=16, warmup_steps=5, checkpoint_fraction=0.05,
                    validation_fraction=0.5)
    work = Path(sys.argv[2])
    def saved(model, step):
        print("checkpoint", step, flush=True)
    runs = [StackRun(f"r{i}", seed, equal_widths(seed, 90 + i), toy_validation(), work / f"r{i}", f"fp{i}",
                     saved if i == 0 else (lambda m, s: None)) for i, seed in enumerate((5, 6))]
    stack = from_hf_models([build_model(TINY, 5), build_model(TINY, 6)])
    train_stack(stack, runs, recipe, torch.device("cpu"), log=sys.stderr)
    torch.save(stack.state_dict(), work.parent / (work.name + ".weights.pt"))
""")


def test_killed_stack_resumes_to_bit_identical_weights(tmp_path):
    """SIGKILL a two-run stack after its second resume state, rerun it: both runs resume and end with the weights
    and logs of a stack that was never interrupted. 240 updates, so the kill lands mid-run."""
    def command(work):
        return [sys.executable, "-c", STACK_DRIVER, str(REPO), str(work)]

    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True, cwd=REPO)
    victim = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, cwd=REPO)
    for line in victim.stdout:
        if line.startswith("checkpoint") and int(line.split()[1]) >= 24:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.weights.pt").exists()
    resumed = subprocess.run(command(tmp_path / "killed"), check=True, capture_output=True, text=True, cwd=REPO)
    assert "resuming 2 run(s) from step" in resumed.stderr and "from step 0" not in resumed.stderr
    a = torch.load(tmp_path / "straight.weights.pt")
    b = torch.load(tmp_path / "killed.weights.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for run in ("r0", "r1"):
        for log in ("training_log.csv", "validation_log.csv"):
            assert (tmp_path / "straight" / run / log).read_bytes() == (tmp_path / "killed" / run / log).read_bytes()


def test_a_stack_does_not_resume_from_states_of_different_steps(tmp_path):
    """One run's state from another step (or missing): the stack starts over rather than mixing steps."""
    recipe = Recipe(peak_lr=3e-3, epochs=2, batch_size=16, warmup_steps=1, checkpoint_fraction=0.25)
    mixtures = [equal_widths(1, 64), equal_widths(2, 64)]

    def runs():
        return [StackRun(f"r{i}", 5 + i, m, toy_validation(), tmp_path / f"r{i}", f"fp{i}", lambda *a: None)
                for i, m in enumerate(mixtures)]

    stack = from_hf_models([build_model(TINY, 5), build_model(TINY, 6)])
    train_stack(stack, runs(), recipe, torch.device("cpu"), stop_after=5)  # states at step 4
    (tmp_path / "r1/state.pt").unlink()
    import io
    log = io.StringIO()
    stack = from_hf_models([build_model(TINY, 5), build_model(TINY, 6)])
    train_stack(stack, runs(), recipe, torch.device("cpu"), log=log)
    assert "not resuming" in log.getvalue() and "resuming 2" not in log.getvalue()
    straight, _ = train_runs(tmp_path / "straight", mixtures, [5, 6], recipe)
    assert all(torch.equal(a, b) for a, b in zip(stack.state_dict().values(), straight.state_dict().values()))


# ---- greedy decoding of K models at once (METHOD §8) ---------------------------------------------------------

PROMPT_FORMS = {  # three mixtures' tasks: a run of each decodes its own prompts
    "distance": lambda c: f"dist(c_{c[0]},c_{c[1]})=",
    "angle": lambda c: f"angle(c_{c[0]},c_{c[1]},c_{c[2]})=",
    "inside": lambda c: f"inside(c_{c[0]};c_{c[1]},c_{c[2]},c_{c[3]})=",
}


def task_prompts(task: str, n: int, seed: int) -> torch.Tensor:
    """n right-padded prompts of one task with random 4-digit city IDs, as `prompt_tokens` cuts stored items."""
    from worldrep.evaluation import prompt_tokens
    from worldrep.tokenizer import encode_compact

    rng = np.random.default_rng(seed)
    compact = np.array([PROMPT_FORMS[task]([f"{i:04d}" for i in rng.integers(0, 10_000, 4)]).encode()
                        for _ in range(n)])
    return torch.from_numpy(prompt_tokens(encode_compact(compact)).astype(np.int64))


def hf_generate(model, prompts: torch.Tensor, max_new: int) -> torch.Tensor:
    """Hugging Face `generate` of one model on its own right-padded prompts, left-padded here by hand."""
    lengths = [int((row != PAD_ID).sum()) for row in prompts]
    width = max(lengths)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:], mask[i, width - n:] = prompts[i, :n], 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                             max_new_tokens=max_new, eos_token_id=3, pad_token_id=0)
    return out[:, width:]


def stacked_batch(batches: list[torch.Tensor]) -> torch.Tensor:
    """Each run's prompts in its row of one [K, B, W] batch: all-pad rows after a run's last item, pad columns
    after its widest prompt."""
    batch, width = max(len(p) for p in batches), max(p.shape[1] for p in batches)
    out = torch.full((len(batches), batch, width), PAD_ID, dtype=torch.long)
    for k, prompts in enumerate(batches):
        out[k, :len(prompts), :prompts.shape[1]] = prompts
    return out


def same_tokens(ours: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal rows once trailing pads are dropped (a batch that stops later pads its finished rows further)."""
    width = max(ours.shape[1], reference.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=PAD_ID)  # noqa: E731
    return torch.equal(pad(ours), pad(reference))


@pytest.mark.parametrize("settings", [ModelSettings(), GQA])
def test_stacked_greedy_decoding_is_each_models_own_generate(settings):
    """K = 3 models of three mixtures (one task each, their own prompt lengths and counts), decoded as one stack:
    every row's tokens equal its model's own `generate` and `greedy_generate`, token for token. The `<eos>` row of
    each lm_head is scaled so that rows stop at different steps, some at once."""
    from worldrep.evaluation import greedy_generate, stacked_greedy_generate

    models = [build_model(settings, seed).eval() for seed in (11, 12, 13)]
    with torch.no_grad():
        for model, scale in zip(models, (1.0, 1.5, 1.3)):
            model.lm_head.weight[3] *= scale
    batches = [task_prompts(task, n, seed) for seed, (task, n) in enumerate([("distance", 6), ("angle", 4),
                                                                           ("inside", 5)])]
    stack = from_hf_models(models).eval()
    fused = stacked_greedy_generate(stack, stacked_batch(batches), 20)
    stops = set()
    for k, (model, prompts) in enumerate(zip(models, batches)):
        reference = hf_generate(model, prompts, 20)
        assert same_tokens(fused[k, :len(prompts)], reference), k
        assert same_tokens(fused[k, :len(prompts)], greedy_generate(model, prompts, 20)), k
        assert (fused[k, len(prompts):] == PAD_ID).all()  # the all-pad rows generate nothing
        stops |= {row.index(3) if 3 in row else None for row in reference.tolist()}
    assert len(stops) >= 3 and None in stops  # rows end early, at different steps, and run to the limit


def test_stacked_greedy_decoding_keeps_each_rows_limit():
    """Per-row limits (each task has its own, §8): a row stops at its limit, exactly as decoded alone with it."""
    from worldrep.evaluation import greedy_generate, stacked_greedy_generate

    models = [build_model(TINY, seed).eval() for seed in (1, 2)]
    prompts = [task_prompts("distance", 3, 0), task_prompts("angle", 3, 1)]
    limits = torch.tensor([[2, 5, 0], [7, 1, 3]])
    fused = stacked_greedy_generate(from_hf_models(models).eval(), stacked_batch(prompts), limits)
    assert fused.shape[2] <= 7
    for k, model in enumerate(models):
        for row in range(3):
            limit = int(limits[k, row])
            alone = greedy_generate(model, prompts[k][row:row + 1], limit)[0] if limit else torch.zeros(0)
            assert same_tokens(fused[k, row:row + 1, :limit], alone[None].long()), (k, row)
            assert (fused[k, row, limit:] == PAD_ID).all(), (k, row)


ANSWERS = {"distance": lambda rng: str(rng.integers(0, 4000)), "angle": lambda rng: str(rng.integers(0, 180)),
           "inside": lambda rng: ("TRUE", "FALSE")[rng.integers(0, 2)]}


def task_validation(tasks: list[str], n: int, seed: int, batch_size: int):
    """A val split of n items per task, tasks interleaved as a mixture's rows are, with random answers."""
    from worldrep.tokenizer import encode_compact
    from worldrep.training import Validation

    rng = np.random.default_rng(seed)
    texts, task_index, answers = [], [], []
    for i in range(n * len(tasks)):
        task = tasks[i % len(tasks)]
        answer = ANSWERS[task](rng)
        texts.append((PROMPT_FORMS[task]([f"{c:04d}" for c in rng.integers(0, 10_000, 4)]) + answer).encode())
        task_index.append(i % len(tasks))
        answers.append(answer.encode())
    return Validation(encode_compact(np.array(texts)), np.array(task_index, dtype=np.uint8), np.array(answers),
                      tasks, batch_size=batch_size)


def test_fused_validation_is_each_runs_own_validation():
    """Three runs of three mixtures (1, 2 and 3 tasks; 5, 8 and 9 items), validated in one fused pass with
    batches of 4: each run's rows (task order, n, metric, failures) are `write_validation`'s for the run alone,
    the losses equal to float rounding."""
    from worldrep.training import stacked_validation, write_validation

    class Rows(list):
        write = list.append

    models = [build_model(TINY, seed).eval() for seed in (21, 22, 23)]
    with torch.no_grad():
        models[1].lm_head.weight[3] *= 1.4  # rows of one run stop early
    validations = [task_validation(["inside"], 5, 0, 4), task_validation(["distance", "angle"], 4, 1, 4),
                   task_validation(["angle", "inside", "distance"], 3, 2, 4)]
    fused = stacked_validation(from_hf_models(models).eval(), validations, "fp32", torch.device("cpu"))
    for model, validation, rows in zip(models, validations, fused):
        alone = Rows()
        write_validation(model, validation, "fp32", torch.device("cpu"), 7, alone)
        assert [r["task"] for r in rows] == [r["task"] for r in alone] == sorted(set(validation.task_names),
                                                                                key=validation.task_names.index)
        for ours, theirs in zip(rows, alone):
            assert {key: ours[key] for key in ("n", "metric", "value", "failures")} == \
                {key: theirs[key] for key in ("n", "metric", "value", "failures")}
            assert float(ours["loss"]) == pytest.approx(float(theirs["loss"]), abs=2e-6)
    assert any(0 < row["failures"] < row["n"] for rows in fused for row in rows)  # answers parse, and some fail


def test_a_stack_evaluated_as_a_stack_gives_each_models_own_tables(tmp_path):
    """`evaluate_stack` on K = 3 models of three mixtures, each with its own test sets (1, 2 and 3 sets of 5-9
    items, batches of 4 so that sets straddle batches and runs run out at different batches): each model's metrics
    and predictions tables equal `evaluate_model`'s for it alone."""
    import pandas as pd

    from worldrep.evaluation import evaluate_model, evaluate_stack

    def test_set(task: str, n: int, seed: int) -> Path:
        folder = tmp_path / f"{task}-{seed}"
        folder.mkdir()
        split = task_validation([task], n, seed, 4)
        np.savez(folder / "test.npz", tokens=split.tokens, answers=split.answers)
        return folder / "test.npz"

    models = [build_model(TINY, seed).eval() for seed in (31, 32, 33)]
    with torch.no_grad():
        models[2].lm_head.weight[3] *= 1.4
    sets = [{("standard", "inside"): test_set("inside", 7, 0)},
            {("standard", "distance"): test_set("distance", 5, 1), ("atlantis", "distance"): test_set("distance", 6, 2)},
            {("standard", "angle"): test_set("angle", 9, 3), ("standard", "inside"): test_set("inside", 3, 4),
             ("atlantis", "distance"): test_set("distance", 2, 5)}]
    cpu = torch.device("cpu")
    stacked = evaluate_stack(from_hf_models(models).eval(), sets, 4, cpu, "fp32")
    for model, model_sets, (metrics, predictions) in zip(models, sets, stacked):
        alone_metrics, alone_predictions = evaluate_model(model, model_sets, 4, cpu, "fp32")
        pd.testing.assert_frame_equal(metrics, alone_metrics)
        pd.testing.assert_frame_equal(predictions, alone_predictions)
    every = pd.concat([p for _, p in stacked])
    assert every["failed"].any() and not every["failed"].all()  # generations parse, and some fail


def test_checkpoints_written_in_the_background_hold_their_steps_weights_and_a_failed_write_stops_training(tmp_path):
    """Checkpoints are copied off the stack at their step and written on a background thread while training goes
    on: each holds the weights of its own step (those of a run trained only up to that step), and a write that
    fails is raised by `train_stack`, not lost."""
    recipe = Recipe(peak_lr=3e-3, epochs=2, batch_size=16, warmup_steps=2, checkpoint_fraction=0.25,
                    validation_fraction=0.5)
    saved = {}

    def keep(model, step):
        time.sleep(0.05)  # a slow disk: training has moved on by the time this runs
        saved[step] = {name: t.clone() for name, t in model.state_dict().items()}

    mixture = toy_tokens(96, seed=4)
    stack = from_hf_models([build_model(TINY, 8)])
    train_stack(stack, [StackRun("r", 8, mixture, toy_validation(), tmp_path / "r", "fp", keep)], recipe,
                torch.device("cpu"))
    assert sorted(saved) == [0, 3, 6, 9, 12]
    short = from_hf_models([build_model(TINY, 8)])
    train_stack(short, [StackRun("r", 8, mixture, toy_validation(), tmp_path / "s", "fp", lambda m, s: None)],
                recipe, torch.device("cpu"), stop_after=6)
    assert all(torch.equal(saved[6][name], t) for name, t in short.slice_state_dict(0).items())
    assert not all(torch.equal(saved[12][name], t) for name, t in short.slice_state_dict(0).items())

    def fail(model, step):
        if step == 6:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train_stack(from_hf_models([build_model(TINY, 8)]),
                    [StackRun("r", 8, mixture, toy_validation(), tmp_path / "f", "fp", fail)], recipe,
                    torch.device("cpu"))
