"""Figures: synthetic tables in the rules' layouts -> PNG/PDF of fixed size, the right annotations, stable bytes."""
import itertools

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib import colors

from worldrep import figures as F
from worldrep.tasks import TASK_NAMES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_saved(fig, tmp_path, kind, data=None):
    """Save, then check both files and the PNG's pixel size; return the PNG bytes."""
    paths = F.save_figure(fig, tmp_path / kind, data)
    png, pdf = paths[0].read_bytes(), paths[1].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    width, height = F.FIGSIZE[kind]
    assert mpimg.imread(paths[0]).shape[:2] == (round(height * F.DPI), round(width * F.DPI))
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF") and len(pdf) > 2000
    assert not list(tmp_path.glob("*.partial"))
    if data is not None:
        assert len(pd.read_csv(paths[2])) == len(data)
    return png, pdf


def texts(ax):
    return [t.get_text() for t in ax.texts]


# ---- style and norm --------------------------------------------------------------------------------------

def test_task_abbreviations_follow_canonical_order():
    assert list(F.TASK_ABBR) == list(TASK_NAMES)
    assert list(F.TASK_ABBR.values()) == ["D", "T", "A", "Co", "I", "P", "Cr"]
    assert F.mixture_labels({"pt2-4": ["crossing", "distance"]}) == {"pt2-4": "D,Cr"}


def test_task_abbreviations_match_the_task_modules():
    """TASK_ABBR copies each module's `TASK.abbr` so that figures need no task code (worldrep.codehash)."""
    from worldrep.tasks import TASK_ABBR, task
    assert TASK_ABBR == {name: task(name).abbr for name in TASK_NAMES}


def test_region_palette_covers_every_region_with_distinct_colours():
    from worldrep.world import REGION_CONTINENTS, REGION_COUNTRIES
    regions = set(REGION_COUNTRIES) | set(REGION_CONTINENTS.values()) | {"Atlantis"}
    assert regions <= set(F.REGION_COLORS) == set(F.REGION_LABELS)
    assert len(set(F.REGION_COLORS.values())) == len(F.REGION_COLORS)
    assert F.REGION_LABELS["India"] == "South Asia" and F.REGION_LABELS["Southeast Asia"] == "South East Asia"


def test_figure_sizes_are_whole_pixels():
    for width, height in F.FIGSIZE.values():
        assert (width * F.DPI).is_integer() and (height * F.DPI).is_integer()


@pytest.mark.parametrize("cka, expected", [
    (0.0, 0.0), (0.4, 0.2), (0.6, 0.5), (1.0, 1.0),  # knots
    (0.2, 0.1), (0.5, 0.35), (0.8, 0.75), (0.9, 0.875),  # between knots
    (-0.05, 0.0), (1.2, 1.0),  # debiased CKA can leave [0, 1]: clamp
])
def test_piecewise_cka_norm(cka, expected):
    norm = F.piecewise_cka_norm()
    assert float(norm(cka)) == pytest.approx(expected)
    if 0 <= cka <= 1:
        assert float(norm.inverse(expected)) == pytest.approx(cka)


def test_piecewise_cka_norm_is_monotone_and_masks_nan():
    norm = F.piecewise_cka_norm()
    mapped = np.asarray(norm(np.linspace(0, 1, 101)))
    assert np.all(np.diff(mapped) > 0)
    assert np.ma.getmaskarray(norm(np.ma.masked_invalid([0.5, np.nan])))[1]


def test_apply_style_sets_rcparams():
    import matplotlib as mpl
    with mpl.rc_context():
        F.apply_style()
        assert mpl.rcParams["font.size"] == F.STYLE["font.size"]
        assert mpl.rcParams["savefig.dpi"] == F.DPI


# ---- §13.1 world map -------------------------------------------------------------------------------------

def synthetic_cities():
    rng = np.random.default_rng(0)
    regions = ["Western Europe", "Africa", "India", "North America"]
    real = pd.DataFrame({"city_id": np.arange(1000, 1080), "x": rng.integers(-1500, 1500, 80),
                         "y": rng.integers(-500, 600, 80), "region": np.repeat(regions, 20), "is_atlantis": False})
    atlantis = pd.DataFrame({"city_id": np.arange(2000, 2020), "x": rng.normal(-350, 30, 20).round(),
                             "y": rng.normal(350, 30, 20).round(), "region": "Atlantis", "is_atlantis": True})
    cities = pd.concat([real, atlantis], ignore_index=True)
    return cities.assign(name="c", country_code="NA", longitude=cities.x / 10, latitude=cities.y / 10, geonameid=1)


def test_world_map(tmp_path):
    cities = synthetic_cities()
    fig, data = F.world_map(cities)
    ax = fig.axes[0]
    assert ax.get_aspect() == 1.0
    by_region = {c.get_gid(): c for c in ax.collections}
    assert set(by_region) == {f"region:{r}" for r in set(cities.region)}
    for region in set(cities.region):
        colour = by_region[f"region:{region}"].get_facecolor()[0]
        assert colors.same_color(colour, F.REGION_COLORS[region])
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"South Asia", "Atlantis"}
    (circle,) = [p for p in ax.patches if p.get_gid() == "atlantis-circle"]
    atl = cities[cities.is_atlantis][["x", "y"]].to_numpy(float)
    assert np.all(np.hypot(*(atl - circle.center).T) < circle.radius)
    assert data.is_atlantis.sum() == 20 and len(data) == len(cities)
    check_saved(fig, tmp_path, "world_map", data)


