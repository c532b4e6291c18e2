"""Gradient similarity of the tasks (METHOD C.3): the cosine definition on constructed gradients and a tiny model
(identical tasks give exactly 1, disjoint digit rows exactly 0), the loss against the stacked training loss, the
digit-row selection, the draw, the target tables and the correlation against scipy, the figures; and
`check_smoke_outputs`, the assertions tests/test_workflow.py makes on a smoke run's outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from worldrep import figures
from worldrep import gradients as G
from worldrep.model import ModelSettings, build_model
from worldrep.stack import from_hf_models, stacked_token_losses
from worldrep.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = ModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                     intermediate_size=64)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def digit_batch(digits: str, rows: int, seed: int) -> torch.Tensor:
    """`<bos> d d d ... <eos>` rows [rows, len + 2] of shuffled `digits`, the last row one token short (padded)."""
    rng = np.random.default_rng(seed)
    ids = [[BOS_ID, *(VOCAB[d] for d in rng.permutation(list(digits))), EOS_ID] for _ in range(rows)]
    ids[-1] = ids[-1][:-2] + [EOS_ID, PAD_ID]
    return torch.tensor(ids)


# ---- cosines -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_vectors_give_exactly_one_and_orthogonal_ones_zero(seed):
    g = torch.randn(10_000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    h = torch.cat([g[:5_000], torch.zeros(5_000, dtype=torch.float64)])
    k = torch.cat([torch.zeros(5_000, dtype=torch.float64), g[5_000:]])
    cos = G.cosine_matrix(G.gram([g, g.clone(), h, k]))
    assert np.diag(cos).tolist() == [1.0] * 4 and cos[0, 1] == 1.0
    assert cos[2, 3] == 0.0 and (cos == cos.T).all()
    assert cos[0, 2] == pytest.approx(float(torch.dot(g, h) / g.norm() / h.norm()), rel=1e-12)


def test_a_zero_gradient_is_refused():
    with pytest.raises(ValueError, match="zero gradient"):
        G.cosine_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_identical_tasks_give_exactly_one_on_a_model():
    """Two tasks on the same batches: their mean cosine is exactly 1 for both parameter sets; a third task's is
    below 1, the same seen from either side."""
    model = build_model(TINY, 0)
    shared = [digit_batch("0123456789", 4, seed) for seed in (0, 1)]
    batches = {"distance": shared, "angle": shared, "compass": [digit_batch("01234", 4, 2), digit_batch("56789", 4, 3)]}
    cosines = G.checkpoint_cosines(model, batches)
    for name in G.PARAMETER_SETS:
        similarity = cosines[name].mean(axis=0)
        assert cosines[name].shape == (2, 3, 3)
        assert similarity[0, 1] == 1.0 and np.diag(similarity).tolist() == [1.0] * 3
        assert similarity[0, 2] < 1.0 and similarity[0, 2] == similarity[2, 0]


def test_disjoint_digits_give_orthogonal_digit_gradients():
    """Tasks whose inputs use disjoint digits move disjoint embedding rows: digit cosine exactly 0, all-parameter
    cosine not."""
    model = build_model(TINY, 1)
    batches = {"distance": [digit_batch("01234", 3, 0)], "angle": [digit_batch("56789", 3, 1)]}
    cosines = G.checkpoint_cosines(model, batches)
    assert cosines["digit_embeddings"][0, 0, 1] == 0.0
    assert cosines["all"][0, 0, 1] != 0.0


# ---- the loss and the parameter sets -----------------------------------------------------------------------

def test_gradient_is_the_training_loss_gradient():
    """The all-parameter gradient equals that of the stacked loss the runs train on (`stacked_token_losses`, a stack
    of one), parameter by parameter, on a right-padded batch."""
    model = build_model(TINY, 2)
    tokens = torch.cat([digit_batch("0123456789", 3, 4), digit_batch("9876543210", 2, 5)])
    ours = G.batch_gradients(model, tokens)["all"]
    stack = from_hf_models([model])
    stacked_token_losses(stack, tokens[None]).sum().backward()
    grads = dict(stack.named_parameters())
    reference = torch.cat([grads[name].grad[0].reshape(-1) for name, _ in model.named_parameters()]).double()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_digit_rows_are_the_input_embedding_rows_of_0_to_9():
    model = build_model(TINY, 3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    embedding = model.get_input_embeddings().weight
    embedding.grad = torch.arange(embedding.shape[0], dtype=torch.float32)[:, None].expand_as(embedding).clone()
    model.lm_head.weight.grad = torch.full_like(model.lm_head.weight, -1.0)  # not the output rows
    vectors = G.parameter_gradients(model)
    rows = vectors["digit_embeddings"].reshape(10, -1)
    assert [VOCAB[str(d)] for d in range(10)] == G.DIGIT_IDS == list(range(88, 98))
    assert rows[:, 0].tolist() == G.DIGIT_IDS and (rows == rows[:, :1]).all()
    assert len(vectors["all"]) == sum(p.numel() for p in model.parameters())


# ---- draw, checkpoints, padding ----------------------------------------------------------------------------

def test_draw_is_reproducible_distinct_within_a_batch_and_per_task():
    draw = G.draw_batches(100, 8, 64, 42, "distance")
    assert draw.shape == (8, 64) and (draw == G.draw_batches(100, 8, 64, 42, "distance")).all()
    assert all(len(set(batch)) == 64 for batch in draw) and draw.max() < 100
    assert not (draw == G.draw_batches(100, 8, 64, 42, "angle")).all()
    assert not (draw == G.draw_batches(100, 8, 64, 1, "distance")).all()
    with pytest.raises(ValueError, match="distinct items"):
        G.draw_batches(10, 1, 11, 42, "distance")


def test_trim_padding_keeps_the_longest_item():
    tokens = np.array([[2, 5, 3, 0, 0, 0], [2, 5, 6, 3, 0, 0]], dtype=np.uint8)
    assert G.trim_padding(tokens).tolist() == [[2, 5, 3, 0], [2, 5, 6, 3]]


def test_first_checkpoints_are_ordered_by_step(tmp_path):
    for step in (100, 0, 25, 50):
        (tmp_path / f"step-{step:06d}").mkdir()
    assert [step for step, _ in G.first_checkpoints(tmp_path, 3)] == [0, 25, 50]
    with pytest.raises(ValueError, match="fewer"):
        G.first_checkpoints(tmp_path, 5)


# ---- against CKA and FTWB1 -----------------------------------------------------------------------------------

TASKS = ["distance", "angle", "inside", "crossing"]


def similarity_of(values: np.ndarray, steps=(0, 5)) -> pd.DataFrame:
    return pd.DataFrame([row for step in steps for name in G.PARAMETER_SETS
                         for row in G.similarity_rows(step, name, TASKS, values[None])])


def test_targets_are_unordered_cka_and_ordered_off_diagonal_ftwb1():
    rng = np.random.default_rng(0)
    raw = rng.uniform(-1, 1, (4, 4))
    similarity = similarity_of((raw + raw.T) / 2)
    variant_task = {f"pt1-{i}": t for i, t in enumerate(TASKS)}
    cka = pd.DataFrame([{"layer": layer, "estimator": e, "row": a, "column": b, "mean": rng.uniform(), "sem": 0, "n": 1}
                        for layer in (4, 5) for e in ("biased", "debiased")
                        for a in variant_task for b in variant_task])
    ftwb1 = pd.DataFrame([{"seed": seed, "finetuned_task": a, "evaluated_task": b, "ni": rng.uniform()}
                          for seed in ("42", "mean") for a in TASKS[:2] for b in TASKS])
    points, table = G.correlation_tables(similarity, cka, ftwb1, variant_task, layer=5)
    per_plot = points.groupby(["target", "step", "parameters"]).size()
    assert per_plot.xs("cka_biased").eq(6).all() and per_plot.xs("ftwb1").eq(2 * 3).all()
    assert not (points.task_a == points.task_b).any()
    one = points[(points.target == "cka_biased") & (points.step == 5) & (points.parameters == "all")]
    assert [tuple(p) for p in one[["task_a", "task_b"]].to_numpy()] == \
        [("distance", "angle"), ("distance", "inside"), ("distance", "crossing"), ("angle", "inside"),
         ("angle", "crossing"), ("inside", "crossing")]
    expected = cka.query("layer == 5 and estimator == 'biased' and row == 'pt1-0' and column == 'pt1-2'")["mean"]
    assert one.value.iloc[1] == expected.item()
    assert len(table) == 2 * 2 * 3 * 2  # steps × parameter sets × targets × task subsets
    row = table.query("step == 5 and parameters == 'all' and target == 'cka_biased' and tasks == 'all'").iloc[0]
    assert row["pearson_r"] == pytest.approx(stats.pearsonr(one.cosine, one.value).statistic)
    crossing_free = table.query("target == 'ftwb1' and tasks == 'without_crossing'")
    assert crossing_free.n.eq(2 * 2).all()
    with pytest.raises(ValueError, match="no gradient similarity"):
        G.correlation_tables(similarity[similarity.task_a != "inside"], cka, None, variant_task, layer=5)
    with pytest.raises(ValueError, match="nothing to correlate"):
        G.correlation_tables(similarity, None, None, variant_task, layer=5)


def test_figures_draw_the_tables(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.uniform(-1, 1, (4, 4))
    similarity = similarity_of((raw + raw.T) / 2)
    fig, data = figures.gradient_similarity(similarity)
    assert len(data) == len(similarity)
    ftwb1 = pd.DataFrame([{"seed": "mean", "finetuned_task": a, "evaluated_task": b, "ni": rng.uniform()}
                          for a in TASKS for b in TASKS])
    points, table = G.correlation_tables(similarity, None, ftwb1, {}, layer=5)
    scatter, drawn = figures.gradient_scatter(points, table, {"ftwb1": "NI"})
    assert len(drawn) == len(points) and {"pearson_r", "spearman_r"} <= set(drawn.columns)
    for name, figure, frame in (("similarity", fig, data), ("scatter", scatter, drawn)):
        png = figures.save_figure(figure, tmp_path / name, frame)[0]
        assert png.read_bytes().startswith(PNG_SIGNATURE)


# ---- the smoke run's outputs (called by tests/test_workflow.py) ---------------------------------------------

def check_smoke_outputs(results: Path, config: dict) -> None:
    """Assertions on a finished workflow run with `experiments.gradients` on (`config`: the merged config it ran
    with): one T×T matrix per configured task set, checkpoint and parameter set, diagonal exactly 1, symmetric; one
    value recomputed here from the checkpoint with plain autograd; correlation rows exactly for the targets the
    config plans, with their pair counts; PNG figures."""
    from worldrep.grid import gradients_run
    from worldrep.grid import configured_tasks, training_runs

    settings = config["experiments"]["gradients"]
    assert settings["enabled"]
    folder = results / "experiments/gradients"
    tasks = configured_tasks(config)
    table = pd.read_csv(folder / "similarity.csv")
    checkpoints = results / f"models/{gradients_run(config)}/checkpoints"
    steps = sorted(int(p.name.removeprefix("step-")) for p in checkpoints.glob("step-*"))[: settings["checkpoints"]]
    assert steps[0] == 0 and len(steps) == settings["checkpoints"]
    assert sorted(table.step.unique()) == steps and set(table.parameters) == set(G.PARAMETER_SETS)
    assert (table.batches == settings["batches"]).all() and table.cosine.between(-1, 1).all()
    for (step, parameters), part in table.groupby(["step", "parameters"]):
        matrix = part.pivot(index="task_a", columns="task_b", values="cosine").reindex(index=tasks, columns=tasks)
        assert matrix.shape == (len(tasks), len(tasks)) and not matrix.isna().any().any()
        values = matrix.to_numpy()
        assert (np.diag(values) == 1.0).all() and (values == values.T).all(), (step, parameters)

    a, b, step = tasks[0], tasks[-1], steps[-1]
    expected = recompute_similarity(results, checkpoints / f"step-{step:06d}", (a, b), settings)
    for parameters, value in expected.items():
        row = table[(table.step == step) & (table.parameters == parameters) & (table.task_a == a) & (table.task_b == b)]
        assert row.cosine.item() == pytest.approx(value, abs=1e-5), parameters

    runs = training_runs(config)
    mixtures = config["mixtures"]
    planned = set()
    if any(name.startswith("pt1-") for name in mixtures["pretraining"]):
        planned |= {f"cka_{estimator}" for estimator in ("biased", "debiased", "calibrated", "mutual_knn")}
    ftwb1_tasks = {mixtures["finetuning"]["mixes"][r.mixture][0] for r in runs if r.kind == "finetuning"
                   and r.variant is None and len(mixtures["finetuning"]["mixes"][r.mixture]) == 1}
    if ftwb1_tasks:
        planned.add("ftwb1")
    if not planned:
        assert not (folder / "correlation.csv").exists()
        return
    correlation = pd.read_csv(folder / "correlation.csv")
    assert set(correlation.target) == planned
    assert len(correlation) == len(steps) * len(G.PARAMETER_SETS) * len(planned) * len(G.TASK_SUBSETS)
    single = {t for m, (t, *rest) in mixtures["pretraining"].items() if m.startswith("pt1-") and not rest}
    counts = {"cka_biased": len(single) * (len(single) - 1) // 2, "ftwb1": len(ftwb1_tasks) * (len(tasks) - 1)}
    counts |= {f"cka_{estimator}": counts["cka_biased"] for estimator in ("debiased", "calibrated", "mutual_knn")}
    for target, n in correlation[correlation.tasks == "all"].groupby("target").n:
        assert (n == counts[target]).all(), target
    names = ["similarity"] + [f"vs_{c}" for c in ("cka", "ftwb1") if any(t.startswith(c) for t in planned)]
    for name in names:
        assert (folder / f"figures/{name}.png").read_bytes().startswith(PNG_SIGNATURE), name
        assert (folder / f"figures/{name}.pdf").exists() and (folder / f"figures/{name}.csv").exists()


def recompute_similarity(results: Path, checkpoint: Path, pair: tuple[str, str], settings: dict) -> dict[str, float]:
    """similarity(a, b) by the definition, apart from the library: the seeded draw re-derived (SeedSequence of
    [seed, canonical index + 1], `batch_size` distinct items per batch), each batch at its stored width, the
    cross-entropy of every non-pad next token written out, `torch.autograd.grad`, the cosines in float64."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from worldrep.tasks import TASK_NAMES

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    parameters = list(model.parameters())
    embedding = model.get_input_embeddings().weight
    digits = [VOCAB[str(d)] for d in range(10)]
    grads = {}
    for task in pair:
        with np.load(results / f"datasets/pretraining/{task}/train.npz") as data:
            tokens = data["tokens"]
        rng = np.random.default_rng(np.random.SeedSequence([settings["seed"], TASK_NAMES.index(task) + 1]))
        grads[task] = []
        for _ in range(settings["batches"]):
            rows = rng.choice(len(tokens), settings["batch_size"], replace=False)
            batch = torch.from_numpy(tokens[rows].astype(np.int64))
            logits = model(input_ids=batch[:, :-1]).logits
            targets = batch[:, 1:]
            losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            loss = (losses * (targets != PAD_ID)).sum() / (targets != PAD_ID).sum()
            everything = torch.autograd.grad(loss, parameters)
            by_name = dict(zip([id(p) for p in parameters], everything))
            grads[task].append({"all": torch.cat([g.reshape(-1) for g in everything]).double(),
                                "digit_embeddings": by_name[id(embedding)][digits].reshape(-1).double()})
    return {name: float(np.mean([F.cosine_similarity(ga[name], gb[name], dim=0).item()
                                 for ga, gb in zip(*grads.values())]))
            for name in G.PARAMETER_SETS}
