"""Gradient similarity of the tasks (docs/METHOD.md Appendix C.3): can divergence be predicted before
training? For one pretraining run's first checkpoints (step 0 = its initialization), each pair of tasks' loss
gradients compared by cosine, then set against the single-task CKA (§12) and the FTWB1 generalization (§9).

Definition. For task t and batch b (b = 1..B, `batch_size` items of t's pretraining train split, the same draw at
every checkpoint), g_t^b = ∇θ of t's training loss on that batch (`training.token_loss`: the loss the runs train
on), θ = every parameter, or only the input embedding rows of the ten digit tokens. similarity(t, u) = mean over b
of cos(g_t^b, g_u^b): batch b of one task is paired with batch b of the other, and a task with itself gives exactly 1.

torch and the training loss are imported inside the functions that compute gradients; the matrix and correlation
helpers are numpy/pandas, so the correlation job (scripts/gradient_correlation.py, analysis env) loads neither torch
nor transformers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .tasks import TASK_NAMES, canonical_order
from .tokenizer import PAD_ID, VOCAB

DIGIT_IDS = [VOCAB[str(d)] for d in range(10)]  # ids 88..97 (§5)
PARAMETER_SETS = ("all", "digit_embeddings")
SIMILARITY_COLUMNS = ["step", "parameters", "task_a", "task_b", "cosine", "std", "batches"]
CORRELATION_COLUMNS = ["step", "parameters", "target", "tasks", "n", "pearson_r", "pearson_p", "spearman_r",
                       "spearman_p"]
# Crossing fails to learn alone (§14): its single-task CKA row measures that failure, not a geometry, so every
# correlation is also given without it, as §12 leaves it out of CKA vs generalization.
TASK_SUBSETS = {"all": (), "without_crossing": ("crossing",)}


# ---- the draw and the batches: pure functions of (sizes, seed) ------------------------------------------------

def draw_batches(n_items: int, batches: int, batch_size: int, seed: int, task: str) -> np.ndarray:
    """Row indices [batches, batch_size] into a task's train split: each batch `batch_size` distinct items, the
    batches drawn independently (so a small split may repeat items across batches), from a stream of the seed and
    the task's canonical index alone (METHOD §0)."""
    if batch_size > n_items:
        raise ValueError(f"{task}: a batch of {batch_size} distinct items from a split of {n_items}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, TASK_NAMES.index(task) + 1]))
    return np.stack([rng.choice(n_items, size=batch_size, replace=False) for _ in range(batches)])


def trim_padding(tokens: np.ndarray) -> np.ndarray:
    """A batch [B, W] cut to its longest item, as a training batch is padded (§7.1): pad columns past every item
    add no target."""
    used = np.flatnonzero((tokens != PAD_ID).any(axis=0))
    return tokens[:, : used[-1] + 1]


# ---- cosines and the similarity table --------------------------------------------------------------------------

def cosine_matrix(gram: np.ndarray) -> np.ndarray:
    """Cosines [T, T] from a Gram matrix of T vectors: G_ij / sqrt(G_ii G_jj). A vector with itself, or two equal
    vectors (equal Gram entries), give exactly 1: sqrt(a·a) is a in binary floating point."""
    norms = np.diag(gram)
    if (norms <= 0).any():
        raise ValueError("a zero gradient has no direction: its cosine is undefined")
    return gram / np.sqrt(np.outer(norms, norms))


def similarity_rows(step: int, parameters: str, tasks: list[str], cosines: np.ndarray) -> list[dict]:
    """The long rows of one (step, parameter set): cosines [B, T, T] per batch -> mean and spread (std, ddof 0)
    over the B batches for every ordered pair, the diagonal included."""
    mean, std = cosines.mean(axis=0), cosines.std(axis=0)
    return [{"step": step, "parameters": parameters, "task_a": a, "task_b": b, "cosine": mean[i, j],
             "std": std[i, j], "batches": len(cosines)}
            for i, a in enumerate(tasks) for j, b in enumerate(tasks)]


def first_checkpoints(folder: Path, count: int) -> list[tuple[int, Path]]:
    """(step, directory) of a run's first `count` checkpoints (`step-000000`, ... as training writes them)."""
    found = sorted((int(p.name.removeprefix("step-")), p) for p in Path(folder).glob("step-*") if p.is_dir())
    if len(found) < count:
        raise ValueError(f"{folder} holds {len(found)} checkpoints, fewer than the {count} asked for")
    return found[:count]


# ---- gradients (torch) ----------------------------------------------------------------------------------------

def parameter_gradients(model) -> dict:
    """The gradient now in `model`'s `.grad`s, per parameter set, as float64 vectors: every parameter in
    `named_parameters` order; the input-embedding rows of the digits [10 · hidden], in digit order."""
    import torch

    everything = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    digits = model.get_input_embeddings().weight.grad[DIGIT_IDS].reshape(-1)
    return {"all": everything.double(), "digit_embeddings": digits.double()}


def batch_gradients(model, tokens) -> dict:
    """The gradients per parameter set of the training loss (`token_loss`: mean over the batch's non-pad targets)
    on one batch of token ids [B, W]."""
    from .training import token_loss

    model.zero_grad(set_to_none=True)
    token_loss(model, tokens).backward()
    return parameter_gradients(model)


def gram(vectors: list) -> np.ndarray:
    """G_ij = <v_i, v_j> of float64 vectors, each entry its own dot product: equal vectors give bitwise equal
    entries (a blocked matrix product may sum a diagonal tile in another order than the tile beside it)."""
    import torch

    n = len(vectors)
    out = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = float(torch.dot(vectors[i], vectors[j]))
    return out


def checkpoint_cosines(model, batches: dict, progress=None) -> dict[str, np.ndarray]:
    """Cosines [B, T, T] per parameter set for one model; `batches` is task -> B token tensors [batch, W], tasks
    in matrix order; batch b of every task makes the b-th matrix."""
    tasks = list(batches)
    count = len(next(iter(batches.values())))
    cosines = {name: [] for name in PARAMETER_SETS}
    for b in range(count):
        vectors = {name: [] for name in PARAMETER_SETS}
        for task in tasks:
            grads = batch_gradients(model, batches[task][b])
            for name in PARAMETER_SETS:
                vectors[name].append(grads[name])
            if progress is not None:
                progress.update()
        for name in PARAMETER_SETS:
            cosines[name].append(cosine_matrix(gram(vectors[name])))
    return {name: np.stack(values) for name, values in cosines.items()}


def similarity_table(checkpoints: Path, train_splits: dict[str, Path], count: int, batches: int, batch_size: int,
                     seed: int, log=None) -> pd.DataFrame:
    """The entry point of the gradient job: the long similarity table (`SIMILARITY_COLUMNS`) of the run whose
    checkpoint folder is `checkpoints`, at its first `count` checkpoints, for the tasks of `train_splits` (task ->
    its pretraining train.npz), in canonical order. CPU, fp32: the same inputs give the same bytes."""
    import torch
    from tqdm import tqdm

    from .datasets import load_split
    from .evaluation import load_model

    tasks = canonical_order(train_splits)
    tensors = {}
    for task in tasks:
        tokens = load_split(Path(train_splits[task]).parent, "train")["tokens"]
        rows = draw_batches(len(tokens), batches, batch_size, seed, task)
        tensors[task] = [torch.from_numpy(trim_padding(tokens[r]).astype(np.int64)) for r in rows]
    found = first_checkpoints(checkpoints, count)
    progress = tqdm(total=len(found) * len(tasks) * batches, desc="gradients", unit="batch", file=log,
                    mininterval=10)
    rows = []
    for step, directory in found:
        cosines = checkpoint_cosines(load_model(directory, torch.device("cpu")), tensors, progress)
        for name in PARAMETER_SETS:
            rows += similarity_rows(step, name, tasks, cosines[name])
    progress.close()
    return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)