def test_world_map_rejects_unknown_region():
    cities = synthetic_cities()
    cities.loc[0, "region"] = "Lemuria"
    with pytest.raises(ValueError, match="Lemuria"):
        F.world_map(cities)


# ---- §13.3 / 13.4 CKA matrices ---------------------------------------------------------------------------

ESTIMATORS = ("biased", "debiased", "calibrated", "mutual_knn")


def synthetic_matrix(variants, nan_cells=(), estimators=("biased", "debiased")):
    rng = np.random.default_rng(1)
    rows = []
    for layer, estimator in itertools.product((3, 5), estimators):
        for a, b in itertools.product(variants, variants):
            low = -0.4 if estimator == "calibrated" else 0.1  # calibrated CKA can fall below 0
            mean, sem, n = rng.uniform(low, 0.95), rng.uniform(0, 0.05), 9
            if (a, b) in nan_cells:
                mean, sem, n = np.nan, np.nan, 0
            rows.append((layer, estimator, a, b, mean, sem, n))
    return pd.DataFrame(rows, columns=["layer", "estimator", "row", "column", "mean", "sem", "n"])


def test_cka_matrix_single_task(tmp_path):
    variants = [f"pt1-{k}" for k in range(1, 8)]
    matrix = synthetic_matrix(variants, nan_cells={("pt1-3", "pt1-3")})
    labels = {v: F.TASK_ABBR[t] for v, t in zip(variants, TASK_NAMES)}
    fig, data = F.cka_matrix(matrix, 5, "biased", labels)
    ax = fig.axes[0]
    assert ax.get_title() == "Layer-5 residual-stream CKA"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["D", "T", "A", "Co", "I", "P", "Cr"]
    part = matrix[(matrix.layer == 5) & (matrix.estimator == "biased")]
    expected = [f"{v:.2f}" for v in part.set_index(["row", "column"]).loc[
        [(a, b) for a in variants for b in variants], "mean"] if np.isfinite(v)]
    assert texts(ax) == expected and len(expected) == 48  # the NaN cell is blank
    assert isinstance(ax.images[0].norm, colors.FuncNorm) and ax.images[0].get_cmap().name.startswith("magma")
    assert not [p for p in ax.patches if p.get_gid() == "overlap"]
    assert len(data) == 49 and data["mean"].isna().sum() == 1
    png, _ = check_saved(fig, tmp_path, "cka_matrix", data)
    (tmp_path / "again").mkdir()
    again, _ = check_saved(F.cka_matrix(matrix, 5, "biased", labels)[0], tmp_path / "again", "cka_matrix")
    assert png == again


def test_cka_matrix_sem_and_debiased_title():
    variants = ["pt1-1", "pt1-6", "pt1-7"]  # a reduced config: fewer variants than 7
    matrix = synthetic_matrix(variants)
    fig, _ = F.cka_matrix(matrix, 3, "debiased", with_sem=True)
    ax = fig.axes[0]
    assert ax.get_title() == "Layer-3 residual-stream CKA (debiased)"
    cell = matrix[(matrix.layer == 3) & (matrix.estimator == "debiased") & (matrix.row == "pt1-6")
                  & (matrix.column == "pt1-7")].iloc[0]
    assert f"{cell['mean']:.2f}\n±{cell['sem']:.2f}" in texts(ax)
    assert len(ax.texts) == 9 and all("\n±" in t for t in texts(ax))


def test_cka_matrix_two_task_marks_partial_overlap(tmp_path):
    pairs = {"pt2-1": ["distance", "trianglearea"], "pt2-2": ["angle", "compass"],
             "pt2-3": ["inside", "perimeter"], "pt2-4": ["crossing", "distance"]}
    matrix = synthetic_matrix(list(pairs))
    fig, data = F.cka_matrix(matrix, 5, "biased", F.mixture_labels(pairs), task_sets=pairs)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["D,T", "A,Co", "I,P", "D,Cr"]
    triangles = [p for p in ax.patches if p.get_gid() == "overlap"]
    assert len(triangles) == 2  # (pt2-1, pt2-4) and (pt2-4, pt2-1) share distance; diagonal not marked
    assert set(map(tuple, data.loc[data.partial_overlap, ["row", "column"]].to_numpy())) == {
        ("pt2-1", "pt2-4"), ("pt2-4", "pt2-1")}
    check_saved(fig, tmp_path, "cka_matrix", data)


def test_cka_matrix_missing_layer_is_an_error():
    with pytest.raises(ValueError, match="layer 4"):
        F.cka_matrix(synthetic_matrix(["pt1-1"]), 4, "biased")


