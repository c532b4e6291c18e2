"""Linear CKA between city representations, and the family matrices built from it (METHOD §12).

Two estimators, both on linear kernels K = XXᵀ, L = YYᵀ of X [n, d_x], Y [n, d_y] with rows aligned by city:

- biased (the paper's): CKA = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F), H = I − 11ᵀ/n;
- debiased (Project addition): the same ratio with the unbiased U-statistic HSIC_u of Song et al. (2012)
  in place of the biased ⟨HKH, HLH⟩, not clipped.

Beside them, with the config's `cka` block (Project addition, `cka_matrices`): calibrated CKA, biased CKA minus the
mean of the permutation null over shuffled city rows (exact: `null_cka`), and mutual k-NN alignment.

`kernel_cka` and `kernel_debiased_cka` are those definitions written with n×n matrices; they are the reference.
Everything else works in feature space (d×d products, no n×n matrix), which is what makes the 21×21 family
matrices cheap. Everything is float64: the debiased numerator is a difference of nearly equal terms.

At the end, the tables of the CKA jobs (`family_tables`, `task_count_tables`, `cka_vs_generalization_tables`): what
scripts/cka_*.py write, and what `archive verify --recompute` recomputes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------------------
# Reference definitions (n×n kernels). O(n²d + n³): for tests and the benchmark baseline, not for the workflow.


def centring_matrix(n: int) -> np.ndarray:
    """H = I − 11ᵀ/n [n, n]."""
    return np.eye(n) - np.full((n, n), 1.0 / n)


def kernel_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Biased linear CKA from its definition: ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    H = centring_matrix(len(X))
    Kc, Lc = H @ (X @ X.T) @ H, H @ (Y @ Y.T) @ H
    return float(np.vdot(Kc, Lc) / (np.linalg.norm(Kc) * np.linalg.norm(Lc)))


def kernel_hsic_u(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_u(K, L) of METHOD §12 with explicit n×n matrices; K̃, L̃ are K, L with zero diagonals. Needs n ≥ 4."""
    n = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    ones = np.ones(n)
    trace = np.trace(Kt @ Lt)
    sums = (ones @ Kt @ ones) * (ones @ Lt @ ones) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (ones @ Kt @ Lt @ ones)
    return float((trace + sums - cross) / (n * (n - 3)))


def kernel_debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Debiased linear CKA from its definition: HSIC_u(K, L) / √(HSIC_u(K, K) HSIC_u(L, L)), columns centred."""
    X, Y = centre(X), centre(Y)
    K, L = X @ X.T, Y @ Y.T
    return kernel_hsic_u(K, L) / float(np.sqrt(kernel_hsic_u(K, K) * kernel_hsic_u(L, L)))


# --------------------------------------------------------------------------------------------------------
# Feature-space forms (the ones the workflow uses).


def centre(X: np.ndarray) -> np.ndarray:
    """Column-centred float64 copy of X [n, d]; features are not standardised (METHOD §12)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a [n, d] feature matrix, got shape {X.shape}")
    return X - X.mean(axis=0)


def frobenius2(A: np.ndarray, B: np.ndarray) -> float:
    """‖AᵀB‖²_F = ⟨AAᵀ, BBᵀ⟩_F, through the d_a×d_b product instead of the two n×n kernels."""
    G = A.T @ B
    return float(np.vdot(G, G))


def hsic_u(cross, diag_dot, trace_product, n: int):
    """HSIC_u of METHOD §12 from feature-space sums of column-centred X, Y (scalars or same-shape arrays).

    cross = ‖XᵀY‖²_F, diag_dot = Σ_i K_ii L_ii, trace_product = tr K · tr L (tr K = ‖X‖²_F). Centred columns
    give Xᵀ1 = 0, hence K̃1 = X(Xᵀ1) − diag(K) = −diag(K) and 1ᵀK̃1 = −tr K, so the three terms of §12 become
    tr(K̃L̃) = cross − diag_dot, (1ᵀK̃1)(1ᵀL̃1) = trace_product and 1ᵀK̃L̃1 = diag_dot.
    """
    if n < 4:
        raise ValueError(f"HSIC_u needs n >= 4 rows, got {n}")
    sums = trace_product / ((n - 1) * (n - 2))
    return (cross - diag_dot + sums - 2.0 / (n - 2) * diag_dot) / (n * (n - 3))