# ---- against CKA and generalization: pure pandas --------------------------------------------------------------

def cka_targets(cka: pd.DataFrame, variant_task: dict, layer: int) -> pd.DataFrame:
    """The pt1 family matrix (`cka/pt1/matrix.csv`) at `layer` as targets `cka_{estimator}` over unordered pairs
    of distinct tasks (task_a before task_b canonically): CKA is symmetric, so each pair counts once."""
    part = cka[cka["layer"] == layer]
    a, b = part["row"].map(variant_task), part["column"].map(variant_task)
    order = {t: i for i, t in enumerate(TASK_NAMES)}
    keep = a.map(order) < b.map(order)
    return pd.DataFrame({"target": "cka_" + part["estimator"][keep], "task_a": a[keep], "task_b": b[keep],
                         "value": part["mean"][keep]})


def ftwb1_targets(ftwb1: pd.DataFrame) -> pd.DataFrame:
    """The seed-mean FTWB1 NI (`generalization/ftwb1_matrix.csv`) as target `ftwb1` over ordered pairs (fine-tuned
    task_a, evaluated task_b). The diagonal is left out: it is the trained task's own learning, not a transfer, and
    its similarity is 1 by definition."""
    part = ftwb1[(ftwb1["seed"].astype(str) == "mean") & (ftwb1["finetuned_task"] != ftwb1["evaluated_task"])]
    return pd.DataFrame({"target": "ftwb1", "task_a": part["finetuned_task"], "task_b": part["evaluated_task"],
                         "value": part["ni"]})


def pair_points(similarity: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Each target pair with its gradient similarity at every (step, parameter set): the scatter's points, pairs in
    the targets' order."""
    missing = set(zip(targets.task_a, targets.task_b)) - set(zip(similarity.task_a, similarity.task_b))
    if missing:  # a silently shorter join would bias r
        raise ValueError(f"no gradient similarity for the pairs {sorted(missing)}")
    points = targets.merge(similarity[["step", "parameters", "task_a", "task_b", "cosine"]], on=["task_a", "task_b"])
    points = points.sort_values(["target", "step", "parameters"], kind="stable")
    return points[["target", "step", "parameters", "task_a", "task_b", "cosine", "value"]].reset_index(drop=True)


def correlation_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per (step, parameter set, target, task subset): the correlation of similarity and target over the pairs
    (`subspace.correlation`, 14.1's statistics; imported here, as scipy is in the analysis env only)."""
    from .subspace import correlation

    rows = []
    for (step, parameters, target), group in points.groupby(["step", "parameters", "target"], sort=True):
        for subset, left_out in TASK_SUBSETS.items():
            kept = group[~group["task_a"].isin(left_out) & ~group["task_b"].isin(left_out)]
            rows.append({"step": step, "parameters": parameters, "target": target, "tasks": subset,
                         **correlation(kept["cosine"], kept["value"])})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def correlation_tables(similarity: pd.DataFrame, cka: pd.DataFrame | None, ftwb1: pd.DataFrame | None,
                       variant_task: dict, layer: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The entry point of the correlation job: (points, correlation) against the targets the config plans (`cka`
    or `ftwb1` None when it does not)."""
    targets = []
    if cka is not None:
        targets.append(cka_targets(cka, variant_task, layer))
    if ftwb1 is not None:
        targets.append(ftwb1_targets(ftwb1))
    if not targets:
        raise ValueError("nothing to correlate with: neither the pt1 CKA matrix nor the FTWB1 matrix is planned")
    points = pair_points(similarity, pd.concat(targets, ignore_index=True))
    return points, correlation_table(points)