def test_cka_estimators_draws_each_estimator_on_one_linear_scale(tmp_path):
    """One panel per estimator in the table, in the fixed order whatever the table's; each panel's numbers are that
    estimator's cells; one linear [0, 1] norm everywhere, so a negative calibrated cell has 0's colour."""
    pairs = {"pt2-1": ["distance", "trianglearea"], "pt2-2": ["angle", "compass"],
             "pt2-4": ["crossing", "distance"]}
    matrix = synthetic_matrix(list(pairs), estimators=ESTIMATORS[::-1])
    fig, data = F.cka_estimators(matrix, 5, F.mixture_labels(pairs), task_sets=pairs)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["biased CKA (paper)", "debiased CKA", "calibrated CKA", "mutual k-NN"]
    for ax, estimator in zip(panels, ESTIMATORS):
        part = matrix[(matrix.layer == 5) & (matrix.estimator == estimator)].set_index(["row", "column"])["mean"]
        assert texts(ax) == [f"{part[(a, b)]:.2f}" for a in pairs for b in pairs]
        norm = ax.images[0].norm
        assert type(norm) is colors.Normalize and (norm.vmin, norm.vmax) == (0.0, 1.0)
        assert len([p for p in ax.patches if p.get_gid() == "overlap"]) == 2
    assert len(fig.axes) == len(panels) + 1  # one shared colour bar
    calibrated = data[data.estimator == "calibrated"]
    assert calibrated["mean"].min() < 0  # the synthetic table has negative cells, drawn at the bottom colour
    low = panels[2].images[0]
    assert low.to_rgba(calibrated["mean"].min()) == low.to_rgba(0.0)
    assert len(data) == 4 * 9 and set(data.layer) == {5} and list(dict.fromkeys(data.estimator)) == list(ESTIMATORS)
    check_saved(fig, tmp_path, "cka_estimators", data)
    # A table with the paper's two estimators only (made before calibrated CKA and mutual k-NN): two panels.
    fig, _ = F.cka_estimators(synthetic_matrix(list(pairs)), 5)
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["biased CKA (paper)", "debiased CKA"]


def test_cka_estimators_refuses_an_unknown_estimator_and_a_missing_layer():
    matrix = synthetic_matrix(["pt1-1", "pt1-2"], estimators=("biased", "rbf"))
    with pytest.raises(ValueError, match="unknown estimators \\['rbf'\\]"):
        F.cka_estimators(matrix, 5)
    with pytest.raises(ValueError, match="layer 4"):
        F.cka_estimators(synthetic_matrix(["pt1-1"]), 4)


# ---- §13.5 CKA vs number of tasks ------------------------------------------------------------------------

def synthetic_task_count(estimators=("biased", "debiased")):
    rng = np.random.default_rng(2)
    rows = []
    for k, layer, estimator in itertools.product((1, 2, 3), (3, 4, 5, 6), estimators):
        for pair in range(3):
            for sa, sb in itertools.product((42, 1), (42, 1)):
                rows.append((f"pt{k}", k, layer, estimator, f"pt{k}-{pair + 1}", sa, 0, f"pt{k}-{pair + 4}", sb, 0,
                             rng.uniform(0.3, 0.9)))
    values = pd.DataFrame(rows, columns=["family", "k", "layer", "estimator", "variant_a", "seed_a", "position_a",
                                         "variant_b", "seed_b", "position_b", "cka"])
    pooled = values.groupby(["k", "layer", "estimator"], as_index=False)["cka"].agg(
        mean="mean", sem=lambda v: v.std(ddof=0) / np.sqrt(len(v)), n="size")
    summary = pd.concat([pooled.assign(seed="pooled"), pooled.assign(seed="42")])
    return values, summary[["k", "layer", "estimator", "seed", "mean", "sem", "n"]]


def test_cka_vs_task_count(tmp_path):
    values, summary = synthetic_task_count()
    fig, data = F.cka_vs_task_count(values, summary)
    assert [ax.get_title() for ax in fig.axes] == ["Layer 3", "Layer 4", "Layer 5", "Layer 6"]
    points = data[data.series == "pair"]
    assert len(points) == (values.estimator == "biased").sum()
    assert np.all(np.abs(points.x - points.k) <= 0.12) and points.x.nunique() == len(points)
    means = data[data.series == "mean"].sort_values(["layer", "k"])
    ref = summary[(summary.seed == "pooled") & (summary.estimator == "biased")].sort_values(["layer", "k"])
    np.testing.assert_allclose(means.y, ref["mean"])
    np.testing.assert_allclose(means["sem"], ref["sem"])
    ax5 = fig.axes[2]
    (scatter,) = [c for c in ax5.collections if c.get_gid() == "pair"]
    np.testing.assert_allclose(scatter.get_offsets()[:, 1], points[points.layer == 5].y)
    png, _ = check_saved(fig, tmp_path, "cka_vs_task_count", data)
    fig2, data2 = F.cka_vs_task_count(values, summary)
    pd.testing.assert_frame_equal(data, data2)
    assert check_saved(fig2, tmp_path, "cka_vs_task_count")[0] == png


def test_cka_task_count_estimators(tmp_path):
    """At one layer, a panel per estimator with exactly that estimator's pooled means and pair values."""
    values, summary = synthetic_task_count(ESTIMATORS)
    fig, data = F.cka_task_count_estimators(values, summary, 5)
    assert [ax.get_title() for ax in fig.axes] == ["biased CKA (paper)", "debiased CKA", "calibrated CKA",
                                                   "mutual k-NN"]
    assert set(data.layer) == {5}
    for ax, estimator in zip(fig.axes, ESTIMATORS):
        ref = summary[(summary.seed == "pooled") & (summary.estimator == estimator) & (summary.layer == 5)]
        (errorbar,) = ax.containers
        np.testing.assert_allclose(np.asarray(errorbar.lines[0].get_ydata(), float), ref.sort_values("k")["mean"])
        (scatter,) = [c for c in ax.collections if c.get_gid() == "pair"]
        pairs = values[(values.estimator == estimator) & (values.layer == 5)]
        assert sorted(scatter.get_offsets()[:, 1]) == sorted(pairs.cka)
        assert len(data[(data.estimator == estimator) & (data.series == "pair")]) == len(pairs)
    check_saved(fig, tmp_path, "cka_task_count_estimators", data)


# ---- §13.7 FTWB1 matrix ----------------------------------------------------------------------------------

