"""Where fine-tuning puts a new city (METHOD Appendix C.1): fractions of updates built with a known answer, subspaces of
synthetic data whose structure is known, the group test and correlations against scipy; and `check_smoke_outputs`,
the assertions tests/test_workflow.py makes about a smoke run with the experiment on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu, pearsonr, spearmanr

from worldrep.probes import atlantis_reconstruction
from worldrep.subspace import (city_fractions, correlation, correlation_table, group_test, model_fractions,
                               orthonormal_basis, pca_subspace, pooled_fraction, probe_subspace, subspace_fractions,
                               subspace_tables, summary_table)

SEEDS = [0, 1, 2]


def random_split(d: int, r: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(basis [d, r], complement [d, d − r]): a random orthonormal basis of R^d cut in two."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q[:, :r], q[:, r:]


def projector(basis: np.ndarray) -> np.ndarray:
    return basis @ basis.T


# ---- fractions of updates with a known answer -----------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_an_update_inside_the_subspace_is_all_inside(seed):
    inside, _ = random_split(64, 3, seed)
    delta = np.random.default_rng(seed).normal(size=(50, 3)) @ inside.T
    assert city_fractions(delta, inside) == pytest.approx(np.ones(50), abs=1e-12)
    assert pooled_fraction(delta, inside) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_an_orthogonal_update_is_all_outside(seed):
    inside, outside = random_split(64, 3, seed)
    delta = np.random.default_rng(seed).normal(size=(50, 61)) @ outside.T
    assert city_fractions(delta, inside) == pytest.approx(np.zeros(50), abs=1e-12)
    assert pooled_fraction(delta, inside) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_mixture_has_its_known_fraction(seed):
    """Δ_i = a_i·u_i + b_i·v_i, u_i a unit vector inside, v_i a unit vector orthogonal: a_i²/(a_i² + b_i²) per city,
    Σa²/Σ(a² + b²) pooled."""
    rng = np.random.default_rng(seed)
    inside, outside = random_split(32, 4, seed)
    u = rng.normal(size=(40, 4)) @ inside.T
    v = rng.normal(size=(40, 28)) @ outside.T
    u, v = u / np.linalg.norm(u, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)
    a, b = rng.normal(size=40), rng.normal(size=40)
    delta = a[:, None] * u + b[:, None] * v
    assert city_fractions(delta, inside) == pytest.approx(a**2 / (a**2 + b**2), rel=1e-10)
    assert pooled_fraction(delta, inside) == pytest.approx(np.sum(a**2) / np.sum(a**2 + b**2), rel=1e-10)
    row = subspace_fractions(delta, inside)
    assert row["rank"] == 4 and row["chance"] == 4 / 32 and row["mean"] == pytest.approx(np.mean(a**2 / (a**2 + b**2)))


def test_a_random_direction_lands_at_chance():
    """An isotropic direction in d dimensions has E[‖PΔ‖²/‖Δ‖²] = r/d (a Beta(r/2, (d − r)/2) variable): the chance
    level the tables report. 20,000 directions put the mean within 0.002 of it (≈ 7 standard errors)."""
    inside, _ = random_split(64, 8, 0)
    delta = np.random.default_rng(1).normal(size=(20_000, 64))
    assert abs(city_fractions(delta, inside).mean() - 8 / 64) < 2e-3
    assert abs(pooled_fraction(delta, inside) - 8 / 64) < 2e-3


def test_a_city_that_did_not_move_has_no_fraction():
    inside, _ = random_split(8, 2, 0)
    delta = np.vstack([np.zeros(8), inside[:, 0]])
    assert np.isnan(city_fractions(delta, inside)[0]) and city_fractions(delta, inside)[1] == pytest.approx(1.0)
    assert subspace_fractions(delta, inside)["mean"] == pytest.approx(1.0)  # the mean is over cities that moved
    assert np.isnan(pooled_fraction(np.zeros((3, 8)), inside))


def test_dependent_directions_add_no_dimension():
    basis = orthonormal_basis(np.column_stack([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]))
    assert basis.shape == (3, 1) and projector(basis) == pytest.approx(np.outer([1, 2, 0], [1, 2, 0]) / 5)


# ---- the two world subspaces of synthetic data ------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_the_probe_subspace_is_the_span_that_carries_the_coordinates(seed):
    """reps = xy·B + z·C + c with the rows of B spanning S and those of C spanning S^⊥: x and y are exactly linear
    in reps through S alone, so the probe weights lie in S and span it."""
    rng = np.random.default_rng(seed)
    d, n = 24, 300
    inside, outside = random_split(d, 2, seed)
    xy = rng.integers(-900, 901, size=(n, 2)).astype(np.float64)
    reps = xy @ (rng.normal(size=(2, 2)) @ inside.T) + rng.normal(size=(n, d - 2)) @ outside.T + rng.normal(size=d)
    basis = probe_subspace(reps, xy)
    assert basis.shape == (d, 2)
    assert projector(basis) == pytest.approx(projector(inside), abs=1e-8)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_pca_subspace_is_the_span_of_the_largest_variances(seed):
    """reps = L·diag(s)·Qᵀ + c with L orthonormal, centred columns and s decreasing: the covariance is exactly
    Q·diag(s²)·Qᵀ/(n − 1), so the top-k components span the first k columns of Q, whatever the offset c."""
    rng = np.random.default_rng(seed)
    n, d, k = 200, 16, 5
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    noise = rng.normal(size=(n, d))
    latent, _ = np.linalg.qr(noise - noise.mean(axis=0))  # combinations of centred columns: centred, orthonormal
    reps = latent @ np.diag(np.geomspace(100.0, 1.0, d)) @ q.T + rng.normal(size=d) * 50
    basis = pca_subspace(reps, k)
    assert basis.shape == (d, k) and basis.T @ basis == pytest.approx(np.eye(k), abs=1e-10)
    assert projector(basis) == pytest.approx(projector(q[:, :k]), abs=1e-8)
    with pytest.raises(ValueError, match="principal components"):
        pca_subspace(reps, d + 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_model_fractions_of_a_known_update(seed):
    """A fine-tuned model whose real cities follow the probe construction above, and whose Atlantis cities moved from
    the base by half inside the probe span, half outside it (equal norms): fractions 1/2, chance 2/d."""
    rng = np.random.default_rng(seed)
    d, n_real, n_atl = 24, 300, 30
    inside, outside = random_split(d, 2, seed)
    xy = rng.integers(-900, 901, size=(n_real + n_atl, 2)).astype(np.float64)
    tuned = xy @ inside.T + rng.normal(size=(n_real + n_atl, d - 2)) @ outside.T
    is_atlantis = np.arange(n_real + n_atl) >= n_real
    u = rng.normal(size=(n_atl, 2)) @ inside.T
    v = rng.normal(size=(n_atl, d - 2)) @ outside.T
    delta = u / np.linalg.norm(u, axis=1, keepdims=True) + v / np.linalg.norm(v, axis=1, keepdims=True)
    base = tuned.copy()
    base[is_atlantis] -= delta
    row = model_fractions(tuned, base, xy, is_atlantis, components=3)
    assert (row["width"], row["n_atlantis"], row["n_real"], row["probe_rank"], row["pca_rank"]) == (d, n_atl, n_real, 2, 3)
    assert row["probe_chance"] == 2 / d and row["pca_chance"] == 3 / d
    assert row["probe_pooled"] == pytest.approx(0.5) and row["probe_mean"] == pytest.approx(0.5)
    assert row["delta_norm_mean"] == pytest.approx(np.sqrt(2))
    with pytest.raises(ValueError, match="Atlantis"):
        model_fractions(tuned, base, xy, np.zeros(n_real + n_atl, bool), components=3)


# ---- across models: against scipy -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_group_test_is_scipys_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    values, with_distance = rng.uniform(size=30), rng.uniform(size=30) < 0.3
    row = group_test(values, with_distance)
    reference = mannwhitneyu(values[~with_distance], values[with_distance], alternative="two-sided")
    assert row["mann_whitney_u"] == reference.statistic and row["mann_whitney_p"] == reference.pvalue
    assert (row["n_with_distance"], row["n_without_distance"]) == (with_distance.sum(), (~with_distance).sum())
    assert row["mean_with_distance"] == pytest.approx(values[with_distance].mean())
    assert row["median_without_distance"] == pytest.approx(np.median(values[~with_distance]))


def test_group_test_without_one_group_has_no_test():
    row = group_test([0.1, 0.2], [True, True])
    assert row["n_without_distance"] == 0 and np.isnan(row["mean_without_distance"])
    assert np.isnan(row["mann_whitney_u"]) and np.isnan(row["mann_whitney_p"])


@pytest.mark.parametrize("seed", SEEDS)
def test_correlation_is_scipys_pearson_and_spearman(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=25)
    y = 0.5 * x + rng.normal(size=25)
    row = correlation(x, y)
    (r, p), (rho, p_rho) = pearsonr(x, y), spearmanr(x, y)
    assert row["n"] == 25
    assert (row["pearson_r"], row["pearson_p"]) == pytest.approx((r, p), rel=1e-12)
    assert (row["spearman_r"], row["spearman_p"]) == pytest.approx((rho, p_rho), rel=1e-12)


def test_correlation_of_too_few_or_constant_values_is_nan():
    assert np.isnan(correlation([1.0, 2.0], [3.0, 1.0])["pearson_r"])
    assert np.isnan(correlation([1.0, 1.0, 1.0], [3.0, 1.0, 2.0])["spearman_p"])


def test_subspace_tables_one_row_per_model():
    """Three synthetic models through the entry point with an in-memory loader: one row per model carrying its
    run fields, its mean Atlantis error from the §11 protocol, and groups and correlations over the three."""
    rng = np.random.default_rng(0)
    n_real, n_atl, d = 150, 12, 20
    ids = np.arange(1000, 1000 + n_real + n_atl)
    cities = pd.DataFrame({"city_id": ids, "x": rng.integers(-900, 901, len(ids)), "y": rng.integers(-450, 451, len(ids)),
                           "is_atlantis": np.arange(len(ids)) >= n_real}).set_index("city_id")
    xy = cities[["x", "y"]].to_numpy(np.float64)
    files = {f"m{i}": (ids, {5: xy @ rng.normal(size=(2, d)) + rng.normal(size=(len(ids), d))}) for i in range(3)}
    files["base"] = (ids, {5: rng.normal(size=(len(ids), d))})
    runs = [{"run": f"m{i}", "includes_distance": i == 0} for i in range(3)]
    fractions, summary, corr = subspace_tables(cities, runs, ["m0", "m1", "m2"], ["base"] * 3, components=4, layer=5,
                                               seed=42, n_train=100, n_baseline=20, load=files.__getitem__)
    assert list(fractions["run"]) == ["m0", "m1", "m2"] and list(fractions["includes_distance"]) == [True, False, False]
    _, errors = atlantis_reconstruction(files["m1"][1][5], xy, cities["is_atlantis"].to_numpy(), 42, 100, 20)
    assert fractions.loc[1, "atlantis_error"] == pytest.approx(errors.mean())
    assert len(summary) == len(corr) == 4 and set(corr["n"]) == {3}
    assert set(summary["n_with_distance"]) == {1} and set(summary["n_without_distance"]) == {2}


def test_the_figures_draw_every_model_once_per_subspace(tmp_path):
    from worldrep import figures

    rng = np.random.default_rng(0)
    fractions = pd.DataFrame({"run": [f"m{i}" for i in range(6)], "includes_distance": [True, False] * 3, "layer": 5,
                              "atlantis_error": rng.uniform(10, 100, 6), "probe_rank": 2, "pca_rank": 8,
                              "probe_chance": 2 / 256, "pca_chance": 8 / 256,
                              **{c: rng.uniform(size=6) for c in FRACTION_COLUMNS}})
    summary, corr = summary_table(fractions), correlation_table(fractions)
    for draw, table in ((figures.subspace_fraction, summary), (figures.subspace_vs_error, corr)):
        fig, data = draw(fractions, table)
        assert len(data) == 12 and set(data["subspace"]) == {"probe", "pca"}
        assert data.groupby("subspace")["fraction"].apply(sorted).to_dict() == {
            s: sorted(fractions[f"{s}_pooled"]) for s in ("probe", "pca")}
        png = figures.save_figure(fig, tmp_path / draw.__name__, data)[0]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- a smoke run with the experiment on (called by tests/test_workflow.py) -----------------------------------------

FRACTION_COLUMNS = [f"{s}_{m}" for s in ("probe", "pca") for m in ("pooled", "mean")]
FIGURES = ("subspace_fraction", "subspace_vs_error")


def expected_runs(config: dict) -> dict[str, list[str]]:
    """Main-grid fine-tuned run -> its mix's tasks, by hand: the fine-tuning mixes × the base's seeds."""
    base, seeds = config["training"]["base"], config["training"]["seeds"]
    mixes = config["mixtures"]["finetuning"]["mixes"]
    return {f"{mix}_s{seed}": tasks for mix, tasks in mixes.items() for seed in seeds.get(base, seeds["default"])}


def independent_fractions(tuned: np.ndarray, base: np.ndarray, xy: np.ndarray, atlantis: np.ndarray, k: int) -> dict:
    """The pooled fractions written from scratch: probe span by QR of the lstsq weights, PCs by an eigendecomposition
    of the real cities' covariance."""
    real = ~atlantis
    design = np.column_stack([tuned[real], np.ones(real.sum())])
    weights = np.linalg.lstsq(design, xy[real], rcond=None)[0][:-1]
    probe, _ = np.linalg.qr(weights)
    centred = tuned[real] - tuned[real].mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    pcs = eigenvectors[:, np.argsort(eigenvalues)[::-1][:k]]
    delta = tuned[atlantis] - base[atlantis]
    return {name: np.sum((delta @ basis) ** 2) / np.sum(delta**2) for name, basis in (("probe", probe), ("pca", pcs))}


