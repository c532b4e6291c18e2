"""Linear CKA, biased and debiased (METHOD §12): the invariances CKA is defined by, agreement between the
feature-space and n×n kernel forms, references written here from the textbook definitions, and the family
matrices / pair selections built from a model × model matrix."""
from __future__ import annotations

from itertools import combinations, permutations
from pathlib import Path

import numpy as np
import pytest
import yaml

from worldrep.cka import (cka_matrices, cka_matrix, debiased_cka, disjoint_pairs, family_matrix, kernel_cka,
                          kernel_debiased_cka, linear_cka, mutual_knn_matrix, nearest_neighbours, null_cka,
                          pair_sums, pooled_pair_values, same_seed_pair_values)

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = {"biased": linear_cka, "debiased": debiased_cka}
SEEDS = [0, 1, 2]


def related(seed: int, n: int = 60, dx: int = 8, dy: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """X [n, dx] with an offset, and Y [n, dy] = a noisy linear read-out of X: CKA well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dx)) * rng.uniform(0.5, 3.0, dx) + rng.normal(0, 4, dx)
    Y = X @ rng.standard_normal((dx, dy)) + 2.0 * rng.standard_normal((n, dy))
    return X, Y


def orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


# ---------------------------------------------------------------------------------------------------------
# References written from the definitions, independent of worldrep.cka.


def reference_biased(X, Y):
    """⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F) with K = XXᵀ, L = YYᵀ, H = I − 11ᵀ/n, all built explicitly."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    Kc, Lc = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.sum(Kc * Lc) / np.sqrt(np.sum(Kc * Kc) * np.sum(Lc * Lc))


def reference_hsic_u(K, L):
    """Song et al. (2012), eq. 5: HSIC_u = (n choose 4)⁻¹ Σ_{i<j<q<r} h_ijqr, where
    h_ijqr = (1/24) Σ over the 24 orderings (s, t, u, v) of (i, j, q, r) of K_st L_st + K_st L_uv − 2 K_st L_su.
    Uses only off-diagonal kernel entries, on the raw (uncentred) kernels."""
    n = len(K)
    total = 0.0
    quadruples = list(combinations(range(n), 4))
    for quad in quadruples:
        h = sum(K[s, t] * L[s, t] + K[s, t] * L[u, v] - 2 * K[s, t] * L[s, u] for s, t, u, v in permutations(quad))
        total += h / 24
    return total / len(quadruples)


def reference_debiased(X, Y):
    K, L = X @ X.T, Y @ Y.T
    return reference_hsic_u(K, L) / np.sqrt(reference_hsic_u(K, K) * reference_hsic_u(L, L))