def synthetic_ftwb1(tasks=TASK_NAMES, nan_cell=None):
    rng = np.random.default_rng(3)
    rows = [(seed, a, b, rng.uniform(0, 1.5)) for seed in (42, 1) for a in tasks for b in TASK_NAMES]
    table = pd.DataFrame(rows, columns=["seed", "finetuned_task", "evaluated_task", "ni"])
    mean = table.groupby(["finetuned_task", "evaluated_task"], as_index=False, sort=False)["ni"].mean()
    table = pd.concat([table, mean.assign(seed="mean")], ignore_index=True)
    if nan_cell:
        table.loc[(table.finetuned_task == nan_cell[0]) & (table.evaluated_task == nan_cell[1]), "ni"] = np.nan
    return table.astype({"seed": str})


def test_ftwb1_matrix(tmp_path):
    table = synthetic_ftwb1(nan_cell=("angle", "inside"))
    fig, data = F.ftwb1_matrix(table)
    ax = fig.axes[0]
    image = ax.images[0]
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0) and image.get_cmap().name.startswith("RdYlGn")
    marks = [t for t in ax.texts if t.get_text() == "T"]
    centres = {(round(t.get_position()[1] + 0.42), round(t.get_position()[0] + 0.42)) for t in marks}
    assert centres == {(i, i) for i in range(7)}  # exactly the trained (diagonal) cells
    numbers = [t for t in texts(ax) if t != "T"]
    mean = table[table.seed == "mean"].set_index(["finetuned_task", "evaluated_task"])["ni"]
    assert numbers == [f"{mean[(a, b)]:.2f}" for a in TASK_NAMES for b in TASK_NAMES if np.isfinite(mean[(a, b)])]
    assert len(numbers) == 48
    assert data.trained.sum() == 7 and len(data) == 49
    check_saved(fig, tmp_path, "ftwb1_matrix", data)


def test_ftwb1_matrix_reduced_rows_and_one_seed():
    table = synthetic_ftwb1(tasks=("distance", "perimeter"))
    fig, data = F.ftwb1_matrix(table, seed=42)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["D", "P"]
    marks = [t.get_position() for t in ax.texts if t.get_text() == "T"]
    assert [(round(x + 0.42), round(y + 0.42)) for x, y in marks] == [(0, 0), (5, 1)]
    assert "seed 42" in ax.get_title()
    with pytest.raises(ValueError, match="seed"):
        F.ftwb1_matrix(table, seed=7)


# ---- §13.8 CKA vs generalization -------------------------------------------------------------------------

def synthetic_cka_generalization(nan_fit=False, estimators=("biased", "debiased")):
    rng = np.random.default_rng(4)
    six = TASK_NAMES[:6]
    rows = [(e, x, y, rng.uniform(0.3, 0.9), rng.uniform(0, 1.2))
            for e in estimators for x in six for y in six if x != y]
    points = pd.DataFrame(rows, columns=["estimator", "finetuned_task", "evaluated_task", "cka", "ni"])
    fits = {"biased": (0.41, 0.0243, 1.2, -0.2), "debiased": (0.38, 0.0385, 1.1, -0.1),
            "calibrated": (0.12, 0.53, 0.4, 0.3), "mutual_knn": (-0.05, 0.79, -0.2, 0.6)}
    r, p, slope, intercept = zip(*(fits[e] for e in estimators))
    fit = pd.DataFrame({"estimator": list(estimators), "layer": 5, "n": 30, "r": r, "r2": np.square(r), "p": p,
                        "slope": slope, "intercept": intercept})
    if nan_fit:
        fit.loc[:, ["r", "r2", "p", "slope", "intercept"]] = np.nan
    return points, fit


def test_cka_vs_generalization(tmp_path):
    points, fit = synthetic_cka_generalization()
    fig, data = F.cka_vs_generalization(points, fit)
    ax = fig.axes[0]
    assert texts(ax) == ["r² = 0.17, p = 0.024"]
    (line,) = [l for l in ax.lines if l.get_gid() == "fit"]
    x, y = line.get_data()
    np.testing.assert_allclose(y, 1.2 * np.asarray(x) - 0.2)
    groups = {c.get_gid(): c for c in ax.collections}
    assert set(groups) == {f"task:{t}" for t in TASK_NAMES[:6]}
    for task in TASK_NAMES[:6]:
        assert len(groups[f"task:{task}"].get_offsets()) == 5
        assert colors.same_color(groups[f"task:{task}"].get_facecolor()[0], F.TASK_COLORS[task])
    assert len(data) == 30 and set(data.estimator) == {"biased"}
    assert "layer-5" in ax.get_xlabel()
    check_saved(fig, tmp_path, "cka_vs_generalization", data)


def test_cka_vs_generalization_without_fit(tmp_path):
    points, fit = synthetic_cka_generalization(nan_fit=True)
    fig, _ = F.cka_vs_generalization(points, fit, "debiased")
    ax = fig.axes[0]
    assert texts(ax) == [] and not ax.lines
    check_saved(fig, tmp_path, "cka_vs_generalization")


