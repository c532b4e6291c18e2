"""Linear probes from city representations to world coordinates, and the Atlantis reconstruction (METHOD §11).

Pure functions of arrays, in float64. Rows of `reps` [n, d] and `xy` [n, 2] (scaled integer x, y) are the
eligible cities in ascending `city_id` order, as `representations.eligible_cities` gives them. At the end, the
tables of the probe jobs (`probe_tables`, `atlantis_tables`): what scripts/probes.py and
scripts/atlantis_reconstruction.py write, and what `archive verify --recompute` recomputes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

PROBE_SEED = 42
TRAIN_FRACTION = Fraction(3250, 4500)  # the authors' 3,250 train / 1,250 test of ~4,500 cities, kept as a fraction


# ---- the probe -----------------------------------------------------------------------------------------------

def probe_split(n_eligible: int, seed: int = PROBE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a seeded permutation, the first round(n · 3250/4500) rows train.

    Exact rational arithmetic and Python's `round` (half to even, METHOD §0): n = 9 gives 6.5 -> 6 train.
    """
    order = np.random.default_rng(seed).permutation(n_eligible)
    n_train = round(TRAIN_FRACTION * n_eligible)
    return order[:n_train], order[n_train:]


def fit_ols(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary least squares with intercept, no regularisation, no standardisation: (W [d, k], b [k]).

    One least-squares solve of [X, 1] serves every target column: each is an independent regression.
    """
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    design = np.hstack([X, np.ones((len(X), 1))])  # [n, d + 1]
    coef, *_ = np.linalg.lstsq(design, Y, rcond=None)
    return coef[:-1], coef[-1]


def predict(W: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float64) @ W + b


def r2_score(pred: np.ndarray, true: np.ndarray) -> float:
    """1 − SS_res/SS_tot with the mean of `true` (the test set's own mean); NaN for a constant target."""
    ss_tot = np.sum((true - true.mean()) ** 2)
    return float(1.0 - np.sum((true - pred) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def euclidean_errors(pred_xy: np.ndarray, true_xy: np.ndarray) -> np.ndarray:
    """√(Δx² + Δy²) per city [n], in scaled units."""
    delta = np.asarray(pred_xy, dtype=np.float64) - np.asarray(true_xy, dtype=np.float64)
    return np.hypot(delta[:, 0], delta[:, 1])


def probe_metrics(pred_xy: np.ndarray, true_xy: np.ndarray) -> dict[str, float]:
    """R² per coordinate and their mean, MAE per coordinate, mean and median Euclidean error (§11)."""
    pred, true = np.asarray(pred_xy, dtype=np.float64), np.asarray(true_xy, dtype=np.float64)
    r2_x, r2_y = r2_score(pred[:, 0], true[:, 0]), r2_score(pred[:, 1], true[:, 1])
    mae = np.mean(np.abs(pred - true), axis=0)
    errors = euclidean_errors(pred, true)
    return {"r2_x": r2_x, "r2_y": r2_y, "r2_mean": (r2_x + r2_y) / 2, "mae_x": float(mae[0]),
            "mae_y": float(mae[1]), "mean_error": float(errors.mean()), "median_error": float(np.median(errors))}


def fit_ridge_cv(X: np.ndarray, Y: np.ndarray, alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression with intercept, its alpha chosen per target column from `alphas` by leave-one-out squared
    error on (X, Y) alone, i.e. on the probe's train split (sklearn's RidgeCV, exact LOO): (W [d, k], b [k],
    alpha [k]). The intercept is not penalised and the features are not standardised, as in the OLS probe.

    Why beside OLS: with few cities per feature OLS overfits, and random features score well below 0 (the laptop
    world: about −0.6), so a curve's start says more about the probe than about the model. The ridge probe
    scores about 0 there and agrees with OLS where the map is real (the approach of wesg52/world-models)."""
    from sklearn.linear_model import RidgeCV

    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    model = RidgeCV(alphas=np.asarray(alphas, dtype=np.float64), fit_intercept=True, alpha_per_target=True).fit(X, Y)
    return model.coef_.T, np.asarray(model.intercept_), np.atleast_1d(model.alpha_)


def control_targets(xy: np.ndarray, seed: int) -> np.ndarray:
    """The control task (Hewitt & Liang 2019): each city gets another city's coordinates, by one seeded permutation
    of the rows, so the targets keep their distribution but lose their tie to the city. What a probe scores on it is
    what the probe brings by itself; the task score minus it is the probe's selectivity."""
    return np.asarray(xy)[np.random.default_rng(seed).permutation(len(xy))]


def standard_probe(reps: np.ndarray, xy: np.ndarray, split: tuple[np.ndarray, np.ndarray],
                   alphas: Sequence[float], control_xy: np.ndarray) -> dict:
    """Fit x and y probes on the train rows, score them on the test rows; plus the two sizes. The paper's OLS probe
    gives the plain columns (r2_x, ..., median_error). Beside it: the ridge probe (ridge_*, with the alpha chosen
    per coordinate), and both probes refitted on the control targets `control_xy` (control_r2_mean,
    ridge_control_r2_mean) with their selectivity, the task's mean R² minus the control's."""
    train, test = split
    W, b = fit_ols(reps[train], xy[train])
    row = probe_metrics(predict(W, b, reps[test]), xy[test]) | {"n_train": len(train), "n_test": len(test)}
    W, b, alpha = fit_ridge_cv(reps[train], xy[train], alphas)
    ridge = probe_metrics(predict(W, b, reps[test]), xy[test])
    row |= {f"ridge_{key}": ridge[key] for key in ("r2_x", "r2_y", "r2_mean", "mean_error")}
    row |= {"ridge_alpha_x": float(alpha[0]), "ridge_alpha_y": float(alpha[-1])}
    W, b = fit_ols(reps[train], control_xy[train])
    row["control_r2_mean"] = probe_metrics(predict(W, b, reps[test]), control_xy[test])["r2_mean"]
    W, b, _ = fit_ridge_cv(reps[train], control_xy[train], alphas)
    row["ridge_control_r2_mean"] = probe_metrics(predict(W, b, reps[test]), control_xy[test])["r2_mean"]
    row["selectivity"] = row["r2_mean"] - row["control_r2_mean"]
    row["ridge_selectivity"] = row["ridge_r2_mean"] - row["ridge_control_r2_mean"]
    return row


# ---- Atlantis reconstruction ---------------------------------------------------------------------------------

def atlantis_split(is_atlantis: np.ndarray, seed: int = PROBE_SEED, n_train: int = 4000,
                   n_baseline: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, baseline, test) row indices: the non-Atlantis rows in a seeded order give the first n_train to the
    probe and the next n_baseline to the baseline; the test rows are every Atlantis row, in row order (§11)."""
    is_atlantis = np.asarray(is_atlantis, dtype=bool)
    real = np.flatnonzero(~is_atlantis)
    if len(real) < n_train + n_baseline:
        raise ValueError(f"the Atlantis reconstruction needs {n_train} + {n_baseline} eligible non-Atlantis cities, "
                         f"but there are only {len(real)}; lower n_train / n_baseline for a reduced world")
    if not is_atlantis.any():
        raise ValueError("the Atlantis reconstruction needs at least one eligible Atlantis city")
    order = real[np.random.default_rng(seed).permutation(len(real))]
    return order[:n_train], order[n_train: n_train + n_baseline], np.flatnonzero(is_atlantis)


def atlantis_predictions(reps: np.ndarray, xy: np.ndarray, is_atlantis: np.ndarray, seed: int = PROBE_SEED,
                         n_train: int = 4000, n_baseline: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(baseline predictions [n_baseline, 2], Atlantis predictions [n_atlantis, 2]) of x/y probes trained on
    real cities only; the rows are those of `atlantis_split` with the same arguments."""
    train, baseline, test = atlantis_split(is_atlantis, seed, n_train, n_baseline)
    W, b = fit_ols(reps[train], xy[train])
    return predict(W, b, reps[baseline]), predict(W, b, reps[test])


def atlantis_reconstruction(reps: np.ndarray, xy: np.ndarray, is_atlantis: np.ndarray, seed: int = PROBE_SEED,
                            n_train: int = 4000, n_baseline: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(baseline errors [n_baseline], Atlantis errors [n_atlantis]): per-city Euclidean errors of a probe
    trained on real cities only."""
    _, baseline, test = atlantis_split(is_atlantis, seed, n_train, n_baseline)
    base_pred, atlantis_pred = atlantis_predictions(reps, xy, is_atlantis, seed, n_train, n_baseline)
    return euclidean_errors(base_pred, xy[baseline]), euclidean_errors(atlantis_pred, xy[test])


def error_summary(errors: Sequence[np.ndarray]) -> dict:
    """Pooled size, mean and median of per-model error arrays; None for an empty pool."""
    pooled = np.concatenate([np.asarray(e, dtype=np.float64) for e in errors]) if errors else np.zeros(0)
    empty = pooled.size == 0
    return {"models": len(errors), "cities": int(pooled.size),
            "mean": None if empty else float(pooled.mean()), "median": None if empty else float(np.median(pooled))}


def atlantis_groups(baseline_errors: Sequence[np.ndarray], atlantis_errors: Sequence[np.ndarray],
                    includes_distance: Sequence[bool], control_atlantis_errors: np.ndarray | None = None) -> dict:
    """The three pooled groups of §11 and a two-sided Mann–Whitney U between the two Atlantis groups.

    One entry per ftwb2 model in each sequence; `includes_distance[i]` says whether model i's pair contains
    distance. `control_atlantis_errors` (pt7-atl) adds its mean Atlantis error, the figure's marker line.
    """
    from scipy.stats import mannwhitneyu

    if not len(baseline_errors) == len(atlantis_errors) == len(includes_distance):
        raise ValueError("baseline_errors, atlantis_errors and includes_distance need one entry per model")
    without = [e for e, d in zip(atlantis_errors, includes_distance) if not d]
    with_ = [e for e, d in zip(atlantis_errors, includes_distance) if d]
    result = {"baseline": error_summary(baseline_errors), "atlantis_without_distance": error_summary(without),
              "atlantis_with_distance": error_summary(with_), "mann_whitney": None}
    if without and with_:
        test = mannwhitneyu(np.concatenate(without), np.concatenate(with_), alternative="two-sided")
        result["mann_whitney"] = {"x": "atlantis_without_distance", "y": "atlantis_with_distance",
                                  "alternative": "two-sided", "u": float(test.statistic), "p_value": float(test.pvalue)}
    if control_atlantis_errors is not None:
        result["control_atlantis_mean"] = float(np.mean(control_atlantis_errors))
    return result


# ---- 3-D views for the figures (§11 "PCA views", "probe (mixed) 3-D view") ---------------------------------

def first_components(X: np.ndarray, k: int) -> np.ndarray:
    """The top-k principal directions [d, k] of the rows of X (centred here), each signed so that its
    largest-magnitude loading is positive: SVD signs are arbitrary, and a view must not flip between runs."""
    X = np.asarray(X, dtype=np.float64)
    _, _, vt = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    directions = vt[:k].T
    pivots = np.abs(directions).argmax(axis=0)
    return directions * np.sign(directions[pivots, np.arange(directions.shape[1])])


def pca_view(reps: np.ndarray, k: int = 3) -> np.ndarray:
    """[n, k]: the centred representations on their top-k principal components."""
    reps = np.asarray(reps, dtype=np.float64)
    centred = reps - reps.mean(axis=0)
    return centred @ first_components(centred, k)


def mixed_view(reps: np.ndarray, xy: np.ndarray, train: np.ndarray) -> np.ndarray:
    """[n, 3]: probe-predicted x and y (probes fitted on the `train` rows), then the first principal component
    of the representations with their projection onto the span of the two probe weight vectors removed."""
    reps = np.asarray(reps, dtype=np.float64)
    W, b = fit_ols(reps[train], np.asarray(xy, dtype=np.float64)[train])
    basis, _ = np.linalg.qr(W)  # orthonormal basis [d, 2] of span{w_x, w_y}
    centred = reps - reps.mean(axis=0)
    residual = centred - (centred @ basis) @ basis.T
    return np.column_stack([predict(W, b, reps), residual @ first_components(residual, 1)])


VIEW_CHECKPOINT_MULTIPLES = (1, 3, 6, 15, 23)  # §13.2 dynamics: checkpoints s, 3s, 6s, 15s, 23s (and the final)


def view_steps(checkpoint_steps) -> list[int]:
    """The checkpoint steps drawn as dynamics views: k·s for k in 1, 3, 6, 15, 23 where s is the save interval
    (the first step after 0), keeping those the run has (a short run has fewer)."""
    steps = sorted(int(s) for s in checkpoint_steps)
    positive = [s for s in steps if s > 0]
    if not positive:
        return []
    interval = positive[0]
    return [k * interval for k in VIEW_CHECKPOINT_MULTIPLES if k * interval in set(steps)]


# ---- the tables of the probe jobs (scripts/probes.py, scripts/atlantis_reconstruction.py, archive --recompute) ----
# `cities` is the world's city table indexed by city_id; `load(path)` -> (city_ids, {layer: reps}) reads a
# representation file (`representations.load_representations`, passed in: that module imports torch).

def checkpoint_sources(directories) -> list[tuple[str, Path]]:
    """(step, file) of every `step-*.npz` in the checkpoint folders, sorted by name; the step without zero padding."""
    return [(str(int(p.stem.removeprefix("step-"))), p) for directory in directories
            for p in sorted(Path(directory).glob("step-*.npz"))]


def probe_tables(cities: pd.DataFrame, sources: Sequence[tuple[str, Path]], seed: int, layer: int,
                 load: Callable, ridge_alphas: Sequence[float], control_seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, views) of one run: a probe row per (step, layer) on one standard split (`standard_probe`: OLS,
    ridge, and both on the control task of `control_seed`); the `layer` 3-D views (PCA and probe "mixed") of the
    final step and the dynamics checkpoints. `sources`: ("final", file), then the checkpoints' (step, file)."""
    drawn = {"final", *map(str, view_steps(int(step) for step, _ in sources[1:]))}
    rows, views, split, control = [], [], None, None
    for step, path in sources:
        ids, reps = load(path)
        xy = cities.loc[ids, ["x", "y"]].to_numpy(np.float64)
        if split is None:  # one split and one control task for every checkpoint: the rows are the same cities
            split, control = probe_split(len(ids), seed), control_targets(xy, control_seed)
        for at, features in reps.items():
            rows.append({"step": step, "layer": at, **standard_probe(features, xy, split, ridge_alphas, control)})
        if step in drawn:
            pca, mixed = pca_view(reps[layer]), mixed_view(reps[layer], xy, split[0])
            views.append(pd.DataFrame({
                "step": step, "city_id": ids, "region": cities.loc[ids, "region"].to_numpy(),
                "is_atlantis": cities.loc[ids, "is_atlantis"].to_numpy(bool), "x": xy[:, 0], "y": xy[:, 1],
                **{f"pc{i + 1}": pca[:, i] for i in range(3)}, **{f"mixed{i + 1}": mixed[:, i] for i in range(3)}}))
    return pd.DataFrame(rows), pd.concat(views, ignore_index=True)


def atlantis_tables(cities: pd.DataFrame, runs: Sequence[tuple[str, Path]], includes_distance: Sequence[bool],
                    controls: Sequence[tuple[str, Path]], seed: int, n_train: int, n_baseline: int, layer: int,
                    load: Callable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(errors, summary) of the Atlantis reconstruction (§11): per model and city the true and predicted x/y
    and the error; the pooled groups with the Mann–Whitney U test and the controls' mean Atlantis error.
    `runs` and `controls` are (run name, representation file)."""
    split = {"seed": seed, "n_train": n_train, "n_baseline": n_baseline}
    errors = []

    def reconstruct(run, path, baseline_group, atlantis_group):
        ids, reps = load(path)
        is_atlantis = cities.loc[ids, "is_atlantis"].to_numpy(bool)
        xy = cities.loc[ids, ["x", "y"]].to_numpy(np.float64)
        predictions = atlantis_predictions(reps[layer], xy, is_atlantis, **split)
        _, baseline_rows, atlantis_rows = atlantis_split(is_atlantis, **split)
        result = []
        for group, rows, pred in zip((baseline_group, atlantis_group), (baseline_rows, atlantis_rows), predictions):
            result.append(euclidean_errors(pred, xy[rows]))
            errors.append(pd.DataFrame({"run": run, "group": group, "city_id": ids[rows], "x": xy[rows, 0],
                                        "y": xy[rows, 1], "pred_x": pred[:, 0], "pred_y": pred[:, 1],
                                        "error": result[-1]}))
        return result

    baselines, atlantis = [], []
    for (run, path), with_distance in zip(runs, includes_distance):
        group = "atlantis_with_distance" if with_distance else "atlantis_without_distance"
        base, atl = reconstruct(run, path, "baseline", group)
        baselines.append(base)
        atlantis.append(atl)
    # The control's own held-out real cities are not part of the §11 baseline group (two-task models only).
    control = [reconstruct(run, path, "control_baseline", "atlantis_control")[1] for run, path in controls]
    result = atlantis_groups(baselines, atlantis, includes_distance, np.concatenate(control) if control else None)
    summary = pd.DataFrame([{"group": name, **result[name]}
                            for name in ("baseline", "atlantis_without_distance", "atlantis_with_distance")])
    test = result["mann_whitney"] or {}
    summary["mann_whitney_u"], summary["mann_whitney_p"] = test.get("u"), test.get("p_value")
    summary["control_atlantis_mean"] = result.get("control_atlantis_mean")
    return pd.concat(errors, ignore_index=True), summary
