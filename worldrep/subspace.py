"""Where fine-tuning puts a new city (METHOD Appendix C.1): each Atlantis city's update Δ = h_ft − h_base
(fine-tuned minus same-seed base representation, analysis layer, both at the fine-tuned model's prompt task) split
into its part inside the fine-tuned model's world subspace and the orthogonal rest.

Two world subspaces, both fitted on the fine-tuned model's real (non-Atlantis) eligible cities: the span of the x/y
OLS probe weights, and the top-k principal components. A fraction ‖PΔ‖²/‖Δ‖² is compared with its chance level
rank/d, the expected fraction of an isotropic random direction in d dimensions.

Pure functions of arrays, in float64; `subspace_tables` at the end is what scripts/subspace.py writes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .probes import atlantis_reconstruction, first_components, fit_ols

SUBSPACES = ("probe", "pca")
MEASURES = ("pooled", "mean")  # Σ‖PΔ‖²/Σ‖Δ‖² over cities; the mean of per-city fractions


# ---- subspaces and fractions ---------------------------------------------------------------------------------

def orthonormal_basis(directions: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """[d, r]: an orthonormal basis of the span of the columns of `directions` [d, k]; r ≤ k is its numerical rank
    (left singular vectors with σ > rtol·σ_max), so dependent columns do not add a spurious dimension."""
    u, s, _ = np.linalg.svd(np.asarray(directions, dtype=np.float64), full_matrices=False)
    return u[:, s > rtol * s.max()] if s.size and s.max() > 0 else u[:, :0]


def probe_subspace(reps: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """[d, ≤2]: the span of the x and y OLS probe weights (with intercept, §11) fitted on these rows."""
    W, _ = fit_ols(reps, xy)
    return orthonormal_basis(W)


def pca_subspace(reps: np.ndarray, k: int) -> np.ndarray:
    """[d, k]: the top-k principal directions of the (centred) rows, orthonormal by construction."""
    n, d = np.shape(reps)
    if not 1 <= k <= min(n - 1, d):
        raise ValueError(f"{k} principal components need k ≤ min(n − 1, d) = {min(n - 1, d)}")
    return first_components(reps, k)


def city_fractions(delta: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """[n]: ‖PΔ_i‖²/‖Δ_i‖² per row of `delta` [n, d], P the projector onto the orthonormal `basis` [d, r]; NaN for
    a city whose representation did not move (Δ = 0, no direction to split)."""
    delta = np.asarray(delta, dtype=np.float64)
    inside = np.sum((delta @ basis) ** 2, axis=1)  # ‖PΔ‖² = ‖Bᵀ Δ‖² for orthonormal B
    total = np.sum(delta ** 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def pooled_fraction(delta: np.ndarray, basis: np.ndarray) -> float:
    """Σ‖PΔ_i‖² / Σ‖Δ_i‖²: the share of the total update energy inside the subspace (cities weighted by ‖Δ_i‖²)."""
    delta = np.asarray(delta, dtype=np.float64)
    total = float(np.sum(delta ** 2))
    return float(np.sum((delta @ basis) ** 2)) / total if total > 0 else float("nan")


def subspace_fractions(delta: np.ndarray, basis: np.ndarray) -> dict[str, float]:
    """Pooled and mean per-city fraction of `delta` in the span of `basis`, its rank and chance level rank/d."""
    rank, width = basis.shape[1], basis.shape[0]
    return {"rank": rank, "chance": rank / width, "pooled": pooled_fraction(delta, basis),
            "mean": float(np.nanmean(city_fractions(delta, basis))) if len(delta) else float("nan")}


def model_fractions(tuned: np.ndarray, base: np.ndarray, xy: np.ndarray, is_atlantis: np.ndarray,
                    components: int) -> dict:
    """One fine-tuned model: the fractions of its Atlantis updates in both world subspaces, which are fitted on its
    own real-city representations. `tuned`, `base` [n, d] and `xy` [n, 2] have rows aligned by city."""
    tuned, base = np.asarray(tuned, dtype=np.float64), np.asarray(base, dtype=np.float64)
    is_atlantis = np.asarray(is_atlantis, dtype=bool)
    if tuned.shape != base.shape:
        raise ValueError(f"fine-tuned {tuned.shape} and base {base.shape} representations differ in shape")
    if not is_atlantis.any() or is_atlantis.all():
        raise ValueError("needs both Atlantis cities (the updates) and real cities (the world subspace)")
    real = ~is_atlantis
    delta = tuned[is_atlantis] - base[is_atlantis]
    bases = {"probe": probe_subspace(tuned[real], xy[real]), "pca": pca_subspace(tuned[real], components)}
    row = {"width": tuned.shape[1], "n_atlantis": int(is_atlantis.sum()), "n_real": int(real.sum()),
           "delta_norm_mean": float(np.linalg.norm(delta, axis=1).mean())}
    for name, basis in bases.items():
        row |= {f"{name}_{key}": value for key, value in subspace_fractions(delta, basis).items()}
    return row


# ---- across models ---------------------------------------------------------------------------------------------

def group_test(values: np.ndarray, includes_distance: np.ndarray) -> dict:
    """Per-model values split by whether the mix contains distance: size, mean and median per group, and a
    two-sided Mann–Whitney U (x = without distance, y = with, as `probes.atlantis_groups`); NaN where a group is
    empty. Models, not cities, are the units: cities of one model share its update and are not independent."""
    from scipy.stats import mannwhitneyu

    values, with_ = np.asarray(values, dtype=np.float64), np.asarray(includes_distance, dtype=bool)
    row = {}
    for name, part in (("without_distance", values[~with_]), ("with_distance", values[with_])):
        empty = part.size == 0
        row |= {f"n_{name}": int(part.size), f"mean_{name}": np.nan if empty else float(part.mean()),
                f"median_{name}": np.nan if empty else float(np.median(part))}
    u = p = np.nan
    if with_.any() and (~with_).any():
        test = mannwhitneyu(values[~with_], values[with_], alternative="two-sided")
        u, p = float(test.statistic), float(test.pvalue)
    return row | {"mann_whitney_u": u, "mann_whitney_p": p}


def correlation(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson and Spearman (r, two-sided p) of paired values and n; NaN below 3 pairs or for a constant input,
    where a correlation is meaningless."""
    from scipy.stats import pearsonr, spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    row = {"n": len(x), "pearson_r": np.nan, "pearson_p": np.nan, "spearman_r": np.nan, "spearman_p": np.nan}
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        pearson, spearman = pearsonr(x, y), spearmanr(x, y)
        row |= {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
                "spearman_r": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}
    return row