def test_cka_vs_generalization_estimators(tmp_path):
    """A panel per estimator, each with its own fit line and r², p; one shared NI axis."""
    points, fit = synthetic_cka_generalization(estimators=ESTIMATORS)
    fig, data = F.cka_vs_generalization_estimators(points, fit)
    panels = [ax for ax in fig.axes if ax.collections]
    assert [ax.get_title() for ax in panels] == ["biased CKA (paper)", "debiased CKA", "calibrated CKA",
                                                 "mutual k-NN"]
    assert [texts(ax) for ax in panels] == [["r² = 0.17, p = 0.024"], ["r² = 0.14, p = 0.038"],
                                            ["r² = 0.01, p = 0.53"], ["r² = 0.00, p = 0.79"]]
    for ax, estimator in zip(panels, ESTIMATORS):
        row = fit[fit.estimator == estimator].iloc[0]
        (line,) = [l for l in ax.lines if l.get_gid() == "fit"]
        x, y = line.get_data()
        np.testing.assert_allclose(y, row.slope * np.asarray(x) + row.intercept)
        offsets = np.concatenate([c.get_offsets() for c in ax.collections])
        assert sorted(offsets[:, 0]) == sorted(points[points.estimator == estimator].cka)
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[3])
    assert len(data) == 4 * 30
    check_saved(fig, tmp_path, "cka_vs_generalization_estimators", data)


# ---- §13.9 deviation matrix ------------------------------------------------------------------------------

def synthetic_deviation_matrix(pairs):
    rng = np.random.default_rng(5)
    rows = [(seed, p, t, rng.uniform(-0.6, 0.4)) for seed in ("42", "mean") for p in pairs for t in TASK_NAMES]
    return pd.DataFrame(rows, columns=["seed", "pair", "evaluated_task", "deviation"])


def test_deviation_matrix(tmp_path):
    pairs = [F.set_label(p) for p in itertools.combinations(TASK_NAMES, 2)]
    assert len(pairs) == 21
    table = synthetic_deviation_matrix(pairs)
    fig, data = F.deviation_matrix(table)
    ax = fig.axes[0]
    image = ax.images[0]
    mean = table[table.seed == "mean"]
    limit = mean.deviation.abs().max()
    assert image.norm.vmin == pytest.approx(-limit) and image.norm.vmax == pytest.approx(limit)
    assert image.get_cmap().name.startswith("RdBu")
    ticks = ax.get_yticklabels()
    assert [t.get_text() for t in ticks] == pairs
    red = [t.get_text() for t in ticks if colors.same_color(t.get_color(), "#d62728")]
    assert red == ["D,T", "D,A", "D,Co", "D,I", "D,P", "D,Cr"]
    assert texts(ax) == [f"{v:.2f}" for v in mean.deviation]
    assert data.has_distance.sum() == 6 * 7 and len(data) == 21 * 7
    check_saved(fig, tmp_path, "deviation_matrix", data)


def test_deviation_matrix_all_zero_keeps_a_finite_scale():
    fig, _ = F.deviation_matrix(synthetic_deviation_matrix(["D,P"]).assign(deviation=0.0))
    norm = fig.axes[0].images[0].norm
    assert (norm.vmin, norm.vmax) == (-1.0, 1.0)


# ---- §13.10 deviation histogram --------------------------------------------------------------------------

def test_deviation_histogram(tmp_path):
    pairs = {f"ftwb2-{i + 1}": list(p) for i, p in enumerate(itertools.combinations(TASK_NAMES, 2))}
    rng = np.random.default_rng(6)
    rows = [(m, s, t, rng.normal(0, 0.2)) for m in pairs for s in (42, 1, 2, 3) for t in TASK_NAMES]
    table = pd.DataFrame(rows, columns=["mixture", "seed", "task", "deviation"])
    table.loc[0, "deviation"] = 0.9  # outside [-0.5, 0.5]: counted in the last bin, not dropped
    fig, data = F.deviation_histogram(table, pairs)
    counts = data.groupby("group")["count"].sum()
    assert counts["with distance"] == 168 and counts["without distance"] == 420
    assert data.groupby("group").size().tolist() == [23, 23]
    np.testing.assert_allclose(data.bin_left.iloc[0], -0.5)
    np.testing.assert_allclose(data.bin_right.iloc[22], 0.5)
    assert data[(data.group == "with distance")]["count"].iloc[-1] >= 1
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["with distance (n = 168)", "without distance (n = 420)"]
    assert any(colors.same_color(p.get_facecolor()[:3], "#d62728") for p in ax.patches)
    assert any(colors.same_color(p.get_facecolor()[:3], "#1f77b4") for p in ax.patches)
    check_saved(fig, tmp_path, "deviation_histogram", data)
    with pytest.raises(ValueError, match="ftwb2-1"):
        F.deviation_histogram(table, {})


# ---- §13.11 Atlantis histogram ---------------------------------------------------------------------------

def synthetic_atlantis(with_control=True, without_distance=True):
    rng = np.random.default_rng(7)
    parts = [("ftwb2-1_s42", "baseline", rng.lognormal(4, 0.5, 100)),
             ("ftwb2-1_s42", "atlantis_with_distance", rng.lognormal(6, 0.3, 20))]
    if without_distance:
        parts.append(("ftwb2-2_s42", "atlantis_without_distance", rng.lognormal(5, 0.4, 20)))
    if with_control:
        parts += [("pt7-atl_s42", "atlantis_control", rng.lognormal(4, 0.5, 20)),
                  ("pt7-atl_s42", "control_baseline", rng.lognormal(1, 0.5, 100))]  # outside the pooled range
    errors = pd.concat([pd.DataFrame({"run": r, "group": g, "city_id": np.arange(len(e)) + 1000, "error": e})
                        for r, g, e in parts], ignore_index=True)
    groups = ["baseline", "atlantis_without_distance", "atlantis_with_distance"]
    stats = errors[errors.group.isin(groups)].groupby("group")["error"].agg(["mean", "median", "size"])
    control = errors.loc[errors.group == "atlantis_control", "error"].mean() if with_control else np.nan
    summary = pd.DataFrame({"group": groups, "models": 1, "cities": stats["size"].reindex(groups).fillna(0).to_numpy(),
                            "mean": stats["mean"].reindex(groups).to_numpy(),
                            "median": stats["median"].reindex(groups).to_numpy(),
                            "mann_whitney_u": np.nan, "mann_whitney_p": np.nan, "control_atlantis_mean": control})
    return errors, summary