def check_rows(X: np.ndarray, Y: np.ndarray) -> None:
    if len(X) != len(Y):
        raise ValueError(f"X and Y must have one row per city, in the same order: {len(X)} vs {len(Y)} rows")


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Biased linear CKA (the paper's): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X [n, d_x], Y [n, d_y]."""
    check_rows(X, Y)
    X, Y = centre(X), centre(Y)
    return frobenius2(X, Y) / float(np.sqrt(frobenius2(X, X) * frobenius2(Y, Y)))


def debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Debiased linear CKA, HSIC_u(K, L) / √(HSIC_u(K, K) HSIC_u(L, L)), in feature space. Not clipped: it can
    be slightly negative for unrelated representations."""
    check_rows(X, Y)
    X, Y = centre(X), centre(Y)
    kx, ky = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)  # diag(K), diag(L) [n]
    n = len(X)
    xy = hsic_u(frobenius2(X, Y), kx @ ky, kx.sum() * ky.sum(), n)
    xx = hsic_u(frobenius2(X, X), kx @ kx, kx.sum() ** 2, n)
    yy = hsic_u(frobenius2(Y, Y), ky @ ky, ky.sum() ** 2, n)
    return float(xy / np.sqrt(xx * yy))


# --------------------------------------------------------------------------------------------------------
# Many models at once.


class PairSums(NamedTuple):
    """Every pairwise quantity both estimators need, over M models sharing the same n rows."""
    cross: np.ndarray     # [M, M] ‖X_aᵀX_b‖²_F
    diag_dot: np.ndarray  # [M, M] Σ_i K^a_ii K^b_ii
    trace: np.ndarray     # [M] tr K^a = ‖X_a‖²_F
    n: int


def pair_sums(features: list[np.ndarray]) -> PairSums:
    """Centre each model once, then one d×d product per pair: the only O(n d²) step of a CKA matrix."""
    centred = [centre(X) for X in features]
    n = len(centred[0])
    if any(len(X) != n for X in centred):
        raise ValueError(f"all models need the same rows (cities); got {[len(X) for X in centred]}")
    M = len(centred)
    cross = np.empty((M, M))
    for a in range(M):
        cross[a, a] = frobenius2(centred[a], centred[a])
        for b in range(a + 1, M):
            cross[a, b] = cross[b, a] = frobenius2(centred[a], centred[b])
    diags = np.stack([np.einsum("ij,ij->i", X, X) for X in centred])  # [M, n] diag(K^a)
    return PairSums(cross, diags @ diags.T, diags.sum(axis=1), n)


def normalise(hsic: np.ndarray) -> np.ndarray:
    """CKA_ab = HSIC_ab / √(HSIC_aa HSIC_bb) for a whole [M, M] matrix of HSIC values."""
    scale = np.sqrt(np.diag(hsic))
    return hsic / np.outer(scale, scale)


def cka_from_sums(sums: PairSums, debiased: bool) -> np.ndarray:
    if not debiased:
        return normalise(sums.cross)  # biased HSIC ∝ ‖X_aᵀX_b‖²_F; the 1/n² factor cancels
    return normalise(hsic_u(sums.cross, sums.diag_dot, np.outer(sums.trace, sums.trace), sums.n))


def cka_matrix(features: list[np.ndarray], debiased: bool = False) -> np.ndarray:
    """Symmetric [M, M] CKA matrix over models, each [n, d_m] with rows aligned by city."""
    return cka_from_sums(pair_sums(features), debiased)


def cka_matrices(features: list[np.ndarray], similarity: dict | None = None) -> dict[str, np.ndarray]:
    """Both estimators from one pass of products ({"biased", "debiased"} -> [M, M]): §12 reports them together.
    With `similarity` (the config's `cka` block) also the calibrated CKA and the mutual k-NN alignment
    ("calibrated", "mutual_knn")."""
    sums = pair_sums(features)
    matrices = {"biased": cka_from_sums(sums, False), "debiased": cka_from_sums(sums, True)}
    if similarity:
        matrices["calibrated"] = matrices["biased"] - null_cka(sums)
        matrices["mutual_knn"] = mutual_knn_matrix(features, similarity["knn_k"])
    return matrices


# --------------------------------------------------------------------------------------------------------
# References that do not need the paper's large-sample assumptions (METHOD §12, Project addition): biased CKA is
# high between unrelated representations when cities are few and features many, so a value means little without
# the value a null gives. Calibrated CKA subtracts the mean of the permutation null (after mlbio-epfl/Aristotelian,
# `calibrated-similarity`); mutual k-NN alignment (platonic-rep) compares neighbourhoods instead of kernels.


def null_cka(sums: PairSums) -> np.ndarray:
    """[M, M] mean biased CKA between model a and model b with b's city rows shuffled, over every permutation: the
    limit of a permutation null's mean, computed exactly.

    Shuffling rows does not change ‖K_b‖_F, so only the numerator's mean is needed. For centred kernels (1ᵀK1 = 0)
    and a uniform permutation P, E[(PK_bPᵀ)_ii] = tr K_b / n and E[(PK_bPᵀ)_ij] = −tr K_b / (n(n−1)) for i ≠ j,
    so E tr(K_a P K_b Pᵀ) = tr K_a tr K_b / n + tr K_a tr K_b / (n(n−1)) = tr K_a tr K_b / (n − 1). Sampling the
    null instead would cost one [n, Σd] × [Σd, Σd] product per shuffle (minutes for a paper family at 100
    shuffles) and add sampling noise; the exact mean needs the traces only."""
    norms = np.sqrt(np.diag(sums.cross))  # ‖K_a‖_F = ‖X_aᵀX_a‖_F
    return np.outer(sums.trace, sums.trace) / (sums.n - 1) / np.outer(norms, norms)


def nearest_neighbours(X: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """[n, k] indices of each row's k nearest other rows by cosine similarity (platonic-rep: rows L2-normalised,
    inner products, self excluded), sorted ascending. In chunks of rows, so that the paper's ~6,000 cities never
    need the whole n×n similarity matrix at once."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if not 0 < k < n:
        raise ValueError(f"knn_k = {k} needs 0 < k < {n} (the number of cities)")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    unit = np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)
    found = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        similarity = unit[start:start + chunk] @ unit.T
        rows = np.arange(len(similarity))
        similarity[rows, start + rows] = -np.inf  # a city is not its own neighbour
        found[start:start + chunk] = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    return np.sort(found, axis=1)