def layer_of(path: Path, layer: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["city_ids"].astype(np.int64), data[f"layer_{layer}"].astype(np.float64)


def check_smoke_outputs(results: Path, config: dict) -> None:
    """What a finished workflow with `experiments.subspace.enabled` must hold under results/experiments/subspace."""
    folder, layer = results / "experiments/subspace", config["representations"]["analysis_layer"]
    k, width = config["experiments"]["subspace"]["components"], 2 * config["model"]["hidden_size"]
    runs, base = expected_runs(config), config["training"]["base"]
    fractions = pd.read_csv(folder / "fractions.csv")
    required = {"run", "mixture", "seed", "base", "prompt_task", "includes_distance", "layer", "width", "n_atlantis",
                "delta_norm_mean", "atlantis_error", *FRACTION_COLUMNS}
    assert required <= set(fractions.columns), required - set(fractions.columns)
    assert sorted(fractions["run"]) == sorted(runs) and fractions["run"].is_unique
    rows = fractions.set_index("run")
    for run, tasks in runs.items():
        row = rows.loc[run]
        assert row["base"] == f"{base}_s{run.rsplit('_s', 1)[1]}"
        assert row["prompt_task"] == (tasks[0] if len(tasks) == 1 else "distance")  # §10, table "Prompt task"
        assert bool(row["includes_distance"]) == ("distance" in tasks)
    assert set(fractions["layer"]) == {layer} and set(fractions["width"]) == {width}
    assert (fractions[FRACTION_COLUMNS].ge(0) & fractions[FRACTION_COLUMNS].le(1 + 1e-12)).all().all()
    assert set(fractions["probe_rank"]) == {2} and set(fractions["pca_rank"]) == {k}
    assert np.allclose(fractions["probe_chance"], 2 / width) and np.allclose(fractions["pca_chance"], k / width)
    assert (fractions["atlantis_error"] > 0).all() and (fractions["delta_norm_mean"] > 0).all()

    # One base file per (base run, prompt task), nothing else.
    made = {p.relative_to(folder / "representations").as_posix() for p in (folder / "representations").rglob("*.npz")}
    assert made == {f"{b}/{t}.npz" for b, t in zip(fractions["base"], fractions["prompt_task"])}

    cities = pd.read_csv(results / "world/cities.csv").set_index("city_id")
    # Recompute one model (an FTWB1 model at a prompt other than distance where there is one: the case that needs the
    # extra extraction), reading the .npz files directly.
    pick = fractions.sort_values("prompt_task", key=lambda s: s == "distance").iloc[0]
    ids, tuned = layer_of(results / f"representations/{pick['run']}/final.npz", layer)
    base_ids, base_reps = layer_of(folder / f"representations/{pick['base']}/{pick['prompt_task']}.npz", layer)
    assert np.array_equal(ids, base_ids)
    atlantis = cities.loc[ids, "is_atlantis"].to_numpy(bool)
    expected = independent_fractions(tuned, base_reps, cities.loc[ids, ["x", "y"]].to_numpy(np.float64), atlantis, k)
    assert pick["probe_pooled"] == pytest.approx(expected["probe"], rel=1e-6, abs=1e-12)
    assert pick["pca_pooled"] == pytest.approx(expected["pca"], rel=1e-6, abs=1e-12)
    assert pick["n_atlantis"] == atlantis.sum()

    # The base at distance's prompt is the base's own file (§10: pt7 is prompted with distance).
    for b in set(fractions.loc[fractions["prompt_task"] == "distance", "base"]):
        own, extra = layer_of(results / f"representations/{b}/final.npz", layer), layer_of(
            folder / f"representations/{b}/distance.npz", layer)
        assert np.array_equal(own[0], extra[0]) and np.allclose(own[1], extra[1], rtol=1e-5, atol=1e-5)

    # The two-task models' errors are those of the main Atlantis reconstruction (§11).
    errors = pd.read_csv(results / "probes/atlantis_errors.csv.gz")
    main = errors[errors["group"].isin(["atlantis_with_distance", "atlantis_without_distance"])]
    main = main.groupby("run")["error"].mean()
    for run, error in main.items():
        if run in rows.index:
            assert rows.loc[run, "atlantis_error"] == pytest.approx(error, rel=1e-9)

    summary, corr = pd.read_csv(folder / "summary.csv"), pd.read_csv(folder / "correlation.csv")
    with_distance = fractions["includes_distance"].astype(bool).to_numpy()
    assert len(summary) == len(corr) == 4 and set(corr["n"]) == {len(runs)}
    for _, row in summary.iterrows():
        values = fractions[f"{row['subspace']}_{row['measure']}"].to_numpy()
        assert row["chance"] == pytest.approx(fractions[f"{row['subspace']}_chance"].mean())
        assert (row["n_with_distance"], row["n_without_distance"]) == (with_distance.sum(), (~with_distance).sum())
        if with_distance.any() and (~with_distance).any():
            reference = mannwhitneyu(values[~with_distance], values[with_distance], alternative="two-sided")
            assert row["mann_whitney_p"] == pytest.approx(reference.pvalue)
    for name in FIGURES:
        assert (folder / f"figures/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (folder / f"figures/{name}.pdf").stat().st_size > 0
        assert len(pd.read_csv(folder / f"figures/{name}.csv")) == 2 * len(runs)