@pytest.mark.parametrize("seed", SEEDS)
def test_biased_matches_the_explicit_kernel_reference(seed):
    X, Y = related(seed)
    value = reference_biased(X, Y)
    assert 0.2 < value < 0.95
    assert linear_cka(X, Y) == pytest.approx(value, abs=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_debiased_matches_the_textbook_u_statistic(seed):
    """Tiny n (the reference loops over all 4-tuples); the raw, uncentred data also checks that HSIC_u does not
    see a constant shift of the features."""
    X, Y = related(seed, n=8, dx=3, dy=2)
    value = reference_debiased(X, Y)
    assert abs(value - reference_biased(X, Y)) > 1e-3  # the two estimators really differ at this n
    assert debiased_cka(X, Y) == pytest.approx(value, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Feature space == kernel space.


@pytest.mark.parametrize("n, dx, dy", [(40, 5, 3), (25, 60, 80), (120, 30, 30), (12, 12, 4), (300, 7, 200)])
def test_feature_and_kernel_forms_agree(n, dx, dy):
    rng = np.random.default_rng(n + dx + dy)
    X = rng.standard_normal((n, dx)) + 1.5
    Y = np.hstack([X[:, :1], rng.standard_normal((n, dy - 1))]) if dy > 1 else X[:, :1]
    assert linear_cka(X, Y) == pytest.approx(kernel_cka(X, Y), abs=1e-6)
    assert debiased_cka(X, Y) == pytest.approx(kernel_debiased_cka(X, Y), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Properties (both estimators).


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("seed", SEEDS)
def test_identity_and_symmetry(name, seed):
    cka = ESTIMATORS[name]
    X, Y = related(seed)
    assert cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert cka(X, Y) == pytest.approx(cka(Y, X), abs=1e-12)
    assert cka(X, Y) < 0.95


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("seed", SEEDS)
def test_invariant_to_rotation_isotropic_scaling_and_translation(name, seed):
    cka = ESTIMATORS[name]
    X, Y = related(seed)
    rng = np.random.default_rng(100 + seed)
    value = cka(X, Y)
    assert cka(X @ orthogonal(rng, X.shape[1]), Y) == pytest.approx(value, abs=1e-10)
    assert cka(X, Y @ orthogonal(rng, Y.shape[1])) == pytest.approx(value, abs=1e-10)
    assert cka(7.5 * X, 0.01 * Y) == pytest.approx(value, abs=1e-10)
    assert cka(X + rng.normal(0, 50, X.shape[1]), Y - 3.0) == pytest.approx(value, abs=1e-10)


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("seed", SEEDS)
def test_not_invariant_to_an_anisotropic_linear_map(name, seed):
    """CKA is not a CCA: stretching one direction 20× (then rotating) is invertible but changes the value."""
    cka = ESTIMATORS[name]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((100, 6))
    A = np.diag([1, 1, 1, 1, 1, 20.0]) @ orthogonal(rng, 6)
    assert cka(X, X) - cka(X @ A, X) > 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_debiased_is_near_zero_for_independent_wide_features(seed):
    """With d close to n the biased estimator sees structure in pure noise; the debiased one does not."""
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((200, 150)), rng.standard_normal((200, 150))
    assert linear_cka(X, Y) > 0.3
    assert abs(debiased_cka(X, Y)) < 0.05


def test_rejects_misaligned_rows_and_too_few_rows():
    X = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ValueError, match="rows"):
        linear_cka(X, X[:-1])
    with pytest.raises(ValueError, match="n >= 4"):
        debiased_cka(X[:3], X[:3])


# ---------------------------------------------------------------------------------------------------------
# Many models.


def test_cka_matrix_equals_pairwise_calls():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((80, 10))
    features = [base @ rng.standard_normal((10, d)) + rng.standard_normal((80, d)) + 2.0 for d in (10, 4, 25, 10, 7)]
    both = cka_matrices(features)
    for name, cka in ESTIMATORS.items():
        matrix = cka_matrix(features, debiased=name == "debiased")
        np.testing.assert_allclose(both[name], matrix, atol=1e-14)
        expected = np.array([[cka(a, b) for b in features] for a in features])
        np.testing.assert_allclose(matrix, expected, atol=1e-12)
        np.testing.assert_array_equal(matrix, matrix.T)
        assert np.ptp(matrix[np.triu_indices(5, 1)]) > 0.1  # the pairs really differ


def test_cka_matrix_rejects_models_with_different_cities():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same rows"):
        cka_matrix([rng.standard_normal((10, 3)), rng.standard_normal((9, 3))])


# ---------------------------------------------------------------------------------------------------------
# Family matrices: 7 variants × 3 seeds, models ordered [(v, s) for v in variants for s in seeds].

VARIANTS, FAMILY_SEEDS = list(range(1, 8)), [42, 1, 2]


def synthetic_values(seeds=FAMILY_SEEDS) -> np.ndarray:
    """A symmetric model × model matrix with self-pairs = 1 and a few hand-set blocks."""
    S = len(seeds)
    M = len(VARIANTS) * S
    rng = np.random.default_rng(0)
    values = rng.uniform(0.2, 0.4, (M, M))
    values = (values + values.T) / 2

    def put(a, b, block):  # variants a, b are 1-based; block[s, s'] = CKA(a seed s, b seed s')
        rows, cols = slice((a - 1) * S, a * S), slice((b - 1) * S, b * S)
        values[rows, cols], values[cols, rows] = block, np.asarray(block).T

    if S == 3:
        # variant 1 vs itself: cross-seed pairs (42,1)=0.5, (42,2)=0.6, (1,2)=0.7
        put(1, 1, [[1.0, 0.5, 0.6], [0.5, 1.0, 0.7], [0.6, 0.7, 1.0]])
        put(2, 5, np.arange(1, 10).reshape(3, 3) / 10)  # 0.1 .. 0.9, row = seed of variant 2
    np.fill_diagonal(values, 1.0)
    return values


def test_family_matrix_hand_computed_cells():
    mean, sem, n = family_matrix(synthetic_values(), VARIANTS, FAMILY_SEEDS)
    assert mean.shape == sem.shape == n.shape == (7, 7)
    # diagonal: mean of 0.5, 0.6, 0.7 only; with the three self-pairs of 1 (9 values) it would be 0.7333
    assert mean[0, 0] == pytest.approx(0.6, abs=1e-12)
    assert sem[0, 0] == pytest.approx(0.0471404521, abs=1e-9)  # sqrt(0.02/3) / sqrt(3)
    # off-diagonal: all nine of 0.1 .. 0.9, same-seed and cross-seed
    assert mean[1, 4] == mean[4, 1] == pytest.approx(0.5, abs=1e-12)
    assert sem[1, 4] == sem[4, 1] == pytest.approx(0.0860662966, abs=1e-9)  # sqrt(0.6/9) / 3
    assert (n[np.eye(7, dtype=bool)] == 3).all() and (n[~np.eye(7, dtype=bool)] == 9).all()
    np.testing.assert_allclose(mean, mean.T, atol=1e-15)
    assert 0.2 < mean[3, 6] < 0.4 and 0.2 < mean[5, 5] < 0.4


def test_family_matrix_is_generic_in_the_number_of_seeds():
    seeds = [42, 1, 2, 3]
    values = synthetic_values(seeds)
    mean, sem, n = family_matrix(values, VARIANTS, seeds)
    assert n[0, 0] == 6 and n[0, 1] == 16
    block = values[4:8, 4:8]  # variant 2, seeds × seeds
    cross_seed = block[np.triu_indices(4, 1)]
    assert mean[1, 1] == pytest.approx(cross_seed.mean(), abs=1e-12)
    assert sem[1, 1] == pytest.approx(cross_seed.std() / np.sqrt(6), abs=1e-12)


def test_family_matrix_rejects_wrong_shape_and_asymmetry():
    values = synthetic_values()
    with pytest.raises(ValueError, match="21x21"):
        family_matrix(values[:20, :20], VARIANTS, FAMILY_SEEDS)
    values[0, 5] += 0.1
    with pytest.raises(ValueError, match="symmetric"):
        family_matrix(values, VARIANTS, FAMILY_SEEDS)


def test_pooled_and_same_seed_pair_values():
    values = synthetic_values()
    pairs = [(2, 5), (1, 3)]
    pooled = pooled_pair_values(values, VARIANTS, FAMILY_SEEDS, pairs)
    assert pooled[:9] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], abs=1e-12)
    assert pooled[9:] == pytest.approx(values[0:3, 6:9].ravel().tolist(), abs=1e-12)
    per_seed = same_seed_pair_values(values, VARIANTS, FAMILY_SEEDS, pairs)
    assert list(per_seed) == [42, 1, 2]
    assert [v[0] for v in per_seed.values()] == pytest.approx([0.1, 0.5, 0.9], abs=1e-12)
    assert per_seed[1][1] == pytest.approx(values[1, 7], abs=1e-12)  # variant 1 seed 1 vs variant 3 seed 1