def mutual_knn_matrix(features: list[np.ndarray], k: int) -> np.ndarray:
    """[M, M] mutual k-NN alignment (platonic-rep's `mutual_knn`): the mean over cities of the share of a city's
    k nearest neighbours in model a that are also among its k nearest in model b. 1 on the diagonal."""
    neighbours = [nearest_neighbours(X, k) for X in features]
    if len({len(x) for x in neighbours}) != 1:
        raise ValueError(f"all models need the same rows (cities); got {[len(x) for x in neighbours]}")
    M = len(neighbours)
    values = np.eye(M)
    for a, b in combinations(range(M), 2):
        shared = (neighbours[a][:, :, None] == neighbours[b][:, None, :]).sum(axis=(1, 2))
        values[a, b] = values[b, a] = shared.mean() / k
    return values


# --------------------------------------------------------------------------------------------------------
# Family matrices and pair selections. The model order is [(variant, seed) for variant in variants for seed
# in seeds], so `values` reshapes to blocks[a, s, b, s′] = CKA(variant a seed s, variant b seed s′).


def seed_blocks(values: np.ndarray, variants: list, seeds: list) -> np.ndarray:
    """[V·S, V·S] model matrix -> [V, S, V, S] blocks; checks shape and symmetry."""
    V, S = len(variants), len(seeds)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (V * S, V * S):
        raise ValueError(f"expected a {V * S}x{V * S} matrix for {V} variants x {S} seeds, got {values.shape}")
    if not np.allclose(values, values.T, equal_nan=True):
        raise ValueError("the CKA matrix must be symmetric")
    return values.reshape(V, S, V, S)


