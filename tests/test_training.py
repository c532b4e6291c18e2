"""The trainer against METHOD §7: schedule, step counts, data order, loss, weight decay groups, learning,
checkpoints that load with the Auto classes, atomic publication, and stop-and-resume bit-identity on CPU (a lone
run is a stack of one: tests/test_stack.py covers stacks)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldrep.evaluation import greedy_generate, prompt_tokens
from worldrep.model import ModelSettings, build_model
from worldrep.tokenizer import PAD_ID, save_tokenizer
from worldrep.training import (Recipe, Validation, batch_indices, checkpoint_steps, decays, epoch_order, every,
                               fingerprint, learning_rate, save_hf_model, steps_per_epoch, token_loss,
                               total_steps, train)

REPO = Path(__file__).resolve().parents[1]
TINY = ModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                     intermediate_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy_tokens(n_items: int, seed: int = 0, width: int = 14) -> np.ndarray:
    """Rows `<bos> ... <eos>` of random characters and random lengths, right-padded, with one `=` each."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n_items, width), dtype=np.uint8)
    for i in range(n_items):
        length = rng.integers(6, width + 1)
        tokens[i, :length] = rng.integers(26, 98, length)
        tokens[i, 0], tokens[i, length // 2], tokens[i, length - 1] = 2, 22, 3
    return tokens


def toy_validation(n_items: int = 8) -> Validation:
    tokens = toy_tokens(n_items, seed=99)
    return Validation(tokens, np.zeros(n_items, dtype=np.uint8), np.array([b"7"] * n_items), ["distance"],
                      batch_size=4)


# ---- schedule and step counts ----------------------------------------------------------------------------

@pytest.mark.parametrize("n_items, epochs, steps_per, total", [
    (1_000_000, 42, 7_813, 328_146), (2_000_000, 21, 15_625, 328_125), (3_000_000, 14, 23_438, 328_132),
    (7_000_000, 6, 54_688, 328_128), (121_792, 30, 952, 28_560), (241_792, 30, 1_889, 56_670),
])
def test_step_counts_are_the_grid_table(n_items, epochs, steps_per, total):
    """METHOD §7.3's table: ⌈N / 128⌉ steps per epoch (last partial batch kept), times the epochs."""
    assert steps_per_epoch(n_items, 128) == steps_per
    assert total_steps(n_items, 128, epochs) == total


def test_learning_rate_at_the_named_steps():
    """Warmup from 0 over 50 updates, then linear decay to 0 at T; values computed by hand."""
    peak, total = 3e-4, 1050
    assert learning_rate(0, peak, 50, total) == 0.0
    assert learning_rate(25, peak, 50, total) == pytest.approx(1.5e-4, rel=1e-12)
    assert learning_rate(50, peak, 50, total) == pytest.approx(3e-4, rel=1e-12)
    assert learning_rate(550, peak, 50, total) == pytest.approx(1.5e-4, rel=1e-12)  # halfway through the decay
    assert learning_rate(total - 1, peak, 50, total) == pytest.approx(3e-4 / 1000, rel=1e-12)
    assert learning_rate(total, peak, 50, total) == 0.0


def test_learning_rate_matches_hugging_face_schedule():
    """Same values as transformers' `get_linear_schedule_with_warmup`, the authors' schedule, at every step."""
    from transformers import get_linear_schedule_with_warmup

    peak, total = 1e-5, 333
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = get_linear_schedule_with_warmup(optimizer, 50, total)
    for step in range(total):
        assert learning_rate(step, peak, 50, total) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-18)
        optimizer.step()
        schedule.step()


def test_checkpoint_steps_follow_the_spec():
    """0, every multiple of ⌈0.025 T⌉, and T: 41 checkpoints for a paper pretraining run."""
    total = 328_146
    steps = checkpoint_steps(total, 0.025)
    assert every(total, 0.025) == 8_204
    assert steps[:3] == [0, 8_204, 16_408] and steps[-2:] == [39 * 8_204, total] and len(steps) == 41
    assert every(total, 0.005) == 1_641  # about 200 validations per run
    assert checkpoint_steps(8, 0.25) == [0, 2, 4, 6, 8]
    assert checkpoint_steps(10, 0.25) == [0, 3, 6, 9, 10]