def test_atlantis_histogram(tmp_path):
    errors, summary = synthetic_atlantis()
    fig, data = F.atlantis_histogram(errors, summary)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    pooled = errors[errors.group.isin(list(F.ATLANTIS_GROUPS))].error
    assert data.groupby("group").size().tolist() == [40, 40, 40]
    edges = np.append(data.bin_left.iloc[:40].to_numpy(), data.bin_right.iloc[39])
    np.testing.assert_allclose(edges, np.geomspace(pooled.min(), pooled.max(), 41))
    assert data.groupby("group")["count"].sum().to_dict() == {
        "baseline": 100, "atlantis_with_distance": 20, "atlantis_without_distance": 20}
    dashed = {l.get_gid(): l for l in ax.lines if l.get_linestyle() == "--"}
    assert set(dashed) == {f"mean:{g}" for g in F.ATLANTIS_GROUPS}
    for group, line in dashed.items():
        expected = summary.set_index("group").loc[group.split(":")[1], "mean"]
        assert line.get_xdata()[0] == pytest.approx(expected)
    (control,) = [l for l in ax.lines if l.get_gid() == "control-mean"]
    assert control.get_linestyle() == "-" and colors.same_color(control.get_color(), "#2ca02c")
    assert control.get_xdata()[0] == pytest.approx(summary.control_atlantis_mean.iloc[0])
    png, _ = check_saved(fig, tmp_path, "atlantis_histogram", data)
    assert check_saved(F.atlantis_histogram(errors, summary)[0], tmp_path, "atlantis_histogram")[0] == png


def test_atlantis_histogram_without_control_or_empty_group():
    errors, summary = synthetic_atlantis(with_control=False, without_distance=False)
    fig, data = F.atlantis_histogram(errors, summary)
    ax = fig.axes[0]
    assert not [l for l in ax.lines if l.get_gid() == "control-mean"]
    assert {l.get_gid() for l in ax.lines} == {"mean:baseline", "mean:atlantis_with_distance"}
    assert set(data.group) == {"baseline", "atlantis_with_distance"}


# ---- determinism of the files ----------------------------------------------------------------------------

def test_saved_bytes_are_reproducible(tmp_path):
    table = synthetic_ftwb1()
    first = check_saved(F.ftwb1_matrix(table)[0], tmp_path, "ftwb1_matrix")
    second = check_saved(F.ftwb1_matrix(table)[0], tmp_path, "ftwb1_matrix")
    assert first == second  # PNG and PDF alike: no dates, no versions
    assert b"CreationDate" not in first[1]


# ---- §13.2 representation views --------------------------------------------------------------------------

VIEW_REGIONS = ["Western Europe", "Africa", "China", "Atlantis"]


def view_table(seed=0, steps=("final",), n=40):
    rng = np.random.default_rng(seed)
    rows = []
    for step in steps:
        values = rng.normal(size=(n, 6))
        rows.append(pd.DataFrame({
            "step": step, "city_id": np.arange(1000, 1000 + n), "region": np.resize(VIEW_REGIONS, n),
            "is_atlantis": np.resize(VIEW_REGIONS, n) == "Atlantis", "x": rng.integers(-1800, 1800, n),
            "y": rng.integers(-900, 900, n), **{c: values[:, i] for i, c in
                                                enumerate(["pc1", "pc2", "pc3", "mixed1", "mixed2", "mixed3"])}}))
    return pd.concat(rows, ignore_index=True)


def is_3d(ax):
    return ax.name == "3d"


def test_representation_views(tmp_path):
    views = {"pt1-1_s42": view_table(0), "pt1-3_s42": view_table(1)}
    fig, data = F.representation_views(views, {"pt1-1_s42": "D", "pt1-3_s42": "A"})
    panels = [ax for ax in fig.axes if is_3d(ax)]
    flat = [ax for ax in fig.axes if not is_3d(ax)]
    assert len(panels) == 4 and len(flat) == 2  # rows PCA, mixed (3-D) and from above (2-D) x 2 models
    assert [ax.get_title() for ax in panels[:2]] == ["D: PCA (PC1–3)", "A: PCA (PC1–3)"]
    assert flat[0].get_aspect() == 1.0  # equal aspect: the world's 2:1 shape survives
    assert len(data) == 6 * 40 and set(data["view"]) == {"pca", "mixed", "rotated"}
    pca = data[(data["run"] == "pt1-1_s42") & (data["view"] == "pca")]
    assert np.allclose(pca[["a", "b", "c"]].to_numpy(), views["pt1-1_s42"][["pc1", "pc2", "pc3"]].to_numpy())
    rotated = data[(data["run"] == "pt1-3_s42") & (data["view"] == "rotated")]
    assert np.allclose(rotated["a"], views["pt1-3_s42"]["mixed1"])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["Western Europe", "Africa", "China", "Atlantis"]  # palette order, display labels
    check_saved(fig, tmp_path, "representation_views", data)
    with_r2, _ = F.representation_views(views, {"pt1-1_s42": "D", "pt1-3_s42": "A"}, {"pt1-3_s42": (0.914, 0.875)}, 3)
    titles = [ax.get_title() for ax in with_r2.axes if not is_3d(ax)]
    assert titles == ["probe x, y from above", "probe x, y from above\nlayer 3: R² x 0.91, y 0.88"]