# ---------------------------------------------------------------------------------------------------------
# Disjoint task sets, from the paper config's mixture tables (METHOD §4.1).

PRETRAINING = yaml.safe_load((ROOT / "config/config.yaml").read_text())["mixtures"]["pretraining"]


def task_sets(family: str, variants=range(1, 7)) -> dict[int, tuple[str, ...]]:
    return {k: tuple(PRETRAINING[f"{family}-{k}"]) for k in variants}


@pytest.mark.parametrize("family, count", [("pt1", 15), ("pt2", 10), ("pt3", 5)])
def test_disjoint_pair_counts_match_the_paper(family, count):
    assert len(disjoint_pairs(task_sets(family))) == count


def test_disjoint_pairs_by_hand():
    assert disjoint_pairs(task_sets("pt2")) == [(1, 2), (1, 3), (1, 6), (2, 3), (2, 4), (3, 4), (3, 5), (4, 5),
                                                 (4, 6), (5, 6)]
    assert disjoint_pairs(task_sets("pt3")) == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    # pt2-1 (D, T) and pt2-4 (Cr, D) share distance
    assert (1, 4) not in disjoint_pairs(task_sets("pt2"))
    assert len(disjoint_pairs(task_sets("pt1", range(1, 8)))) == 21


# ---- the single-task family across conditions (METHOD Appendix C.2, C.4) ----------------------------------------

