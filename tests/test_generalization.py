"""Normalized improvement and the generalization matrices (METHOD §9).

Expected values are computed by hand from the spec's formulas (the arithmetic is in the comments), and the pair
labels and their order are restated from the §4.2 table, not read back from the module.
"""
import math

import numpy as np
import pandas as pd
import pytest

from worldrep.generalization import (better, best_teacher_deviation, deviation_matrix, ftwb1_matrix, ftwb2_matrix,
                                     ni_table, normalized_improvement, normalized_improvements, pair_label)

CANONICAL = ["distance", "trianglearea", "angle", "compass", "inside", "perimeter", "crossing"]
ERROR_TASKS = {"distance", "trianglearea", "angle", "perimeter"}
# §4.2: ftwb2 index -> pair as listed, and its display label
FTWB2 = {
    1: (["distance", "trianglearea"], "D,T"), 2: (["angle", "compass"], "A,Co"), 3: (["inside", "perimeter"], "I,P"),
    4: (["crossing", "distance"], "D,Cr"), 5: (["trianglearea", "angle"], "T,A"), 6: (["compass", "inside"], "Co,I"),
    7: (["perimeter", "crossing"], "P,Cr"), 8: (["distance", "angle"], "D,A"),
    9: (["trianglearea", "compass"], "T,Co"), 10: (["angle", "inside"], "A,I"),
    11: (["compass", "perimeter"], "Co,P"), 12: (["inside", "crossing"], "I,Cr"),
    13: (["perimeter", "distance"], "D,P"), 14: (["crossing", "trianglearea"], "T,Cr"),
    15: (["distance", "compass"], "D,Co"), 16: (["trianglearea", "inside"], "T,I"),
    17: (["angle", "perimeter"], "A,P"), 18: (["compass", "crossing"], "Co,Cr"),
    19: (["inside", "distance"], "D,I"), 20: (["perimeter", "trianglearea"], "T,P"),
    21: (["crossing", "angle"], "A,Cr"),
}
FULL_MIXES = {f"ftwb1-{k + 1}": [t] for k, t in enumerate(CANONICAL)} | {
    f"ftwb2-{i}": pair for i, (pair, _) in FTWB2.items()}


# ---- the formula -----------------------------------------------------------------------------------------