def test_view_rows_names_missing_step():
    with pytest.raises(ValueError, match=r"no view rows for step 7; steps present: \['final'\]"):
        F.view_rows(view_table(), 7)


def test_two_task_views_insets():
    views = {"pt2-1_s42": view_table(0), "pt1-1_s42": view_table(1), "pt1-2_s42": view_table(2)}
    labels = {"pt2-1_s42": "D,T", "pt1-1_s42": "D", "pt1-2_s42": "T"}
    fig, data = F.two_task_views(views, labels, {"pt2-1_s42": ["pt1-1_s42", "pt1-2_s42"]})
    assert [ax.get_title() for ax in fig.axes] == ["D,T", "single task D", "single task T"]
    assert sorted(data.loc[data["inset_of"] == "pt2-1_s42", "run"].unique()) == ["pt1-1_s42", "pt1-2_s42"]


def test_pca_gallery_leaves_missing_seeds_blank(tmp_path):
    views = {("pt1-1", 42): view_table(0), ("pt1-1", 1): view_table(1), ("pt1-2", 7): view_table(2)}
    fig, data = F.pca_gallery(views, {"pt1-1": "D", "pt1-2": "T"})
    panels = [ax for ax in fig.axes if is_3d(ax)]
    # one column per seed position, in the config's order: T's only seed (a replacement, 7) is in column 1
    assert [ax.get_title() for ax in panels] == ["D, seed 42", "D, seed 1", "T, seed 7", ""]
    assert [bool(ax.collections) for ax in panels] == [True, True, True, False]
    assert set(map(tuple, data[["mixture", "seed"]].drop_duplicates().to_numpy())) == set(views)
    check_saved(fig, tmp_path, "pca_gallery", data)


def test_dynamics_views_orders_steps_then_final():
    views = {"pt1-1_s42": view_table(0, steps=("final", "3", "1")), "pt1-3_s42": view_table(1, steps=("1", "final"))}
    fig, data = F.dynamics_views(views, {"pt1-1_s42": "D", "pt1-3_s42": "A"})
    panels = [ax for ax in fig.axes if is_3d(ax)]
    assert [ax.get_title() for ax in panels[:3]] == ["D, step 1", "step 3", "final"]
    assert [ax.get_title() for ax in panels[3:5]] == ["A, step 1", "final"] and not panels[5].collections
    assert list(data.drop_duplicates(["run", "step"])["step"]) == ["1", "3", "final", "1", "final"]


def test_model_views(tmp_path):
    fig, data = F.model_views(view_table(), "D,T,A,Co,I,P,Cr")
    assert sum(is_3d(ax) for ax in fig.axes) == 2 and list(data["view"].unique()) == ["pca", "mixed"]
    check_saved(fig, tmp_path, "model_views", data)


# ---- §13.6 training curves ---------------------------------------------------------------------------------

def curve_tables(metric="mean_absolute_error"):
    training = pd.DataFrame({"step": [10, 20, 30, 40], "epoch": 1, "loss": [4.0, 3.0, 2.5, 2.2], "lr": 1e-3,
                             "grad_norm": 1.0})
    validation = pd.DataFrame({"step": [0, 10, 20, 40] * 2, "task": ["distance"] * 4 + ["angle"] * 4, "n": 16,
                               "loss": [4.6, 3.9, 3.1, 2.3, 9, 9, 9, 9], "metric": metric,
                               "value": [900.0, 400.0, 100.0, 20.0, 1, 1, 1, 1], "failures": 0})
    probes = pd.DataFrame({"step": ["0", "20", "40", "final"] * 2, "layer": [5] * 4 + [4] * 4,
                           "r2_mean": [0.0, 0.4, 0.9, 0.9, 9, 9, 9, 9], "mean_error": [500.0, 200.0, 50.0, 50.0, 1, 1, 1, 1],
                           "ridge_r2_mean": [0.0, 0.5, 0.85, 0.85, 9, 9, 9, 9]})
    return training, validation, probes


def test_training_curves(tmp_path):
    fig, data = F.training_curves(*curve_tables(), task="distance", title="pt1-1_s42: training")
    loss_ax, metric_ax, error_ax, r2_ax = fig.axes
    assert error_ax.get_xscale() == "log" and metric_ax.get_yscale() == "log" and error_ax.get_yscale() == "log"
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines()}
    assert list(lines["val-loss"].get_xdata()) == [10, 20, 40]  # step 0 is off a log axis; only its task
    assert list(lines["probe-r2"].get_xdata()) == [20, 40] and list(lines["probe-r2"].get_ydata()) == [0.4, 0.9]
    assert list(lines["probe-ridge-r2"].get_ydata()) == [0.5, 0.85] and lines["probe-ridge-r2"].get_linestyle() == "--"
    assert list(lines["probe-error"].get_ydata()) == [200.0, 50.0]  # layer 5, checkpoints, not "final"
    series = data.groupby("series").size().to_dict()
    assert series == {"train_loss": 4, "validation_loss": 3, "validation_mean_absolute_error": 3,
                      "probe_r2_mean": 2, "probe_ridge_r2_mean": 2, "probe_mean_error": 2}
    check_saved(fig, tmp_path, "training_curves", data)


def test_training_curves_accuracy_axis_is_linear():
    fig, _ = F.training_curves(*curve_tables("accuracy"), task="distance", title="t")
    assert fig.axes[1].get_yscale() == "linear"