def test_single_task_summary_means_the_right_cells():
    """distance's row/column off the diagonal vs the other pairs, per estimator, at the asked layer only."""
    import pandas as pd

    from worldrep.cka import single_task_summary

    tasks = {"pt1-1": "distance", "pt1-2": "trianglearea", "pt1-3": "angle"}
    values = {("pt1-1", "pt1-2"): 0.2, ("pt1-1", "pt1-3"): 0.4, ("pt1-2", "pt1-3"): 0.9}
    cells = []
    for layer, offset in ((5, 0.0), (6, 0.05)):
        for estimator, scale in (("biased", 1.0), ("debiased", 0.5)):
            for a in tasks:
                for b in tasks:
                    v = 1.0 if a == b else values.get((a, b), values.get((b, a)))
                    cells.append({"layer": layer, "estimator": estimator, "row": a, "column": b,
                                  "mean": scale * v + offset})
    summary = single_task_summary(pd.DataFrame(cells), tasks, layer=5).set_index("estimator")
    assert summary.loc["biased", "anchor_vs_others"] == pytest.approx(0.3)
    assert summary.loc["biased", "others_vs_others"] == pytest.approx(0.9)
    assert summary.loc["debiased", "anchor_vs_others"] == pytest.approx(0.15)
    assert summary.loc["debiased", "n_tasks"] == 3
    without = single_task_summary(pd.DataFrame(cells), tasks, layer=5, anchor="compass")
    assert without["anchor_vs_others"].isna().all()
    assert without.set_index("estimator").loc["biased", "others_vs_others"] == pytest.approx(0.5)


def test_condition_tables_against_direct_cka_and_probe_rows():
    """Two conditions of three single-task models (one seed): the summary equals linear CKA of the models' features
    computed directly, Atlantis rows excluded; the probe rows are the final rows at each condition's layer."""
    import pandas as pd

    from worldrep.cka import linear_cka, single_task_condition_tables

    rng = np.random.default_rng(3)
    ids = np.arange(1000, 1060)
    atlantis = set(ids[-10:].tolist())
    tasks = {"pt1-1": "distance", "pt1-6": "perimeter", "pt1-7": "crossing"}
    features, groups = {}, {}
    for label, suffix, layer in (("clean", "", 5), ("noise30", "-noise30", 4)):
        runs = {f"{m}{suffix}_s42": m for m in tasks}
        for run in runs:
            features[run] = {layer: rng.normal(size=(len(ids), 6)), 6: rng.normal(size=(len(ids), 6))}
        probes = {run: pd.DataFrame({"step": ["final", "final", "10"], "layer": [layer, 6, layer],
                                     "r2_x": [0.1 * i, 9, 9], "r2_y": [0.3 * i, 9, 9], "r2_mean": [0.2 * i, 9, 9]})
                  for i, run in enumerate(runs)}
        groups[label] = {"runs": list(runs), "mixtures": runs, "seeds": {m: [42] for m in tasks}, "layer": layer,
                         "paths": {run: run for run in runs}, "probes": probes, "columns": {"level": len(suffix)}}
    summary, matrices, probes = single_task_condition_tables(groups, tasks, atlantis,
                                                             lambda run: (ids, features[run]))
    keep = ~np.isin(ids, list(atlantis))
    for label, group in groups.items():
        a, b, c = (features[run][group["layer"]][keep] for run in group["runs"])
        row = summary[(summary["group"] == label) & (summary["estimator"] == "biased")].iloc[0]
        assert row["anchor_vs_others"] == pytest.approx((linear_cka(a, b) + linear_cka(a, c)) / 2, rel=1e-9)
        assert row["others_vs_others"] == pytest.approx(linear_cka(b, c), rel=1e-9)
        assert row["mean_probe_r2"] == pytest.approx(0.2) and row["layer"] == group["layer"]
    assert list(summary.columns[:2]) == ["group", "level"] and len(summary) == 4
    assert set(matrices["layer"]) == {4, 5, 6} and len(probes) == 6
    assert probes.groupby("group")["r2_x"].apply(list).to_dict() == {"clean": [0.0, 0.1, 0.2],
                                                                     "noise30": [0.0, 0.1, 0.2]}