# (v, b_std, b_atl, higher_is_better, expected NI)
FORMULA_CASES = [
    # error tasks, normal log ratio: ln(b_atl / v) / ln(b_atl / b_std)
    pytest.param(100.0, 10.0, 1000.0, False, 0.5, id="log-ratio: ln(10)/ln(100)"),
    pytest.param(10.0, 10.0, 1000.0, False, 1.0, id="log-ratio: v = b_std"),
    pytest.param(1000.0, 10.0, 1000.0, False, 0.0, id="log-ratio: v = b_atl"),
    pytest.param(50.0, 20.0, 200.0, False, math.log(4) / math.log(10), id="log-ratio: ln(4)/ln(10)"),
    pytest.param(1.0, 10.0, 1000.0, False, 1.5, id="log-ratio: ln(1000)/ln(100) = 1.5, not clipped"),
    pytest.param(0.1, 10.0, 1000.0, False, 1.5, id="log-ratio: ln(1e4)/ln(100) = 2 clipped to 1.5"),
    pytest.param(2000.0, 10.0, 1000.0, False, 0.0, id="log-ratio: worse than b_atl is negative, clipped to 0"),
    # b_std >= b_atl: the piecewise rule, in order. The log ratio would give 0.485 and 0 (clipped) here.
    pytest.param(70.0, 100.0, 50.0, False, 0.0, id="piecewise b_std>b_atl: v >= b_atl -> 0 (checked first)"),
    pytest.param(40.0, 100.0, 50.0, False, 1.0, id="piecewise b_std>b_atl: v <= b_std -> 1"),
    pytest.param(50.0, 50.0, 50.0, False, 0.0, id="piecewise b_std=b_atl: v = b_atl -> 0"),
    pytest.param(49.0, 50.0, 50.0, False, 1.0, id="piecewise b_std=b_atl: v < b_std -> 1"),
    # a value <= 0. b_std = 0: the log ratio would give ln(4)/ln(inf) = 0; the linear outcome gives 75/100.
    pytest.param(25.0, 0.0, 100.0, False, 0.75, id="piecewise b_std=0: linear (100-25)/(100-0)"),
    pytest.param(120.0, 0.0, 100.0, False, 0.0, id="piecewise b_std=0: v >= b_atl -> 0"),
    pytest.param(0.0, 0.0, 100.0, False, 1.0, id="piecewise b_std=0: v <= b_std -> 1"),
    pytest.param(0.0, 10.0, 100.0, False, 1.0, id="piecewise v=0: v <= b_std -> 1 (log ratio: inf -> 1.5)"),
    pytest.param(5.0, -10.0, 100.0, False, 95 / 110, id="piecewise b_std<0: linear (100-5)/(100+10)"),
    pytest.param(0.0, 0.0, 0.0, False, 0.0, id="piecewise b_atl=0: v >= b_atl -> 0"),
    # accuracy tasks: (v - b_atl) / (b_std - b_atl), 0 if b_std <= b_atl
    pytest.param(0.7, 0.9, 0.5, True, 0.5, id="accuracy: 0.2/0.4"),
    pytest.param(0.9, 0.9, 0.5, True, 1.0, id="accuracy: v = b_std"),
    pytest.param(0.3, 0.9, 0.5, True, 0.0, id="accuracy: below b_atl clipped to 0"),
    pytest.param(1.0, 0.6, 0.5, True, 1.5, id="accuracy: 0.5/0.1 = 5 clipped to 1.5"),
    pytest.param(0.9, 0.5, 0.6, True, 0.0, id="accuracy: b_std < b_atl -> 0"),
    pytest.param(0.9, 0.5, 0.5, True, 0.0, id="accuracy: b_std = b_atl -> 0, no division"),
]