def cell_values(blocks: np.ndarray, a: int, b: int) -> np.ndarray:
    """The CKA values averaged into family cell (a, b): all S² seed combinations off the diagonal; on it only
    the S(S−1)/2 distinct cross-seed pairs, never the self-pairs (METHOD §12 Project rule)."""
    block = blocks[a, :, b, :]
    if a != b:
        return block.ravel()
    return block[np.triu_indices(len(block), k=1)]


def family_matrix(values: np.ndarray, variants: list, seeds: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variant × variant (mean, SEM, n) from a model × model CKA matrix; SEM = std (ddof = 0) / √n."""
    blocks = seed_blocks(values, variants, seeds)
    V = len(variants)
    mean, sem, count = np.empty((V, V)), np.empty((V, V)), np.empty((V, V), dtype=int)
    for a in range(V):
        for b in range(V):
            cell = cell_values(blocks, a, b)
            mean[a, b], sem[a, b], count[a, b] = cell.mean(), cell.std() / np.sqrt(len(cell)), len(cell)
    return mean, sem, count


def disjoint_pairs(task_sets: dict) -> list[tuple]:
    """Pairs (a, b) of distinct variants, a before b in the dict's order, that share no task (§12 "CKA vs number
    of tasks"): with variants 1–6 of pt1/pt2/pt3 this keeps 15/10/5 pairs."""
    return [(a, b) for a, b in combinations(task_sets, 2) if not set(task_sets[a]) & set(task_sets[b])]


def pooled_pair_values(values: np.ndarray, variants: list, seeds: list, pairs: list[tuple]) -> list[float]:
    """All S² seed combinations (same-seed and cross-seed alike) of every pair, pooled: pair by pair, then
    (seed of a, seed of b) in `seeds` order."""
    blocks = seed_blocks(values, variants, seeds)
    return [float(v) for a, b in pairs for v in blocks[variants.index(a), :, variants.index(b), :].ravel()]


def same_seed_pair_values(values: np.ndarray, variants: list, seeds: list, pairs: list[tuple]) -> dict:
    """{seed: [CKA(a seed s, b seed s) for each pair]}: the per-seed panels of §12, same-seed pairs only."""
    blocks = seed_blocks(values, variants, seeds)
    return {seed: [float(blocks[variants.index(a), s, variants.index(b), s]) for a, b in pairs]
            for s, seed in enumerate(seeds)}


# --------------------------------------------------------------------------------------------------------
# The tables of the CKA jobs (scripts/cka_family.py, cka_task_count.py, cka_vs_generalization.py; archive
# --recompute). `load(path)` -> (city_ids, {layer: reps}) reads a representation file
# (`representations.load_representations`, passed in: that module imports torch).


def family_tables(runs: Sequence[str], paths: Sequence[Path], variants: Sequence[str], seeds: dict,
                  atlantis_ids, load: Callable, family: str = "",
                  similarity: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, matrix) of one family: every model pair at every extracted layer, both estimators (with
    `similarity`, the calibrated CKA and mutual k-NN too: `cka_matrices`), on the eligible non-Atlantis cities;
    the variant × variant mean ± SEM over seed pairs (`family_matrix`). `runs` are variant-major, seeds in
    `seeds[variant]` order; `paths` their representation files."""
    counts = {variant: len(seeds[variant]) for variant in variants}
    if len(set(counts.values())) != 1:
        raise ValueError(f"family {family}: variants have unequal seed counts {counts}; the seed-averaged matrix "
                         "pairs seeds by position (a replaced seed takes the place of the old one)")
    n_seeds = counts[variants[0]]
    # Each run's variant, seed and seed position, in the order of `runs` (variant-major, seeds in config order).
    variant_of = np.repeat(variants, n_seeds)
    seed_of = np.array([seed for variant in variants for seed in seeds[variant]])
    position_of = np.tile(np.arange(n_seeds), len(variants))
    atlantis = list(atlantis_ids)
    features, reference, layers = [], None, []
    for path in paths:
        ids, reps = load(path)
        keep = ~np.isin(ids, atlantis)  # CKA uses the eligible non-Atlantis cities (§12)
        if reference is None:
            reference = ids[keep]
        elif not np.array_equal(ids[keep], reference):
            raise ValueError(f"{path}: its city IDs differ from {paths[0]}'s")
        if features and sorted(reps) != layers:
            raise ValueError(f"{path}: layers {sorted(reps)} differ from {paths[0]}'s {layers}")
        layers = sorted(reps)  # every extracted layer (`representations.layers`); widths may differ between models
        features.append({layer: reps[layer][keep] for layer in layers})
    pairs, cells = [], []
    for layer in layers:
        for estimator, values in cka_matrices([f[layer] for f in features], similarity).items():
            a, b = np.triu_indices(len(runs), k=1)
            pairs.append(pd.DataFrame({
                "layer": layer, "estimator": estimator, "run_a": np.array(runs)[a], "run_b": np.array(runs)[b],
                "variant_a": variant_of[a], "variant_b": variant_of[b], "seed_a": seed_of[a], "seed_b": seed_of[b],
                "position_a": position_of[a], "position_b": position_of[b], "cka": values[a, b],
            }))
            mean, sem, n = family_matrix(values, list(variants), list(range(n_seeds)))
            rows, columns = np.indices(mean.shape)
            cells.append(pd.DataFrame({"layer": layer, "estimator": estimator, "row": np.array(variants)[rows.ravel()],
                                       "column": np.array(variants)[columns.ravel()], "mean": mean.ravel(),
                                       "sem": sem.ravel(), "n": n.ravel()}))
    return pd.concat(pairs), pd.concat(cells)


TASK_COUNT_COLUMNS = ["family", "k", "layer", "estimator", "variant_a", "seed_a", "position_a", "variant_b",
                      "seed_b", "position_b", "cka"]


def task_count_tables(pairs: dict[str, pd.DataFrame], task_sets: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, summary) of CKA vs number of tasks (§12) from each family's pairs table ({"pt1": pairs, ...}):
    the task-disjoint variant pairs of `task_sets[family]` (variant -> tasks); per (k, layer, estimator) the
    pooled mean ± SEM over every seed combination, and per seed position the same-seed pairs only."""
    values = []
    for family, table in pairs.items():
        chosen = {frozenset(pair) for pair in disjoint_pairs(task_sets[family])}
        keep = [frozenset((a, b)) in chosen for a, b in zip(table.variant_a, table.variant_b)]
        if any(keep):  # (an empty frame in the concat would turn the integer columns into floats)
            values.append(table[keep].assign(family=family, k=int(family.removeprefix("pt"))))
    values = pd.concat(values, ignore_index=True)[TASK_COUNT_COLUMNS] if values else pd.DataFrame(
        columns=TASK_COUNT_COLUMNS)

    def summary(frame, seed):
        cka = frame["cka"].to_numpy()
        sem = cka.std() / np.sqrt(len(cka)) if len(cka) else np.nan  # ddof 0, as the §12 matrices
        return {"seed": seed, "mean": cka.mean() if len(cka) else np.nan, "sem": sem, "n": len(cka)}

    rows = []
    for (k, layer, estimator), group in values.groupby(["k", "layer", "estimator"]):
        base = {"k": k, "layer": layer, "estimator": estimator}
        rows.append(base | summary(group, "pooled"))
        # Same-seed panels pair seeds by position, as the matrices do: a replaced seed (pt1-5: [42, 1, 3]) stands
        # in for the one it replaced. A panel is named after the seed most of its runs have.
        same = group[group.position_a == group.position_b]
        for _, panel in same.groupby("position_a"):
            rows.append(base | summary(panel, str(pd.concat([panel.seed_a, panel.seed_b]).mode().iloc[0])))
    return values, pd.DataFrame(rows, columns=["k", "layer", "estimator", "seed", "mean", "sem", "n"])


def cka_vs_generalization_tables(cka: pd.DataFrame, ftwb1: pd.DataFrame, variant_task: dict,
                                 layer: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, fit) of §12 from the pt1 family matrix and the FTWB1 NI table (generalization/ftwb1_matrix.csv):
    ordered pairs (X, Y), X != Y, of non-crossing tasks with a single-task and an FTWB1 model; x = the `layer`
    seed-averaged single-task CKA, y = the seed-mean FTWB1 NI (fine-tune on X, evaluate Y); Pearson fit per
    estimator (NaN below 3 points or without spread)."""
    from scipy import stats  # lazily, as atlantis_groups: only this job needs it

    excluded = "crossing"  # crossing fails to learn alone (§14)
    cka = cka.query("layer == @layer")
    cka = cka.assign(finetuned_task=cka.row.map(variant_task), evaluated_task=cka.column.map(variant_task))
    ni = ftwb1.query("seed == 'mean'")
    # Both tasks of a pair need a single-task and an FTWB1 model: a single-task model of a task nobody fine-tunes on
    # (a reduced config) has CKA and an NI as the evaluated task, but is not one of the pairs the paper plots.
    tasks = (set(cka.finetuned_task) & set(ni.finetuned_task) & set(ni.evaluated_task)) - {excluded}
    points = cka.merge(ni, on=["finetuned_task", "evaluated_task"])
    points = points[(points.finetuned_task != points.evaluated_task) & points.finetuned_task.isin(tasks)
                    & points.evaluated_task.isin(tasks)]
    points = points[["estimator", "finetuned_task", "evaluated_task", "mean", "ni"]].rename(columns={"mean": "cka"})
    # Every such task must give all its ordered pairs (30 in the paper grid): a silently shorter join would bias r.
    expected = len(tasks) * (len(tasks) - 1)
    for estimator, group in points.groupby("estimator"):
        if len(group) != expected:
            raise ValueError(f"{estimator} CKA vs generalization: {len(group)} points, expected {expected} "
                             f"for {sorted(tasks)}")
    fits = []
    for estimator, group in points.groupby("estimator"):
        x, y = group.cka.to_numpy(), group.ni.to_numpy()
        if len(x) >= 3 and x.std() > 0 and y.std() > 0:
            r, p = stats.pearsonr(x, y)
            slope, intercept = np.polyfit(x, y, 1)
        else:  # too few points (reduced configs): no fit rather than a meaningless one
            r = p = slope = intercept = np.nan
        fits.append({"estimator": estimator, "layer": layer, "n": len(x), "r": r, "r2": r * r, "p": p,
                     "slope": slope, "intercept": intercept})
    return points, pd.DataFrame(fits, columns=["estimator", "layer", "n", "r", "r2", "p", "slope", "intercept"])


def cross_model_table(pairs: Sequence[tuple[str, str]], paths: dict[str, Path], atlantis_ids,
                      load: Callable) -> pd.DataFrame:
    """CKA between models of different architectures (App. B): for each (run_a, run_b) pair, every extracted layer
    of a against every extracted layer of b, both estimators, on the eligible non-Atlantis cities. Linear CKA
    compares Gram matrices, so the two widths (and depths) need not match."""
    atlantis, rows = list(atlantis_ids), []
    for run_a, run_b in pairs:
        (ids_a, reps_a), (ids_b, reps_b) = load(paths[run_a]), load(paths[run_b])
        keep_a, keep_b = ~np.isin(ids_a, atlantis), ~np.isin(ids_b, atlantis)
        if not np.array_equal(ids_a[keep_a], ids_b[keep_b]):
            raise ValueError(f"{paths[run_b]}: its city IDs differ from {paths[run_a]}'s")
        for layer_a in sorted(reps_a):
            for layer_b in sorted(reps_b):
                x, y = reps_a[layer_a][keep_a], reps_b[layer_b][keep_b]
                for estimator, value in (("biased", linear_cka(x, y)), ("debiased", debiased_cka(x, y))):
                    rows.append({"run_a": run_a, "run_b": run_b, "layer_a": layer_a, "layer_b": layer_b,
                                 "width_a": x.shape[1], "width_b": y.shape[1], "estimator": estimator, "cka": value})
    return pd.DataFrame(rows, columns=["run_a", "run_b", "layer_a", "layer_b", "width_a", "width_b", "estimator",
                                       "cka"])


# ---- the single-task family across conditions (label noise, model size: METHOD Appendix C.2, C.4) ---------------
# One summary per group of single-task runs (a noise level, a model size): the seed-averaged task × task CKA matrix of
# its runs (`family_tables`), reduced to two numbers per estimator, with the mean probe R² of its runs.

def single_task_summary(matrix: pd.DataFrame, variant_task: dict[str, str], layer: int,
                        anchor: str = "distance") -> pd.DataFrame:
    """Per estimator at `layer`: the mean off-diagonal CKA between `anchor`'s model and the other tasks' models
    (`anchor_vs_others`, NaN without it), and the mean over pairs of the other tasks (`others_vs_others`). `matrix`
    is a `family_tables` cell table whose rows and columns are single-task mixtures; `variant_task` maps them."""
    cells = matrix[(matrix["layer"] == layer) & (matrix["row"] != matrix["column"])]
    rows = []
    for estimator, frame in cells.groupby("estimator", sort=True):
        row_task, column_task = frame["row"].map(variant_task), frame["column"].map(variant_task)
        with_anchor = (row_task == anchor) | (column_task == anchor)
        rows.append({"estimator": estimator, "layer": layer,
                     "anchor_vs_others": frame.loc[with_anchor, "mean"].mean() if with_anchor.any() else np.nan,
                     "others_vs_others": frame.loc[~with_anchor, "mean"].mean() if (~with_anchor).any() else np.nan,
                     "n_tasks": int(frame["row"].nunique())})
    return pd.DataFrame(rows)


def single_task_condition_tables(groups: dict[str, dict], variant_task: dict[str, str], atlantis_ids,
                                 load: Callable) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary, matrices, probes) over conditions. `groups`: label -> {"runs": [run], "mixtures": {run: mixture},
    "seeds": {mixture: [seeds]}, "paths": {run: representation file}, "probes": {run: probe table}, "layer": the
    analysis layer, "columns": {extra column: value}}; runs mixture-major, seeds in order. The summary has one row
    per (group, estimator); `matrices` every group's family cells; `probes` each run's final R² at the layer."""
    summaries, matrices, probes = [], [], []
    for label, group in groups.items():
        mixtures = list(dict.fromkeys(group["mixtures"][run] for run in group["runs"]))
        _, cells = family_tables(group["runs"], [group["paths"][run] for run in group["runs"]], mixtures,
                                 group["seeds"], atlantis_ids, load, family=label)
        extra = {"group": label, **group["columns"]}
        summary = single_task_summary(cells, variant_task, group["layer"])
        for run in group["runs"]:
            table = group["probes"][run]
            final = table[(table["step"].astype(str) == "final") & (table["layer"] == group["layer"])]
            probes.append({**extra, "run": run, "task": variant_task[group["mixtures"][run]], "layer": group["layer"],
                           "r2_x": float(final["r2_x"].iloc[0]), "r2_y": float(final["r2_y"].iloc[0]),
                           "r2_mean": float(final["r2_mean"].iloc[0])})
        run_r2 = pd.DataFrame([p for p in probes if p["group"] == label])["r2_mean"]
        summaries.append(summary.assign(**extra, mean_probe_r2=run_r2.mean(), n_runs=len(group["runs"])))
        matrices.append(cells.assign(**extra))
    keys = ["group", *next(iter(groups.values()))["columns"]] if groups else ["group"]

    def keys_first(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[keys + [c for c in frame.columns if c not in keys]]

    return (keys_first(pd.concat(summaries, ignore_index=True)), keys_first(pd.concat(matrices, ignore_index=True)),
            keys_first(pd.DataFrame(probes)))