def summary_table(fractions: pd.DataFrame) -> pd.DataFrame:
    """One row per (subspace, measure): the chance level (mean over models) and `group_test` of the per-model
    fractions."""
    rows = [{"subspace": s, "measure": m, "chance": float(fractions[f"{s}_chance"].mean()),
             **group_test(fractions[f"{s}_{m}"], fractions["includes_distance"])}
            for s in SUBSPACES for m in MEASURES]
    return pd.DataFrame(rows)


def correlation_table(fractions: pd.DataFrame) -> pd.DataFrame:
    """One row per (subspace, measure): the per-model fraction against the model's mean Atlantis error."""
    error = fractions["atlantis_error"]
    return pd.DataFrame([{"subspace": s, "measure": m, **correlation(fractions[f"{s}_{m}"], error)}
                         for s in SUBSPACES for m in MEASURES])


# ---- the tables of the subspace job (scripts/subspace.py) ----------------------------------------------------------
# `cities` is the world's city table indexed by city_id; `load(path)` -> (city_ids, {layer: reps}) reads a
# representation file (`representations.load_representations`, passed in: that module imports torch).

def subspace_tables(cities: pd.DataFrame, runs: Sequence[dict], tuned_paths: Sequence[Path],
                    base_paths: Sequence[Path], components: int, layer: int, seed: int, n_train: int,
                    n_baseline: int, load: Callable) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fractions, summary, correlation). `runs[i]`: a dict with at least `run` and `includes_distance`, copied into
    row i; `tuned_paths[i]` its representation file, `base_paths[i]` its base's at the same prompt. Each row also
    gets the model's mean Atlantis reconstruction error (§11 protocol with this seed, n_train, n_baseline)."""
    rows = []
    for run, tuned_path, base_path in zip(runs, tuned_paths, base_paths, strict=True):
        (ids, tuned), (base_ids, base) = load(tuned_path), load(base_path)
        if not np.array_equal(ids, base_ids):
            raise ValueError(f"{run['run']}: {tuned_path} and {base_path} list different cities")
        is_atlantis = cities.loc[ids, "is_atlantis"].to_numpy(bool)
        xy = cities.loc[ids, ["x", "y"]].to_numpy(np.float64)
        _, errors = atlantis_reconstruction(tuned[layer], xy, is_atlantis, seed, n_train, n_baseline)
        rows.append({**run, "layer": layer, **model_fractions(tuned[layer], base[layer], xy, is_atlantis, components),
                     "atlantis_error": float(errors.mean())})
    fractions = pd.DataFrame(rows)
    return fractions, summary_table(fractions), correlation_table(fractions)