def test_checkpoint_metrics(tmp_path):
    rows = [(step, "standard", task, "accuracy" if task in ("compass", "inside", "crossing") else "mean_absolute_error",
             value) for step, value in ((0, 0.1), (5, 0.5), (10, 0.9)) for task in TASK_NAMES]
    table = pd.DataFrame(rows, columns=["step", "test_set", "task", "metric", "value"])
    fig, data = F.checkpoint_metrics(table, "pt7_s42: every task")
    error_ax, acc_ax = fig.axes
    assert sorted(line.get_gid() for line in error_ax.get_lines()) == sorted(
        f"task:{t}" for t in ("distance", "trianglearea", "angle", "perimeter"))
    assert all(line.get_linestyle() == "--" for line in acc_ax.get_lines()) and len(acc_ax.get_lines()) == 3
    assert error_ax.get_yscale() == "log" and len(data) == 14  # steps 5 and 10 for 7 tasks
    check_saved(fig, tmp_path, "checkpoint_metrics", data)


# ---- §13.12 Atlantis predictions -------------------------------------------------------------------------

def test_atlantis_predictions(tmp_path):
    errors = pd.DataFrame({"run": ["ftwb2-2_s42"] * 3 + ["ftwb2-13_s42"] * 3,
                           "group": ["baseline", "atlantis_without_distance", "atlantis_without_distance",
                                     "baseline", "atlantis_with_distance", "atlantis_with_distance"],
                           "city_id": [1, 2, 3, 1, 2, 3], "x": [0, -350, -340] * 2, "y": [0, 350, 360] * 2,
                           "pred_x": [1, -352, -338, 5, -100, 40], "pred_y": [1, 351, 361, 5, 200, 300]})
    errors["error"] = np.hypot(errors["pred_x"] - errors["x"], errors["pred_y"] - errors["y"])
    views = {"ftwb2-2_s42": view_table(0), "ftwb2-13_s42": view_table(1)}
    fig, data = F.atlantis_predictions(errors, views, {"ftwb2-2_s42": "A,Co", "ftwb2-13_s42": "D,P"})
    flat = [ax for ax in fig.axes if not is_3d(ax)]
    assert len(flat) == 2 and sum(is_3d(ax) for ax in fig.axes) == 2
    predicted = [c for c in flat[1].collections if c.get_gid() == "predicted"][0]
    assert np.allclose(predicted.get_offsets(), [[-100, 200], [40, 300]])  # Atlantis rows only
    assert flat[1].get_title() == f"D,P: Atlantis, mean error {errors['error'].iloc[4:].mean():.0f}"
    assert (data["panel"] == "predictions").sum() == 4
    check_saved(fig, tmp_path, "atlantis_predictions", data)


def test_atlantis_predictions_names_a_run_without_rows():
    with pytest.raises(ValueError, match="no Atlantis rows for ftwb2-2_s42"):
        F.atlantis_predictions(pd.DataFrame(columns=["run", "group", "city_id", "x", "y", "pred_x", "pred_y", "error"]),
                               {"ftwb2-2_s42": view_table()}, {"ftwb2-2_s42": "A,Co"})


# ---- METHOD Appendix C.2 / C.4: the single-task family across conditions ---------------------------------------

def condition_tables(columns: dict[str, dict]):
    summary = pd.DataFrame([{"group": g, **c, "estimator": e, "layer": 5, "anchor_vs_others": 0.5 + i / 10,
                             "others_vs_others": 0.4, "n_tasks": 2, "mean_probe_r2": 0.7, "n_runs": 2}
                            for i, (g, c) in enumerate(columns.items()) for e in ("biased", "debiased")])
    probes = pd.DataFrame([{"group": g, **c, "run": f"{t}-{g}", "task": t, "layer": 5, "r2_x": 0.6, "r2_y": 0.8,
                            "r2_mean": 0.7 - i / 10} for i, g in enumerate(columns) for c in [columns[g]]
                           for t in ("distance", "angle")])
    return summary, probes


def test_condition_summary_plots_noise_against_p_and_sizes_in_order(tmp_path):
    """Noise conditions sit at their p (0 clean, 0.1, 0.3: not evenly spaced); sizes at 0, 1, 2 in table order; the
    plotted values are the tables' own."""
    summary, probes = condition_tables({"clean": {"level": 0.0, "variant": "clean"},
                                        "noise10": {"level": 0.1, "variant": "noise10"},
                                        "noise30": {"level": 0.3, "variant": "noise30"}})
    fig, data = F.condition_summary(summary, probes, "label noise p")
    cka = data[(data.panel == "cka") & (data.series == "anchor_vs_others/biased")]
    assert cka.x.tolist() == [0.0, 0.1, 0.3] and cka.y.tolist() == pytest.approx([0.5, 0.6, 0.7])
    mean = data[(data.panel == "r2") & (data.series == "mean")]
    assert mean.set_index("group").y.to_dict() == pytest.approx({"clean": 0.7, "noise10": 0.6, "noise30": 0.5})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["clean", "0.1", "0.3"]
    F.save_figure(fig, tmp_path / "noise", data)
    assert mpimg.imread(tmp_path / "noise.png").shape[:2] == (570, 1500)

    sizes = {g: {"hidden_size": h, "num_hidden_layers": d, "parameters": p, "variant": g}
             for g, h, d, p in (("w64d2", 64, 2, 144320), ("model", 128, 6, 1601920), ("w256d6", 256, 6, 6e6))}
    fig, data = F.condition_summary(*condition_tables(sizes), "size")
    assert data[data.series == "mean"].x.tolist() == [0, 1, 2]
    assert fig.axes[0].get_xticklabels()[0].get_text() == "w64d2\n64×2, 0.14M"