def test_cka_vs_generalization_pairs_only_tasks_with_both_models():
    """Single-task models of distance, perimeter and angle, FTWB1 models of distance and perimeter only: the points
    are exactly (D, P) and (P, D), each with its CKA and NI; angle's CKA cells and its NI as an evaluated task are
    left out, as crossing's are."""
    import pandas as pd

    from worldrep.cka import cka_vs_generalization_tables

    variant_task = {"pt1-1": "distance", "pt1-6": "perimeter", "pt1-3": "angle", "pt1-7": "crossing"}
    cka = pd.DataFrame([{"row": a, "column": b, "layer": 5, "estimator": "biased", "mean": 0.1 * i + 0.01 * j}
                        for i, a in enumerate(variant_task) for j, b in enumerate(variant_task)])
    ni = pd.DataFrame([{"seed": "mean", "finetuned_task": x, "evaluated_task": y, "ni": 10 * i + j}
                       for i, x in enumerate(["distance", "perimeter"])
                       for j, y in enumerate(["distance", "perimeter", "angle", "crossing"])])
    points, fit = cka_vs_generalization_tables(cka, ni, variant_task, 5)
    got = {(r.finetuned_task, r.evaluated_task): (round(r.cka, 6), r.ni) for r in points.itertuples()}
    assert got == {("distance", "perimeter"): (0.01, 1), ("perimeter", "distance"): (0.1, 10)}
    assert fit["n"].tolist() == [2] and np.isnan(fit["r"].iloc[0])  # two points: no fit


# --------------------------------------------------------------------------------------------------------
# Calibrated CKA (a permutation null) and mutual k-NN alignment.


def test_the_null_mean_is_the_mean_over_every_permutation():
    """On 7 cities every one of the 5,040 row orders can be tried: the plain mean of linear_cka(X_a, X_b[order])
    over all of them is null_cka's closed form, to rounding, for every pair and for a model with itself. So
    calibrated CKA, observed minus that mean, is exactly 0 in expectation under the null."""
    rng = np.random.default_rng(4)
    features = [rng.standard_normal((7, d)) * rng.uniform(0.5, 3, d) + rng.normal(0, 3, d) for d in (2, 3, 9)]
    null = null_cka(pair_sums(features))
    orders = [list(order) for order in permutations(range(7))]
    for a in range(3):
        for b in range(3):
            plain = np.mean([linear_cka(features[a], features[b][order]) for order in orders])
            assert null[a, b] == pytest.approx(plain, rel=1e-12, abs=1e-15), (a, b)
    np.testing.assert_array_equal(null, null.T)
    calibrated = [cka_matrices([features[0], features[1][order]], {"knn_k": 2})["calibrated"][0, 1] for order in orders]
    assert abs(np.mean(calibrated)) < 1e-12


def test_calibration_removes_what_unrelated_features_share_by_chance():
    """Few cities, many features (the authors' 0.71 between untrained models): unrelated random features have a
    high biased CKA and a calibrated CKA near 0; one model and a rotated copy of it keep a calibrated CKA near 1."""
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((50, 40)), rng.standard_normal((50, 40))
    both = cka_matrices([X, Y, X @ orthogonal(rng, 40)], {"knn_k": 5})
    assert both["biased"][0, 1] > 0.4 and abs(both["calibrated"][0, 1]) < 0.05
    assert both["biased"][0, 2] == pytest.approx(1.0) and both["calibrated"][0, 2] > 0.5
    assert set(both) == {"biased", "debiased", "calibrated", "mutual_knn"}
    assert set(cka_matrices([X, Y])) == {"biased", "debiased"}  # without the config's block: the paper's two


def plain_knn_overlap(X: np.ndarray, Y: np.ndarray, k: int) -> float:
    def neighbours(F, i):
        unit = F / np.linalg.norm(F, axis=1, keepdims=True)
        ranked = sorted((-float(unit[i] @ unit[j]), j) for j in range(len(F)) if j != i)
        return {j for _, j in ranked[:k]}
    return float(np.mean([len(neighbours(X, i) & neighbours(Y, i)) / k for i in range(len(X))]))


def test_mutual_knn_equals_a_plain_loop_and_has_its_invariances():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((30, 5))
    Y = X @ rng.standard_normal((5, 7)) + 0.8 * rng.standard_normal((30, 7))
    Z = rng.standard_normal((30, 4))
    values = mutual_knn_matrix([X, Y, Z, 3.0 * X @ orthogonal(rng, 5)], k=4)
    for (a, A), (b, B) in combinations(enumerate([X, Y, Z]), 2):
        assert values[a, b] == pytest.approx(plain_knn_overlap(A, B, 4), abs=1e-15) and values[b, a] == values[a, b]
    assert values[0, 3] == 1.0 and np.all(np.diag(values) == 1.0)  # cosine neighbours: rotation and scale
    assert values[0, 1] > values[0, 2] + 0.2  # a noisy read-out of X shares more neighbours than noise does
    np.testing.assert_array_equal(nearest_neighbours(Y, 4, chunk=7), nearest_neighbours(Y, 4))  # chunks: same
    with pytest.raises(ValueError, match="knn_k = 30"):
        nearest_neighbours(X, 30)