def test_batches_cover_each_epoch_once_in_a_fresh_order():
    n_items, batch = 1000, 128
    spe = steps_per_epoch(n_items, batch)
    for epoch in range(3):
        batches = [batch_indices(7, epoch * spe + j, n_items, batch) for j in range(spe)]
        assert [len(b) for b in batches] == [128] * 7 + [104]  # the last partial batch is kept
        assert sorted(np.concatenate(batches)) == list(range(n_items))
    assert not np.array_equal(epoch_order(7, 0, n_items), epoch_order(7, 1, n_items))
    assert not np.array_equal(epoch_order(7, 0, n_items), epoch_order(8, 0, n_items))
    assert np.array_equal(batch_indices(7, 10, n_items, batch), epoch_order(7, 1, n_items)[256:384])


# ---- loss and optimizer ----------------------------------------------------------------------------------

def test_token_loss_equals_hugging_face_loss_over_non_pad_targets():
    """Mean cross-entropy over the batch's non-pad target tokens, as HF computes it with pads labelled -100."""
    model = build_model(TINY, seed=1)
    tokens = torch.from_numpy(toy_tokens(16).astype(np.int64))
    labels = tokens.masked_fill(tokens == PAD_ID, -100)
    attention = (tokens != PAD_ID).long()
    with torch.no_grad():
        reference = model(input_ids=tokens, attention_mask=attention, labels=labels).loss
    with torch.no_grad():
        assert float(token_loss(model, tokens)) == pytest.approx(float(reference), rel=1e-5)