@pytest.mark.parametrize("v, b_std, b_atl, higher, expected", FORMULA_CASES)
def test_normalized_improvement(v, b_std, b_atl, higher, expected):
    assert normalized_improvement(v, b_std, b_atl, higher) == pytest.approx(expected, abs=1e-12)
    vectorised = normalized_improvements([v], [b_std], [b_atl], [higher])
    assert vectorised.shape == (1,) and vectorised[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("higher", [False, True])
@pytest.mark.parametrize("which", range(3))
def test_nan_input_gives_nan(which, higher):
    values = [0.5, 0.9, 0.2]
    values[which] = math.nan
    assert math.isnan(normalized_improvement(*values, higher))
    assert np.isnan(normalized_improvements(*values, higher))


def test_vectorised_matches_reference_on_a_grid():
    grid = [-1.0, 0.0, 0.3, 1.0, 2.0, 10.0, 100.0, math.nan]
    v, b_std, b_atl, higher = (a.ravel() for a in np.meshgrid(grid, grid, grid, [False, True], indexing="ij"))
    expected = [normalized_improvement(*x) for x in zip(v, b_std, b_atl, higher)]
    np.testing.assert_array_equal(normalized_improvements(v, b_std, b_atl, higher), expected)
    assert np.nanmin(expected) == 0.0 and np.nanmax(expected) == 1.5


def test_better_picks_lower_error_and_higher_accuracy():
    assert better(3.0, 5.0, False) == 3.0
    assert better(5.0, 3.0, False) == 3.0
    assert better(0.3, 0.5, True) == 0.5
    assert better(0.5, 0.3, True) == 0.5
    np.testing.assert_array_equal(better(np.array([1.0, 0.2]), np.array([2.0, 0.8]), np.array([False, True])),
                                  [1.0, 0.8])
    assert math.isnan(better(math.nan, 1.0, False))


def test_pair_label_uses_canonical_order():
    for pair, label in FTWB2.values():
        assert pair_label(pair) == label
        assert pair_label(pair[::-1]) == label


# ---- a small table, computed by hand ---------------------------------------------------------------------
# Tasks distance (error) and compass (accuracy); seeds 42 and 1; mixes ftwb1-1 (D), ftwb1-4 (Co), ftwb2-15 (D,Co).
# Base pt7:       seed 42: distance std 10, atl 1000; compass std 0.9, atl 0.5
#                 seed 1:  distance std 10, atl 10000; compass std 0.6, atl 0.4
# Atlantis metrics v of the fine-tuned runs, and their NI:
#   ftwb1-1 s42: D 100 -> ln10/ln100 = 0.5      Co 0.6 -> 0.1/0.4 = 0.25
#   ftwb1-1 s1:  D 10  -> ln1000/ln1000 = 1     Co 0.2 -> -0.2/0.2 = -1 -> 0
#   ftwb1-4 s42: D 1000 -> 0                    Co 0.9 -> 1
#   ftwb1-4 s1:  D 100 -> ln100/ln1000 = 2/3    Co 1.0 -> 0.6/0.2 = 3 -> 1.5
#   ftwb2-15 s42: D 1 -> ln1000/ln100 = 1.5     Co 0.7 -> 0.5
#   ftwb2-15 s1:  D 1000 -> ln10/ln1000 = 1/3   Co 0.5 -> 0.5
BASE = {42: {"distance": (10.0, 1000.0), "compass": (0.9, 0.5)},
        1: {"distance": (10.0, 10000.0), "compass": (0.6, 0.4)}}
ATLANTIS = {
    ("ftwb1-1", 42): {"distance": 100.0, "compass": 0.6}, ("ftwb1-1", 1): {"distance": 10.0, "compass": 0.2},
    ("ftwb1-4", 42): {"distance": 1000.0, "compass": 0.9}, ("ftwb1-4", 1): {"distance": 100.0, "compass": 1.0},
    ("ftwb2-15", 42): {"distance": 1.0, "compass": 0.7}, ("ftwb2-15", 1): {"distance": 1000.0, "compass": 0.5},
}
SMALL_MIXES = {"ftwb1-1": ["distance"], "ftwb1-4": ["compass"], "ftwb2-15": ["distance", "compass"]}
METRIC = {t: ("accuracy" if t not in ERROR_TASKS else "mean_absolute_error") for t in CANONICAL}


def row(mixture, kind, seed, test_set, task, value):
    return {"run": f"{mixture}_s{seed}", "mixture": mixture, "kind": kind, "seed": seed, "test_set": test_set,
            "task": task, "metric": METRIC[task], "value": value, "n": 100, "failures": 0, "precision": "fp32"}


def small_metrics() -> pd.DataFrame:
    rows = []
    for seed in (42, 1):
        for task, (std, atl) in BASE[seed].items():
            rows += [row("pt7", "pretraining", seed, "standard", task, std),
                     row("pt7", "pretraining", seed, "atlantis", task, atl)]
        rows.append(row("pt1-1", "pretraining", seed, "standard", "distance", 1.0))  # not a fine-tuned run
    for (mixture, seed), values in ATLANTIS.items():
        for task, value in values.items():
            rows += [row(mixture, "finetuning", seed, "atlantis", task, value),
                     row(mixture, "finetuning", seed, "standard", task, 0.123)]  # standard sets are not used
    return pd.DataFrame(rows)


def test_ni_table_by_hand():
    ni = ni_table(small_metrics()).set_index(["mixture", "seed", "task"])
    assert len(ni) == 12
    assert list(ni.columns[-4:]) == ["v", "b_std", "b_atl", "ni"]
    assert ni.loc[("ftwb1-4", 1, "distance")].tolist()[-4:] == [100.0, 10.0, 10000.0, pytest.approx(2 / 3)]
    expected = {("ftwb1-1", 42, "distance"): 0.5, ("ftwb1-1", 42, "compass"): 0.25,
                ("ftwb1-1", 1, "distance"): 1.0, ("ftwb1-1", 1, "compass"): 0.0,
                ("ftwb1-4", 42, "distance"): 0.0, ("ftwb1-4", 42, "compass"): 1.0,
                ("ftwb1-4", 1, "compass"): 1.5,
                ("ftwb2-15", 42, "distance"): 1.5, ("ftwb2-15", 42, "compass"): 0.5,
                ("ftwb2-15", 1, "distance"): 1 / 3, ("ftwb2-15", 1, "compass"): 0.5}
    for key, value in expected.items():
        assert ni.loc[key, "ni"] == pytest.approx(value, abs=1e-12), key


def test_ftwb1_matrix_averages_clipped_per_seed_values():
    per_seed, mean = ftwb1_matrix(ni_table(small_metrics()), SMALL_MIXES)
    assert list(per_seed) == [42, 1]
    for matrix in [*per_seed.values(), mean]:
        assert list(matrix.index) == ["distance", "compass"] and list(matrix.columns) == ["distance", "compass"]
    np.testing.assert_allclose(per_seed[42].to_numpy(), [[0.5, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(per_seed[1].to_numpy(), [[1.0, 0.0], [2 / 3, 1.5]])
    # D row, Co column: raw NI 0.25 and -1 -> mean of clipped (0.25 + 0)/2 = 0.125, not clip(-0.375) = 0.
    # Co row, Co column: raw 1 and 3 -> (1 + 1.5)/2 = 1.25, not clip(2) = 1.5.
    np.testing.assert_allclose(mean.to_numpy(), [[0.75, 0.125], [1 / 3, 1.25]])


def test_ftwb2_matrix_by_hand():
    per_seed, mean = ftwb2_matrix(ni_table(small_metrics()), SMALL_MIXES)
    assert list(mean.index) == ["D,Co"] and list(mean.columns) == ["distance", "compass"]
    np.testing.assert_allclose(per_seed[42].to_numpy(), [[1.5, 0.5]])
    np.testing.assert_allclose(mean.to_numpy(), [[(1.5 + 1 / 3) / 2, 0.5]])


def test_best_teacher_deviation_by_hand():
    # distance s42: teachers 100 (ftwb1-1) vs 1000 -> 100, pred 0.5, deviation 1.5 - 0.5 = +1 (synergy)
    # compass  s42: teachers 0.6 vs 0.9 (ftwb1-4) -> 0.9, pred 1, deviation 0.5 - 1 = -0.5 (interference)
    # distance s1:  teachers 10 (ftwb1-1) vs 100 -> 10, pred 1, deviation 1/3 - 1 = -2/3
    # compass  s1:  teachers 0.2 vs 1.0 (ftwb1-4) -> 1.0, pred clip(3) = 1.5, deviation 0.5 - 1.5 = -1
    deviation = best_teacher_deviation(small_metrics(), SMALL_MIXES, SMALL_MIXES)
    got = deviation.set_index(["seed", "task"])
    expected = {(42, "distance"): ("ftwb1-1", 100.0, 1.5, 0.5, 1.0), (42, "compass"): ("ftwb1-4", 0.9, 0.5, 1.0, -0.5),
                (1, "distance"): ("ftwb1-1", 10.0, 1 / 3, 1.0, -2 / 3), (1, "compass"): ("ftwb1-4", 1.0, 0.5, 1.5, -1.0)}
    assert len(got) == 4 and set(got.mixture) == {"ftwb2-15"}
    for key, (teacher, v_teacher, ni, pred, dev) in expected.items():
        cell = got.loc[key]
        assert cell.teacher == teacher
        assert [cell.v_teacher, cell.ni_ftwb2, cell.pred, cell.deviation] == pytest.approx([v_teacher, ni, pred, dev])
    per_seed, mean = deviation_matrix(deviation, SMALL_MIXES)
    assert list(mean.index) == ["D,Co"] and list(mean.columns) == ["distance", "compass"]
    np.testing.assert_allclose(per_seed[1].to_numpy(), [[-2 / 3, -1.0]])
    np.testing.assert_allclose(mean.to_numpy(), [[(1 - 2 / 3) / 2, -0.75]])


def test_swapping_the_teachers_values_swaps_the_pick():
    metrics = small_metrics()
    is_d42 = (metrics.test_set == "atlantis") & (metrics.task == "distance") & (metrics.seed == 42)
    metrics.loc[is_d42 & (metrics.mixture == "ftwb1-1"), "value"] = 1000.0
    metrics.loc[is_d42 & (metrics.mixture == "ftwb1-4"), "value"] = 100.0
    got = best_teacher_deviation(metrics, SMALL_MIXES, SMALL_MIXES).set_index(["seed", "task"])
    assert got.loc[(42, "distance"), "teacher"] == "ftwb1-4"
    assert got.loc[(42, "distance"), "pred"] == pytest.approx(0.5)


# ---- errors on missing inputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("test_set", ["standard", "atlantis"])
def test_missing_base_metric_names_run_and_test_set(test_set):
    metrics = small_metrics()
    drop = (metrics.run == "pt7_s1") & (metrics.test_set == test_set) & (metrics.task == "compass")
    with pytest.raises(ValueError, match=rf"pt7_s1 .*{test_set} test set of task 'compass'"):
        ni_table(metrics[~drop])


def test_missing_base_mixture_is_an_error():
    metrics = small_metrics()
    with pytest.raises(ValueError, match="base mixture 'pt7'"):
        ni_table(metrics[metrics.mixture != "pt7"])


def test_duplicate_rows_are_an_error():
    metrics = small_metrics()
    with pytest.raises(ValueError, match="rows for run 'pt7_s42'"):
        ni_table(pd.concat([metrics, metrics.iloc[[0]]]))


def test_unconfigured_teacher_is_an_error():
    mixes = {"ftwb1-1": ["distance"], "ftwb2-15": ["distance", "compass"]}
    with pytest.raises(ValueError, match=r"ftwb2-15.*D,Co.*\['compass'\]"):
        best_teacher_deviation(small_metrics(), mixes, mixes)


def test_teacher_without_results_for_a_seed_is_an_error():
    metrics = small_metrics()
    with pytest.raises(ValueError, match="teacher run ftwb1-4_s1 .*atlantis test set"):
        best_teacher_deviation(metrics[metrics.run != "ftwb1-4_s1"], SMALL_MIXES, SMALL_MIXES)


def test_configured_mix_without_results_is_an_error():
    metrics = small_metrics()
    with pytest.raises(ValueError, match="ftwb1-4"):
        ftwb1_matrix(ni_table(metrics[metrics.mixture != "ftwb1-4"]), SMALL_MIXES)


# ---- the full grid: shapes, order and labels -------------------------------------------------------------

def full_metrics(seeds=(42, 1)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        for task in CANONICAL:
            low, high = (10.0, 1000.0) if task in ERROR_TASKS else (0.9, 0.5)
            rows += [row("pt7", "pretraining", seed, "standard", task, low),
                     row("pt7", "pretraining", seed, "atlantis", task, high)]
        for mixture in FULL_MIXES:
            for task in CANONICAL:
                value = rng.uniform(1, 2000) if task in ERROR_TASKS else rng.uniform(0.3, 1.0)
                rows.append(row(mixture, "finetuning", seed, "atlantis", task, value))
    return pd.DataFrame(rows).sample(frac=1, random_state=1)  # row order must not matter


def test_full_grid_shapes_order_and_labels():
    metrics = full_metrics()
    mixes = dict(reversed(list(FULL_MIXES.items())))  # dict order must not matter either
    ni = ni_table(metrics)
    per_seed, mean = ftwb1_matrix(ni, mixes)
    assert set(per_seed) == {42, 1}
    assert mean.shape == (7, 7) and list(mean.index) == CANONICAL and list(mean.columns) == CANONICAL
    per_seed2, mean2 = ftwb2_matrix(ni, mixes)
    assert mean2.shape == (21, 7) and list(mean2.columns) == CANONICAL
    assert list(mean2.index) == [FTWB2[i][1] for i in range(1, 22)]
    assert all(m.shape == (21, 7) and list(m.index) == list(mean2.index) for m in per_seed2.values())
    assert not mean.isna().any().any() and not mean2.isna().any().any()
    # one cell against the reference formula on the raw table: ftwb2-13 (D,P), seed 1, angle
    value = lambda mixture, test_set: metrics.loc[(metrics.mixture == mixture) & (metrics.seed == 1)
                                                  & (metrics.test_set == test_set) & (metrics.task == "angle"),
                                                  "value"].item()
    assert per_seed2[1].loc["D,P", "angle"] == normalized_improvement(
        value("ftwb2-13", "atlantis"), value("pt7", "standard"), value("pt7", "atlantis"), False)
    deviation = best_teacher_deviation(metrics, mixes, mixes)
    assert len(deviation) == 21 * 7 * 2
    dev_seed, dev_mean = deviation_matrix(deviation, mixes)
    assert dev_mean.shape == (21, 7) and list(dev_mean.index) == list(mean2.index)
    # NI is monotone in v under fixed baselines, so the better teacher's NI is the larger of the two teachers'
    # NI: deviation = FTWB2 NI - max(FTWB1 NI of j, FTWB1 NI of k), cell by cell
    ftwb1_seed, _ = ftwb1_matrix(ni, mixes)
    for i, (pair, label) in FTWB2.items():
        for seed in (42, 1):
            pred = np.maximum(ftwb1_seed[seed].loc[pair[0]], ftwb1_seed[seed].loc[pair[1]])
            np.testing.assert_allclose(dev_seed[seed].loc[label], per_seed2[seed].loc[label] - pred, atol=1e-12)


def test_reduced_config_one_seed_few_mixes():
    mixes = {"ftwb1-1": ["distance"], "ftwb1-3": ["angle"], "ftwb1-4": ["compass"],
             "ftwb2-8": ["distance", "angle"], "ftwb2-2": ["angle", "compass"]}
    metrics = full_metrics(seeds=(42,))
    metrics = metrics[metrics.mixture.isin(["pt7", *mixes])]
    ni = ni_table(metrics)
    per_seed, mean = ftwb1_matrix(ni, mixes)
    assert list(per_seed) == [42] and list(mean.index) == ["distance", "angle", "compass"]
    pd.testing.assert_frame_equal(per_seed[42], mean)
    _, mean2 = ftwb2_matrix(ni, mixes)
    assert list(mean2.index) == ["A,Co", "D,A"] and list(mean2.columns) == CANONICAL
    _, dev_mean = deviation_matrix(best_teacher_deviation(metrics, mixes, mixes), mixes)
    assert dev_mean.shape == (2, 7)


def test_mean_is_the_cellwise_mean_of_the_per_seed_matrices():
    mixes = {"ftwb1-1": ["distance"], "ftwb1-4": ["compass"], "ftwb1-7": ["crossing"]}
    metrics = full_metrics(seeds=(42, 1, 2))
    per_seed, mean = ftwb1_matrix(ni_table(metrics[metrics.mixture.isin(["pt7", *mixes])]), mixes)
    assert list(per_seed) == [42, 1, 2]
    np.testing.assert_allclose(mean.to_numpy(), np.mean([m.to_numpy() for m in per_seed.values()], axis=0))


def test_a_nan_metric_gives_nan_cells_not_a_smaller_mean():
    metrics = small_metrics()
    metrics.loc[(metrics.run == "ftwb1-1_s1") & (metrics.test_set == "atlantis")
                & (metrics.task == "compass"), "value"] = math.nan  # e.g. an empty test set
    per_seed, mean = ftwb1_matrix(ni_table(metrics), SMALL_MIXES)
    assert math.isnan(per_seed[1].loc["distance", "compass"]) and math.isnan(mean.loc["distance", "compass"])
    assert per_seed[42].loc["distance", "compass"] == pytest.approx(0.25)
    assert mean.loc["distance", "distance"] == pytest.approx(0.75)