def test_padding_to_the_mixture_width_changes_nothing():
    """Extra pad columns (the mixture is wider than this batch) leave the loss unchanged."""
    model = build_model(TINY, seed=2)
    tokens = torch.from_numpy(toy_tokens(16).astype(np.int64))
    wider = torch.cat([tokens, torch.zeros(16, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert float(token_loss(model, wider)) == pytest.approx(float(token_loss(model, tokens)), rel=1e-6)


def test_weight_decay_rule_matches_the_hf_trainer_rule():
    """Decay on matrices and embeddings; none on biases or RMSNorm gains (the HF Trainer's name rule), for a
    Hugging Face model and for the same names in a stack."""
    from transformers.trainer_pt_utils import get_parameter_names

    from worldrep.stack import StackedQwen2

    model = build_model(seed=0)
    decay = {n for n, p in model.named_parameters() if decays(p)}
    hf_decay = set(get_parameter_names(model, [torch.nn.LayerNorm],
                                       [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    assert decay == hf_decay
    assert sum(p.numel() for p in model.parameters()) == 1_601_920
    # 6 blocks × (q, k, v biases + 2 norms) + the final norm
    assert len(set(dict(model.named_parameters())) - decay) == 6 * 5 + 1
    stack = StackedQwen2(ModelSettings(), 2)
    assert {n for n, p in stack.named_parameters() if decays(p, stacked=True)} == decay


def test_recipe_rejects_unknown_precision():
    with pytest.raises(ValueError, match="fp8"):
        Recipe(peak_lr=1e-3, epochs=1, precision="fp8")


# ---- the loop --------------------------------------------------------------------------------------------

def run_toy(work: Path, recipe: Recipe, tokens: np.ndarray, seed: int = 3, stop_after=None, saved=None):
    model = build_model(TINY, seed)
    summary = train(model, tokens, toy_validation(), recipe, seed, torch.device("cpu"), work, "toy",
                    lambda m, step: saved.append(step) if saved is not None else None, stop_after=stop_after)
    return model, summary


def test_tiny_model_overfits_a_tiny_dataset(tmp_path):
    """16 sequences, 150 updates at lr 1e-2: the loss must fall below 0.5 nats per token. A uniform guess
    scores ln 98 ≈ 4.58 and the characters are uniform random, so no model that has not memorised the
    sequences can go below ~4.3 on most targets; under 0.5 means it has learnt them."""
    tokens = toy_tokens(16)
    recipe = Recipe(peak_lr=1e-2, epochs=150, batch_size=16, warmup_steps=10, log_every=10,
                    checkpoint_fraction=1.0, validation_fraction=1.0)
    model, summary = run_toy(tmp_path / "work", recipe, tokens)
    assert summary["total_steps"] == 150
    with torch.no_grad():
        final = float(token_loss(model, torch.from_numpy(tokens.astype(np.int64))))
    assert final < 0.5
    log = (tmp_path / "work/training_log.csv").read_text().splitlines()
    assert log[0] == "step,epoch,loss,lr,grad_norm" and len(log) == 1 + 15
    assert float(log[1].split(",")[2]) > 3.0  # the first logged window is still near the uniform loss


def test_validation_log_has_one_row_per_task_and_validation_step(tmp_path):
    recipe = Recipe(peak_lr=1e-3, epochs=2, batch_size=8, warmup_steps=1, checkpoint_fraction=0.5,
                    validation_fraction=0.25)
    saved = []
    _, summary = run_toy(tmp_path / "work", recipe, toy_tokens(32), saved=saved)
    total = summary["total_steps"]
    assert total == 8 and saved == [0, 4, 8]
    rows = (tmp_path / "work/validation_log.csv").read_text().splitlines()
    assert rows[0] == "step,task,n,loss,metric,value,failures"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [0, 2, 4, 6, 8]
    assert all(r.split(",")[1:3] == ["distance", "8"] for r in rows[1:])


def test_stopped_and_resumed_run_ends_bit_identical(tmp_path):
    """In-process version of kill-and-resume (tests/test_stack.py kills a stacked process for real)."""
    recipe = Recipe(peak_lr=3e-3, epochs=3, batch_size=8, warmup_steps=3, log_every=4, checkpoint_fraction=0.2,
                    validation_fraction=0.2)  # state and validation at step 6; a log window open across it
    tokens = toy_tokens(40)
    straight, _ = run_toy(tmp_path / "a", recipe, tokens)
    run_toy(tmp_path / "b", recipe, tokens, stop_after=7)  # the state on disk is from step 6
    resumed, _ = run_toy(tmp_path / "b", recipe, tokens)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    for log in ("training_log.csv", "validation_log.csv"):
        assert (tmp_path / "a" / log).read_bytes() == (tmp_path / "b" / log).read_bytes()


def test_state_of_another_run_is_ignored_and_its_files_dropped(tmp_path):
    """A work dir left by another configuration: its state is not resumed, and none of its checkpoints or
    log rows reach this run."""
    recipe = Recipe(peak_lr=3e-3, epochs=2, batch_size=8, warmup_steps=1, checkpoint_fraction=0.25)
    tokens = toy_tokens(32)
    run_toy(tmp_path / "w", recipe, tokens, stop_after=3)
    stale = tmp_path / "w/checkpoints/step-000003"
    stale.mkdir(parents=True)
    model = build_model(TINY, 3)
    train(model, tokens, toy_validation(), recipe, 3, torch.device("cpu"), tmp_path / "w", "another", lambda *a: None)
    straight, _ = run_toy(tmp_path / "fresh", recipe, tokens)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), straight.state_dict().values()))
    assert not stale.exists()
    for log in ("training_log.csv", "validation_log.csv"):
        assert (tmp_path / "w" / log).read_bytes() == (tmp_path / "fresh" / log).read_bytes()


# The same, killed for real (SIGKILL of a stacked training process): tests/test_stack.py.


# ---- outputs ---------------------------------------------------------------------------------------------

def test_saved_checkpoint_loads_with_auto_classes_and_generates_the_same(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    save_tokenizer(tokenizer_dir)
    model = build_model(seed=4).eval()
    save_hf_model(model, tmp_path / "final", tokenizer_dir, {"run": "toy"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    assert json.loads((tmp_path / "final/run.json").read_text()) == {"run": "toy"}
    assert not list(tmp_path.glob("*.partial"))
    texts = ["<bos> d i s t ( c _ 1 2 3 4 , c _ 5 6 7 8 ) = 9 <eos>", "<bos> c o m p a s s ( c _ 1 , c _ 2 ) = N <eos>"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ids[0][:3] == [2, 61, 66] and ids[0][-3:] == [22, 97, 3]  # <bos> d i ... = 9 <eos> (METHOD §5 ids)
    rows = np.zeros((2, max(map(len, ids))), dtype=np.uint8)
    for row, item in zip(rows, ids):
        row[:len(item)] = item
    prompts = torch.from_numpy(prompt_tokens(rows).astype(np.int64))
    assert torch.equal(greedy_generate(model, prompts, 20), greedy_generate(loaded, prompts, 20))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_fingerprint_depends_on_every_field():
    base = {"recipe": {"peak_lr": 3e-4}, "seed": 1, "inputs": {"train": "a"}}
    assert fingerprint(base) == fingerprint(json.loads(json.dumps(base)))
    assert fingerprint(base) != fingerprint({**base, "seed": 2})
    assert fingerprint(base) != fingerprint({**base, "recipe": {"peak_lr": 3e-5}})
