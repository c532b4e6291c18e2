"""Figures (METHOD §13): each function takes analysis tables in the layouts the rules write and draws.

Nothing here computes results: means, SEMs, fits and deviations come from the tables. A drawing function
returns `(fig, data)`, where `data` is a tidy DataFrame of exactly the values drawn (§13: every figure also
has a tidy data file). Figures are `matplotlib.figure.Figure` objects (no pyplot state), drawn at a fixed
size per kind so the PNG pixel size is `FIGSIZE[kind] * DPI`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib import colors, ticker
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Polygon, Rectangle

from .artifacts import atomic_write_bytes
from .generalization import pair_label
from .tasks import TASK_ABBR, TASK_NAMES

DPI = 150

# §2.5: stored region name -> display label, in legend order; Atlantis last so it is drawn on top.
REGION_LABELS = {
    "Western Europe": "Western Europe", "Eastern Europe": "Eastern Europe", "Middle East": "Middle East",
    "Africa": "Africa", "India": "South Asia", "Central Asia": "Central Asia", "China": "China",
    "Korea": "Korea", "Japan": "Japan", "Southeast Asia": "South East Asia", "Oceania": "Oceania",
    "North America": "North America", "South America": "South America", "Antarctica": "Antarctica",
    "Unknown": "Unknown", "Atlantis": "Atlantis",
}
REGION_COLORS = {
    "Western Europe": "#1f77b4", "Eastern Europe": "#9ecae1", "Middle East": "#8c564b", "Africa": "#ff7f0e",
    "India": "#e377c2", "Central Asia": "#bcbd22", "China": "#d62728", "Korea": "#ff9896", "Japan": "#9467bd",
    "Southeast Asia": "#2ca02c", "Oceania": "#c5b0d5", "North America": "#17becf", "South America": "#98df8a",
    "Antarctica": "#7f7f7f", "Unknown": "#c7c7c7", "Atlantis": "#000000",
}
TASK_COLORS = dict(zip(TASK_NAMES, mpl.colormaps["tab10"].colors))

# Figure size in inches per kind; every width and height times DPI is a whole number of pixels.
FIGSIZE = {
    "world_map": (10.0, 5.5), "cka_matrix": (5.5, 4.8), "cka_vs_task_count": (12.0, 3.2),
    "ftwb1_matrix": (5.5, 4.8), "cka_vs_generalization": (5.5, 4.5), "deviation_matrix": (6.0, 9.0),
    "deviation_histogram": (5.5, 3.8), "atlantis_histogram": (6.5, 3.8),
    "representation_views": (12.0, 10.0), "two_task_views": (10.0, 5.0), "pca_gallery": (8.0, 14.0),
    "dynamics_views": (14.0, 7.0), "model_views": (10.0, 5.0), "training_curves": (6.0, 7.0),
    "checkpoint_metrics": (7.5, 4.0), "atlantis_predictions": (9.0, 9.0),
    "cka_estimators": (18.0, 4.6), "cka_task_count_estimators": (12.0, 3.2),
    "cka_vs_generalization_estimators": (16.0, 4.0),
}
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 7, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": DPI, "figure.dpi": DPI,
    "pdf.fonttype": 42, "image.interpolation": "nearest",
}
# §13.3: CKA 0-0.4 -> 0-0.2, 0.4-0.6 -> 0.2-0.5, 0.6-1 -> 0.5-1, so the informative upper range gets the colours.
CKA_KNOTS = ((0.0, 0.4, 0.6, 1.0), (0.0, 0.2, 0.5, 1.0))


def apply_style() -> None:
    """Set the project style globally (for interactive use; the drawing functions apply it themselves)."""
    mpl.rcParams.update(STYLE)


def styled(draw):
    """Run a drawing function under the project style, leaving the caller's rcParams untouched."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def new_figure(kind: str, ncols: int = 1, **subplot_kw):
    fig = Figure(figsize=FIGSIZE[kind], dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False, **subplot_kw)[0]
    return fig, axes


def save_figure(fig: Figure, path_without_suffix, data: pd.DataFrame | None = None) -> list[Path]:
    """Write `<path>.png` and `<path>.pdf` (and `<path>.csv` when `data` is given), atomically and
    byte-reproducibly: fixed dpi, no bbox cropping (the pixel size stays FIGSIZE * DPI), no dates or versions."""
    base = Path(path_without_suffix)
    paths = [base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")]
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}
    with mpl.rc_context(STYLE):
        for path in paths:
            fmt = path.suffix[1:]
            atomic_write_bytes(path, lambda h: fig.savefig(h, format=fmt, dpi=DPI, metadata=metadata[fmt]))
    if data is not None:
        paths.append(base.with_name(base.name + ".csv"))
        atomic_write_bytes(paths[-1], lambda h: data.to_csv(h, index=False))
    return paths


def piecewise_cka_norm() -> colors.Normalize:
    """The §13.3 piecewise-linear CKA colour normalisation; values outside [0, 1] clamp to the ends."""
    (x, y) = CKA_KNOTS

    def forward(values):
        return np.interp(values, x, y)

    def inverse(values):
        return np.interp(values, y, x)

    return colors.FuncNorm((forward, inverse), vmin=0.0, vmax=1.0)


def set_label(tasks) -> str:
    """Display label of a task set, abbreviations in canonical order: ["crossing", "distance"] -> "D,Cr"."""
    return pair_label(tasks)


def mixture_labels(mixtures: dict[str, list[str]]) -> dict[str, str]:
    """Mixture name -> task-set label, e.g. {"pt2-1": ["distance", "trianglearea"]} -> {"pt2-1": "D,T"}."""
    return {name: set_label(tasks) for name, tasks in mixtures.items()}


def select_seed(table: pd.DataFrame, seed) -> pd.DataFrame:
    """Rows of one seed ("mean" for the seed-mean rows); the column holds ints or strings depending on the file."""
    part = table[table["seed"].astype(str) == str(seed)]
    if part.empty:
        raise ValueError(f"no rows with seed {seed!r}; seeds present: {sorted(table['seed'].astype(str).unique())}")
    return part


def text_colour(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def annotate_cells(ax, values: np.ndarray, cmap, norm, texts: np.ndarray | None = None) -> None:
    """Write each finite cell to 2 decimals (or `texts`, a same-shape array of strings); NaN cells stay blank."""
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            label = f"{value:.2f}" if texts is None else texts[i, j]
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color=text_colour(cmap(norm(value))))


def heatmap(ax, values: np.ndarray, row_labels, column_labels, cmap, norm):
    cmap = mpl.colormaps[cmap].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(column_labels)), column_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image, cmap


# ---- §13.1 world map ------------------------------------------------------------------------------------

@styled
def world_map(cities: pd.DataFrame):
    """Cities at scaled x/y, coloured by region, equal aspect; a circle around the Atlantis cluster.
    `cities` is the world city table (`worldrep.world.read_cities`)."""
    fig, (ax,) = new_figure("world_map")
    atlantis = cities["is_atlantis"].astype(str).eq("True")
    unknown = sorted(set(cities["region"]) - set(REGION_COLORS))
    if unknown:
        raise ValueError(f"regions without a colour: {unknown}")
    for region in REGION_COLORS:
        part = cities[cities["region"] == region]
        if len(part):
            size = 10 if region == "Atlantis" else 3
            ax.scatter(part["x"], part["y"], s=size, color=REGION_COLORS[region], linewidths=0,
                       label=REGION_LABELS[region], gid=f"region:{region}")
    if atlantis.any():
        xy = cities.loc[atlantis, ["x", "y"]].to_numpy(float)
        centre = xy.mean(axis=0)
        radius = 1.3 * np.sqrt(((xy - centre) ** 2).sum(axis=1)).max() + 20  # 20 units = 2 degrees of margin
        ax.add_patch(Circle(centre, radius, fill=False, edgecolor="#d62728", linewidth=1.2, gid="atlantis-circle"))
    ax.set_aspect("equal")
    ax.set_xlabel("x (0.1° longitude)")
    ax.set_ylabel("y (0.1° latitude)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3)
    data = cities[["city_id", "x", "y", "region"]].assign(
        region_label=cities["region"].map(REGION_LABELS), is_atlantis=atlantis)
    return fig, data.reset_index(drop=True)


# ---- §13.3 / §13.4 CKA matrices -------------------------------------------------------------------------

def partial_overlap(a, b) -> bool:
    """Two task sets that share a task without being equal (§13.4: excluded from the task-count analysis)."""
    a, b = set(a), set(b)
    return a != b and bool(a & b)


def overlap_triangle(i: int, j: int) -> Polygon:
    """A small filled triangle in the upper-right corner of cell (i, j)."""
    corner = np.array([[j + 0.5, i - 0.5], [j + 0.15, i - 0.5], [j + 0.5, i - 0.15]])
    return Polygon(corner, closed=True, facecolor="#00bcd4", edgecolor="none", gid="overlap")


# The similarity estimators of `worldrep.cka.cka_matrices`, in panel order, with their panel titles.
ESTIMATOR_TITLES = {"biased": "biased CKA (paper)", "debiased": "debiased CKA", "calibrated": "calibrated CKA",
                    "mutual_knn": "mutual k-NN"}


def table_estimators(table: pd.DataFrame) -> list[str]:
    """The estimators a CKA table holds, in ESTIMATOR_TITLES order; an unknown one is an error, not a lost panel."""
    present = set(table["estimator"])
    unknown = present - set(ESTIMATOR_TITLES)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; known: {list(ESTIMATOR_TITLES)}")
    return [e for e in ESTIMATOR_TITLES if e in present]


def family_cells(matrix: pd.DataFrame, layer: int, estimator: str, labels: dict[str, str] | None):
    """(variants in label order, mean [V, V], sem [V, V]) of one estimator at one layer of `cka/<family>/matrix.csv`."""
    part = matrix[(matrix["layer"] == layer) & (matrix["estimator"] == estimator)]
    if part.empty:
        raise ValueError(f"no CKA cells for layer {layer}, estimator {estimator!r}")
    present = set(part["row"]) | set(part["column"])
    if labels is None:
        labels = {v: v for v in sorted(present, key=lambda v: int(v.rsplit("-", 1)[1]))}
    variants = [v for v in labels if v in present]
    mean = part.pivot(index="row", columns="column", values="mean").reindex(index=variants, columns=variants)
    sem = part.pivot(index="row", columns="column", values="sem").reindex(index=variants, columns=variants)
    return variants, mean.to_numpy(float), sem.to_numpy(float)


def mark_overlaps(ax, variants: list[str], task_sets: dict[str, list[str]] | None) -> np.ndarray:
    """Mark (and return as a [V, V] mask) the cells whose two task sets partially overlap."""
    overlap = np.zeros((len(variants), len(variants)), dtype=bool)
    if task_sets is not None:
        for (i, a), (j, b) in ((ia, jb) for ia in enumerate(variants) for jb in enumerate(variants)):
            overlap[i, j] = partial_overlap(task_sets[a], task_sets[b])
            if overlap[i, j]:
                ax.add_patch(overlap_triangle(i, j))
    return overlap


def cells_frame(variants: list[str], names: list[str], mean: np.ndarray, sem: np.ndarray,
                overlap: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "row": np.repeat(variants, len(variants)), "column": np.tile(variants, len(variants)),
        "row_label": np.repeat(names, len(names)), "column_label": np.tile(names, len(names)),
        "mean": mean.ravel(), "sem": sem.ravel(), "partial_overlap": overlap.ravel(),
    })


@styled
def cka_matrix(matrix: pd.DataFrame, layer: int, estimator: str, labels: dict[str, str] | None = None,
               task_sets: dict[str, list[str]] | None = None, with_sem: bool = False):
    """Family CKA matrix from `cka/<family>/matrix.csv` (layer, estimator, row, column, mean, sem, n).
    `labels` maps variant -> axis label and fixes the order (default: the variant names in index order);
    `task_sets` (variant -> tasks) marks cells whose two task sets partially overlap."""
    variants, mean, sem = family_cells(matrix, layer, estimator, labels)
    names = [labels[v] for v in variants] if labels else variants
    fig, (ax,) = new_figure("cka_matrix")
    norm = piecewise_cka_norm()
    image, cmap = heatmap(ax, mean, names, names, "magma", norm)
    texts = None
    if with_sem:
        texts = np.array([[f"{m:.2f}\n±{s:.2f}" for m, s in zip(mr, sr)] for mr, sr in zip(mean, sem)])
    annotate_cells(ax, mean, cmap, norm, texts)
    overlap = mark_overlaps(ax, variants, task_sets)
    fig.colorbar(image, ax=ax, label=f"CKA ({estimator})", ticks=[0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0])
    suffix = "" if estimator == "biased" else f" ({estimator})"
    ax.set_title(f"Layer-{layer} residual-stream CKA{suffix}")
    return fig, cells_frame(variants, names, mean, sem, overlap).assign(layer=layer, estimator=estimator)


@styled
def cka_estimators(matrix: pd.DataFrame, layer: int, labels: dict[str, str] | None = None,
                   task_sets: dict[str, list[str]] | None = None):
    """A family's matrix at `layer` once per estimator in the table, side by side (Project addition, METHOD §12):
    biased CKA (the paper's), debiased, calibrated (biased minus its permutation-null mean) and mutual k-NN. One
    linear colour scale over [0, 1] for every panel, not the paper's piecewise one, so that a cell's colour means
    the same value in each panel and a conclusion that needs the stretched upper range shows it; calibrated
    values below 0 take the scale's bottom colour and keep their number."""
    estimators = table_estimators(matrix[matrix["layer"] == layer])
    if not estimators:
        raise ValueError(f"no CKA cells for layer {layer}")
    fig, axes = new_figure("cka_estimators", ncols=len(estimators))
    norm = colors.Normalize(0.0, 1.0)
    frames = []
    for ax, estimator in zip(axes, estimators):
        variants, mean, sem = family_cells(matrix, layer, estimator, labels)
        names = [labels[v] for v in variants] if labels else variants
        image, cmap = heatmap(ax, mean, names, names, "magma", norm)
        annotate_cells(ax, mean, cmap, norm)
        overlap = mark_overlaps(ax, variants, task_sets)
        ax.set_title(ESTIMATOR_TITLES[estimator], gid=f"estimator:{estimator}")
        frames.append(cells_frame(variants, names, mean, sem, overlap).assign(estimator=estimator))
    fig.colorbar(image, ax=list(axes), label="similarity", ticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    fig.suptitle(f"Layer-{layer} similarity of the family's models, by estimator")
    return fig, pd.concat(frames, ignore_index=True).assign(layer=layer)


# ---- §13.5 CKA vs number of tasks -----------------------------------------------------------------------

TASK_COUNTS = (1, 2, 3)  # §12: families pt1, pt2, pt3


def task_count_points(values: pd.DataFrame, summary: pd.DataFrame, estimator: str, jitter_seed: int):
    """(pair points with a jittered x, pooled means) of one estimator: the pairs of `cka/task_count.csv` in a
    fixed order, jittered horizontally by a seeded Generator, and the "pooled" rows of the summary."""
    points = values[values["estimator"] == estimator].sort_values(
        ["layer", "k", "variant_a", "variant_b", "seed_a", "seed_b"], kind="stable")
    means = select_seed(summary[summary["estimator"] == estimator], "pooled").sort_values(["layer", "k"])
    rng = np.random.default_rng(jitter_seed)
    return points.assign(x=points["k"] + rng.uniform(-0.12, 0.12, len(points))), means


def task_count_panel(ax, points: pd.DataFrame, means: pd.DataFrame) -> None:
    ax.scatter(points["x"], points["cka"], s=8, color="#7f7f7f", alpha=0.6, linewidths=0, gid="pair")
    ax.errorbar(means["k"], means["mean"], yerr=means["sem"], color="black", marker="o", ms=4, capsize=3, gid="mean")
    ax.set_xticks(TASK_COUNTS)
    ax.set_xlim(TASK_COUNTS[0] - 0.5, TASK_COUNTS[-1] + 0.5)
    ax.set_xlabel("number of training tasks")


def task_count_frame(points: pd.DataFrame, means: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([
        points.assign(series="pair", y=points["cka"], sem=np.nan)[["layer", "k", "series", "x", "y", "sem"]],
        means.assign(series="mean", x=means["k"], y=means["mean"])[["layer", "k", "series", "x", "y", "sem"]],
    ], ignore_index=True)


@styled
def cka_vs_task_count(values: pd.DataFrame, summary: pd.DataFrame, estimator: str = "biased", jitter_seed: int = 0):
    """One panel per layer: pooled mean ± SEM per task count k (`cka/task_count_summary.csv`, seed "pooled")
    over the individual pair values (`cka/task_count.csv`), jittered horizontally with a seeded Generator."""
    points, means = task_count_points(values, summary, estimator, jitter_seed)
    layers = sorted(means["layer"].unique())
    fig, axes = new_figure("cka_vs_task_count", ncols=len(layers), sharey=True)
    for ax, layer in zip(axes, layers):
        task_count_panel(ax, points[points["layer"] == layer], means[means["layer"] == layer])
        ax.set_title(f"Layer {layer}")
    axes[0].set_ylabel(f"CKA ({estimator})")
    return fig, task_count_frame(points, means).assign(estimator=estimator)


@styled
def cka_task_count_estimators(values: pd.DataFrame, summary: pd.DataFrame, layer: int, jitter_seed: int = 0):
    """The task-count figure at `layer`, one panel per estimator in the summary (Project addition): does
    similarity still rise with the number of tasks once the estimator is debiased, calibrated or local? Each
    panel has its own y range (mutual k-NN and calibrated CKA live on other scales than biased CKA)."""
    estimators = table_estimators(summary[summary["layer"] == layer])
    if not estimators:
        raise ValueError(f"no task-count rows for layer {layer}")
    fig, axes = new_figure("cka_task_count_estimators", ncols=len(estimators))
    frames = []
    for ax, estimator in zip(axes, estimators):
        points, means = task_count_points(values, summary, estimator, jitter_seed)
        points, means = points[points["layer"] == layer], means[means["layer"] == layer]
        task_count_panel(ax, points, means)
        ax.set_title(ESTIMATOR_TITLES[estimator], gid=f"estimator:{estimator}")
        frames.append(task_count_frame(points, means).assign(estimator=estimator))
    axes[0].set_ylabel(f"layer-{layer} similarity")
    return fig, pd.concat(frames, ignore_index=True)


# ---- §13.7 FTWB1 generalization matrix ------------------------------------------------------------------

@styled
def ftwb1_matrix(ftwb1: pd.DataFrame, seed="mean"):
    """Mean (or one seed's) FTWB1 NI from `generalization/ftwb1_matrix.csv` (seed, finetuned_task,
    evaluated_task, ni); RdYlGn over [0, 1]; trained cells (row task = column task) marked "T"."""
    part = select_seed(ftwb1, seed)
    rows = [t for t in TASK_NAMES if t in set(part["finetuned_task"])]
    columns = [t for t in TASK_NAMES if t in set(part["evaluated_task"])]
    ni = part.pivot(index="finetuned_task", columns="evaluated_task", values="ni").reindex(index=rows, columns=columns)
    fig, (ax,) = new_figure("ftwb1_matrix")
    norm = colors.Normalize(0.0, 1.0)
    image, cmap = heatmap(ax, ni.to_numpy(float), [TASK_ABBR[t] for t in rows], [TASK_ABBR[t] for t in columns],
                          "RdYlGn", norm)
    annotate_cells(ax, ni.to_numpy(float), cmap, norm)
    for i, task in enumerate(rows):
        if task in columns:
            j = columns.index(task)
            # A bold "T" and an outline: the trained cell must stand out whatever its colour.
            ax.text(j - 0.42, i - 0.42, "T", ha="left", va="top", fontsize=9, fontweight="bold", gid="trained")
            ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="black", linewidth=1.5,
                                   gid="trained-outline"))
    fig.colorbar(image, ax=ax, label="normalized improvement")
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("fine-tuned task")
    ax.set_title("FTWB1 generalization" + (" (mean over seeds)" if str(seed) == "mean" else f" (seed {seed})"))
    data = ni.stack(future_stack=True).rename("ni").reset_index()
    return fig, data.assign(trained=data["finetuned_task"] == data["evaluated_task"], seed=str(seed))


# ---- §13.8 CKA vs generalization ------------------------------------------------------------------------

def generalization_fit(points: pd.DataFrame, fit: pd.DataFrame, estimator: str):
    """(points, the one fit row) of one estimator from `cka/cka_vs_generalization{,_fit}.csv`."""
    p = points[points["estimator"] == estimator]
    f = fit[fit["estimator"] == estimator]
    if len(f) != 1:
        raise ValueError(f"expected one fit row for estimator {estimator!r}, found {len(f)}")
    return p, f.iloc[0]


def generalization_panel(ax, p: pd.DataFrame, f: pd.Series) -> None:
    """Points coloured by fine-tuned task X, with the least-squares line and r², p; line and annotation are left
    out when the fit is NaN."""
    for task in (t for t in TASK_NAMES if t in set(p["finetuned_task"])):
        q = p[p["finetuned_task"] == task]
        ax.scatter(q["cka"], q["ni"], s=18, color=TASK_COLORS[task], label=TASK_ABBR[task], gid=f"task:{task}")
    if np.isfinite([f["slope"], f["intercept"], f["r2"], f["p"]]).all() and len(p):
        x = np.array([p["cka"].min(), p["cka"].max()])
        ax.plot(x, f["slope"] * x + f["intercept"], color="black", linewidth=1, gid="fit")
        ax.text(0.03, 0.97, f"r² = {f['r2']:.2f}, p = {f['p']:.2g}", transform=ax.transAxes, ha="left", va="top",
                gid="fit-annotation")


def generalization_frame(p: pd.DataFrame, f: pd.Series, estimator: str) -> pd.DataFrame:
    data = p[["finetuned_task", "evaluated_task", "cka", "ni"]].reset_index(drop=True)
    return data.assign(estimator=estimator, **{c: f[c] for c in ("layer", "r", "r2", "p", "slope", "intercept")})


@styled
def cka_vs_generalization(points: pd.DataFrame, fit: pd.DataFrame, estimator: str = "biased"):
    """`cka/cka_vs_generalization.csv` points coloured by fine-tuned task X, with the least-squares line and
    r², p from `cka/cka_vs_generalization_fit.csv`; line and annotation are left out when the fit is NaN."""
    p, f = generalization_fit(points, fit, estimator)
    fig, (ax,) = new_figure("cka_vs_generalization")
    generalization_panel(ax, p, f)
    ax.set_xlabel(f"layer-{int(f['layer'])} CKA(X, Y) ({estimator})")
    ax.set_ylabel("NI on Y after fine-tuning on X")
    ax.legend(title="X", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig, generalization_frame(p, f, estimator)


@styled
def cka_vs_generalization_estimators(points: pd.DataFrame, fit: pd.DataFrame):
    """The CKA-vs-generalization scatter once per estimator in the fit table, side by side, one NI axis (Project
    addition): whether similarity predicts transfer under each estimator, each with its own r² and p."""
    estimators = table_estimators(fit)
    if not estimators:
        raise ValueError("no CKA-vs-generalization fits")
    fig, axes = new_figure("cka_vs_generalization_estimators", ncols=len(estimators), sharey=True)
    frames = []
    for ax, estimator in zip(axes, estimators):
        p, f = generalization_fit(points, fit, estimator)
        generalization_panel(ax, p, f)
        ax.set_title(ESTIMATOR_TITLES[estimator], gid=f"estimator:{estimator}")
        ax.set_xlabel(f"layer-{int(f['layer'])} similarity(X, Y)")
        frames.append(generalization_frame(p, f, estimator))
    axes[0].set_ylabel("NI on Y after fine-tuning on X")
    axes[-1].legend(title="X", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig, pd.concat(frames, ignore_index=True)


# ---- §13.9 FTWB2 deviation matrix -----------------------------------------------------------------------

def has_distance(label: str) -> bool:
    return TASK_ABBR["distance"] in label.split(",")


def pair_rows_figure(part: pd.DataFrame, value: str, cmap: str, norm: colors.Normalize | None, colorbar_label: str,
                     title: str, seed) -> tuple:
    """One seed's FTWB2 rows (fine-tuned pairs, in file order) by evaluated task of `value`, annotated, pairs
    containing distance labelled in red. `norm` None: symmetric limits around 0 from the values."""
    rows = list(dict.fromkeys(part["pair"]))
    columns = [t for t in TASK_NAMES if t in set(part["evaluated_task"])]
    matrix = part.pivot(index="pair", columns="evaluated_task", values=value).reindex(index=rows, columns=columns)
    if norm is None:
        limit = np.nanmax(np.abs(matrix.to_numpy(float)), initial=0.0)
        limit = limit if limit > 0 else 1.0
        norm = colors.Normalize(-limit, limit)
    fig, (ax,) = new_figure("deviation_matrix")
    image, cmap = heatmap(ax, matrix.to_numpy(float), rows, [TASK_ABBR[t] for t in columns], cmap, norm)
    annotate_cells(ax, matrix.to_numpy(float), cmap, norm)
    for tick, label in zip(ax.get_yticklabels(), rows):
        tick.set_color("#d62728" if has_distance(label) else "black")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("fine-tuned pair")
    ax.set_title(title + (" (mean over seeds)" if str(seed) == "mean" else f" (seed {seed})"))
    data = matrix.stack(future_stack=True).rename(value).reset_index()
    return fig, data.assign(has_distance=data["pair"].map(has_distance), seed=str(seed))


@styled
def deviation_matrix(table: pd.DataFrame, seed="mean"):
    """Mean (or one seed's) deviation from `generalization/deviation_matrix.csv` (seed, pair, evaluated_task,
    deviation); rows in file order (ftwb2 index), RdBu centred at 0 with symmetric limits (red = interference);
    row labels of pairs containing distance in red."""
    return pair_rows_figure(select_seed(table, seed), "deviation", "RdBu", None,
                            "deviation from best-teacher prediction", "FTWB2 deviation", seed)


@styled
def ftwb2_matrix(ftwb2: pd.DataFrame, seed="mean"):
    """Mean (or one seed's) FTWB2 NI from `generalization/ftwb2_matrix.csv` (seed, pair, evaluated_task, ni), laid out
    as `deviation_matrix`: RdYlGn over [0, 1]."""
    return pair_rows_figure(select_seed(ftwb2, seed), "ni", "RdYlGn", colors.Normalize(0.0, 1.0),
                            "normalized improvement", "FTWB2 generalization", seed)


# ---- §13.10 deviation histogram -------------------------------------------------------------------------

DEVIATION_BINS = np.linspace(-0.5, 0.5, 24)  # 23 equal bins


@styled
def deviation_histogram(best_teacher_deviation: pd.DataFrame, mixes: dict[str, list[str]]):
    """Per-seed deviations (`generalization/best_teacher_deviation.csv`), pooled over seeds and evaluated
    tasks, split by whether the mix (`mixes`: name -> tasks) contains distance. Values beyond ±0.5 are
    counted in the edge bins, so every value is drawn."""
    unknown = sorted(set(best_teacher_deviation["mixture"]) - set(mixes))
    if unknown:
        raise ValueError(f"mixtures without a task list: {unknown}")
    with_d = best_teacher_deviation["mixture"].map(lambda m: "distance" in mixes[m])
    values = best_teacher_deviation["deviation"].clip(DEVIATION_BINS[0], DEVIATION_BINS[-1])
    fig, (ax,) = new_figure("deviation_histogram")
    rows = []
    for group, mask, colour in (("with distance", with_d, "#d62728"), ("without distance", ~with_d, "#1f77b4")):
        v = values[mask].dropna().to_numpy(float)
        counts, _ = np.histogram(v, DEVIATION_BINS)
        ax.hist(v, DEVIATION_BINS, color=colour, alpha=0.55, label=f"{group} (n = {len(v)})", gid=group)
        rows.append(pd.DataFrame({"group": group, "bin_left": DEVIATION_BINS[:-1], "bin_right": DEVIATION_BINS[1:],
                                  "count": counts}))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(DEVIATION_BINS[0], DEVIATION_BINS[-1])
    ax.set_xlabel("deviation from best-teacher prediction")
    ax.set_ylabel("count")
    ax.legend(loc="upper left")
    return fig, pd.concat(rows, ignore_index=True)


# ---- §13.11 Atlantis reconstruction error histogram -----------------------------------------------------

ATLANTIS_GROUPS = {
    "baseline": ("baseline cities", "#7f7f7f"),
    "atlantis_without_distance": ("Atlantis, pair without D", "#1f77b4"),
    "atlantis_with_distance": ("Atlantis, pair with D", "#d62728"),
}


def log_bins(values: np.ndarray, count: int = 40) -> np.ndarray:
    positive = values[values > 0]
    if positive.size == 0:
        raise ValueError("no positive errors to bin")
    low, high = positive.min(), positive.max()
    if low == high:
        low, high = low / 1.1, high * 1.1
    return np.geomspace(low, high, count + 1)


@styled
def atlantis_histogram(errors: pd.DataFrame, summary: pd.DataFrame, layer: int | None = None):
    """The three pooled groups of `probes/atlantis_errors.csv.gz` (run, group, city_id, error) on 40
    log-spaced bins over their pooled range; dashed lines at the group means and a solid green line at the
    pt7-atl Atlantis mean (`probes/atlantis_summary.csv`), when there is one. `layer`: the probed layer, named in
    the axis label."""
    part = errors[errors["group"].isin(list(ATLANTIS_GROUPS))]
    bins = log_bins(part["error"].to_numpy(float))
    means = summary.set_index("group")["mean"]
    fig, (ax,) = new_figure("atlantis_histogram")
    rows = []
    for group, (label, colour) in ATLANTIS_GROUPS.items():
        v = part.loc[part["group"] == group, "error"].to_numpy(float)
        if v.size == 0:
            continue
        counts, _ = np.histogram(v, bins)
        ax.hist(v, bins, color=colour, alpha=0.5, label=f"{label} (n = {v.size})", gid=group)
        mean = float(means.get(group, np.nan))
        if np.isfinite(mean):
            ax.axvline(mean, color=colour, linestyle="--", linewidth=1.2, gid=f"mean:{group}")
        rows.append(pd.DataFrame({"group": group, "bin_left": bins[:-1], "bin_right": bins[1:], "count": counts,
                                  "group_mean": mean}))
    control = summary["control_atlantis_mean"].dropna() if "control_atlantis_mean" in summary else pd.Series(dtype=float)
    if len(control):
        ax.axvline(float(control.iloc[0]), color="#2ca02c", linestyle="-", linewidth=1.5,
                   label="pt7-atl Atlantis mean", gid="control-mean")
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction error (scaled units)" + (f", layer-{layer} probe" if layer is not None else ""))
    ax.set_ylabel("cities")
    ax.legend(loc="upper left")
    data = pd.concat(rows, ignore_index=True)
    return fig, data.assign(control_atlantis_mean=float(control.iloc[0]) if len(control) else np.nan)


# ---- §13.2 representation views -------------------------------------------------------------------------

VIEW_AXES = {"pca": ("pc1", "pc2", "pc3"), "mixed": ("mixed1", "mixed2", "mixed3")}
VIEW_TITLES = {"pca": "PCA (PC1–3)", "mixed": "probe x, y + residual PC", "rotated": "probe x, y from above"}
# Camera (elevation, azimuth) of the 3-D panels. The "rotated" view looks straight down onto the probe's x/y
# plane and is drawn in 2-D with equal aspect: a 3-D box would squash the 2:1 world into a square.
CAMERA = {"pca": (25, -60), "mixed": (25, -60)}


def view_rows(views: pd.DataFrame, step="final") -> pd.DataFrame:
    """One checkpoint's rows of a `views/<run>.csv.gz` table (step "final" or a step number)."""
    part = views[views["step"].astype(str) == str(step)]
    if part.empty:
        raise ValueError(f"no view rows for step {step!r}; steps present: {sorted(views['step'].astype(str).unique())}")
    return part


def scatter_view(ax, view: pd.DataFrame, kind: str, title: str, size: float = 2.0, label_axes: bool = True) -> pd.DataFrame:
    """Draw one view (`kind` pca or mixed on 3-D axes, rotated on 2-D axes) coloured by region, Atlantis on top
    and larger; returns the drawn points (city_id, region, a, b, c). Scatters are rasterized: at paper scale a
    vector PDF of ~100k points is megabytes."""
    columns = VIEW_AXES["pca" if kind == "pca" else "mixed"]
    drawn = columns[:2] if kind == "rotated" else columns
    for region in REGION_COLORS:
        part = view[view["region"] == region]
        if len(part):
            extra = {} if kind == "rotated" else {"depthshade": False}
            ax.scatter(*(part[c] for c in drawn), s=size * (4 if region == "Atlantis" else 1),
                       color=REGION_COLORS[region], linewidths=0, rasterized=True, gid=f"region:{region}", **extra)
    ax.set_title(title, fontsize=8)
    names = ("PC1", "PC2", "PC3") if kind == "pca" else ("probe x", "probe y", "resid. PC1")
    if kind == "rotated":
        ax.set_aspect("equal", adjustable="datalim")
        axes = (ax.xaxis, ax.yaxis)
        setters = (ax.set_xlabel, ax.set_ylabel)
    else:
        ax.view_init(*CAMERA[kind])
        axes = (ax.xaxis, ax.yaxis, ax.zaxis)
        setters = (ax.set_xlabel, ax.set_ylabel, ax.set_zlabel)
    if label_axes:
        for setter, name in zip(setters, names):
            setter(name, fontsize=6, labelpad=-12 if kind != "rotated" else 1)
    for axis in axes:
        axis.set_ticklabels([])
    data = view[["city_id", "region"]].copy()
    data[["a", "b", "c"]] = view[list(columns)].to_numpy(float)
    return data.assign(view=kind)


def region_legend(fig: Figure, regions) -> None:
    """One legend of the regions present, below the panels (region colours are the same in every figure)."""
    handles = [mpl.lines.Line2D([], [], marker="o", linestyle="", color=REGION_COLORS[r], label=REGION_LABELS[r])
               for r in REGION_COLORS if r in set(regions)]
    # About 1.5 inches per legend column, so a narrow figure wraps instead of cutting labels off.
    columns = max(1, min(8, len(handles), int(fig.get_figwidth() // 1.5)))
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, markerscale=1.2)


def view_grid(kind: str, nrows: int, ncols: int, flat_rows=()):
    """A grid of 3-D axes (2-D in the rows listed in `flat_rows`)."""
    fig = Figure(figsize=FIGSIZE[kind], dpi=DPI, layout="constrained")
    axes = [[fig.add_subplot(nrows, ncols, r * ncols + c + 1, projection=None if r in flat_rows else "3d")
             for c in range(ncols)] for r in range(nrows)]
    return fig, axes


@styled
def representation_views(views: dict[str, pd.DataFrame], labels: dict[str, str],
                         r2: dict[str, tuple[float, float]] | None = None, layer: int | None = None):
    """§13.2 (Fig. 2a, 3a–b): one column per model (`views`: run -> its views table, in column order), rows raw
    PCA, the probe "mixed" view and the mixed view from above; final checkpoint, analysis layer. With `r2`
    (run -> the standard-split probe R² of x and y at `layer`), the view from above says how good its map is."""
    kinds = ("pca", "mixed", "rotated")
    fig, axes = view_grid("representation_views", len(kinds), len(views), flat_rows=(2,))
    rows = []
    for c, (run, table) in enumerate(views.items()):
        final = view_rows(table)
        for r, kind in enumerate(kinds):
            title = f"{labels[run]}: {VIEW_TITLES[kind]}" if r == 0 else VIEW_TITLES[kind]
            if kind == "rotated" and r2 and run in r2:
                title += f"\nlayer {layer}: R² x {r2[run][0]:.2f}, y {r2[run][1]:.2f}"
            rows.append(scatter_view(axes[r][c], final, kind, title).assign(run=run, label=labels[run]))
    data = pd.concat(rows, ignore_index=True)
    region_legend(fig, data["region"])
    return fig, data


@styled
def two_task_views(views: dict[str, pd.DataFrame], labels: dict[str, str], insets: dict[str, list[str]]):
    """§13.2 (Fig. 3a–b): the mixed view of each two-task model (`views`: run -> table), with small insets of
    the single-task models of its tasks (`insets`: two-task run -> single-task runs present in `views`)."""
    two_task = [run for run in views if run in insets]
    # Each two-task panel spans two columns; its single-task models sit small in the row below it.
    fig = Figure(figsize=FIGSIZE["two_task_views"], dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 2 * len(two_task), height_ratios=(3, 1))
    rows = []
    for c, run in enumerate(two_task):
        ax = fig.add_subplot(grid[0, 2 * c: 2 * c + 2], projection="3d")
        rows.append(scatter_view(ax, view_rows(views[run]), "mixed", labels[run]).assign(run=run, inset_of=""))
        for k, single in enumerate(insets[run][:2]):
            inset = fig.add_subplot(grid[1, 2 * c + k], projection="3d")
            rows.append(scatter_view(inset, view_rows(views[single]), "mixed", f"single task {labels[single]}",
                                     size=0.6, label_axes=False).assign(run=single, inset_of=run))
    data = pd.concat(rows, ignore_index=True)
    region_legend(fig, data["region"])
    return fig, data


@styled
def pca_gallery(views: dict[tuple[str, int], pd.DataFrame], labels: dict[str, str]):
    """§13.2 appendix: raw 3-D PCA of single-task models, one row per mixture and one column per seed position
    (`views`: (mixture, seed) -> table, in the config's seed order: a replaced seed takes its column)."""
    mixtures = list(dict.fromkeys(m for m, _ in views))
    seeds = {m: [s for mm, s in views if mm == m] for m in mixtures}
    fig, axes = view_grid("pca_gallery", len(mixtures), max(map(len, seeds.values())))
    rows = []
    for r, mixture in enumerate(mixtures):
        for c, ax in enumerate(axes[r]):
            if c >= len(seeds[mixture]):
                ax.set_axis_off()
                continue
            seed = seeds[mixture][c]
            rows.append(scatter_view(ax, view_rows(views[mixture, seed]), "pca", f"{labels[mixture]}, seed {seed}",
                                     size=1.0, label_axes=False).assign(mixture=mixture, seed=seed))
    data = pd.concat(rows, ignore_index=True)
    region_legend(fig, data["region"])
    return fig, data


@styled
def dynamics_views(views: dict[str, pd.DataFrame], labels: dict[str, str]):
    """§13.2 appendix: raw 3-D PCA of each model (`views`: run -> table, one row each) at its dynamics
    checkpoints (s, 3s, 6s, 15s, 23s as extracted) and the final one."""
    steps = {run: sorted({int(s) for s in t["step"].astype(str) if s != "final"}) + ["final"] for run, t in views.items()}
    fig, axes = view_grid("dynamics_views", len(views), max(len(s) for s in steps.values()))
    rows = []
    for r, (run, table) in enumerate(views.items()):
        for c, ax in enumerate(axes[r]):
            if c >= len(steps[run]):
                ax.set_axis_off()
                continue
            step = steps[run][c]
            title = f"{labels[run]}, " * (c == 0) + ("final" if step == "final" else f"step {step:,}")
            rows.append(scatter_view(ax, view_rows(table, step), "pca", title, size=1.0, label_axes=False)
                        .assign(run=run, step=str(step)))
    data = pd.concat(rows, ignore_index=True)
    region_legend(fig, data["region"])
    return fig, data


@styled
def model_views(view: pd.DataFrame, label: str):
    """§13.2 (Fig. 4a, the pt7-atl appendix panels): raw 3-D PCA and the mixed view of one model."""
    fig, axes = view_grid("model_views", 1, 2)
    final = view_rows(view)
    data = pd.concat([scatter_view(axes[0][0], final, "pca", f"{label}: {VIEW_TITLES['pca']}"),
                      scatter_view(axes[0][1], final, "mixed", f"{label}: {VIEW_TITLES['mixed']}")],
                     ignore_index=True)
    region_legend(fig, data["region"])
    return fig, data


# ---- §13.6 training curves --------------------------------------------------------------------------------

def plain_log_labels(axis) -> None:
    """Log-axis tick labels as plain numbers ("2000", "0.5"): matplotlib's default "2×10³" on the minor
    ticks of a short range is hard to read."""
    plain = ticker.FuncFormatter(lambda value, _: f"{value:,.10g}" if 1e-3 <= abs(value) < 1e6 else f"{value:.3g}")
    low, high = axis.get_view_interval()
    axis.set_major_formatter(plain)
    # Minor labels only on a short range, where they are the only labels; over decades they would crowd.
    axis.set_minor_formatter(plain if 0 < low and high / low < 100 else ticker.NullFormatter())
    axis.set_minor_locator(ticker.LogLocator(subs=(2, 5)))


@styled
def training_curves(training_log: pd.DataFrame, validation_log: pd.DataFrame, probes: pd.DataFrame, task: str,
                    title: str, layer: int = 5):
    """Three rows over log-scaled steps (step 0 cannot be drawn on a log axis and is left out):
    train and validation loss; the validation metric of `task` (error tasks on a log scale) with the probes' mean
    coordinate R² (OLS solid, ridge dashed) on a right axis; the OLS probe's mean Euclidean error. Probe values are
    the layer-`layer` rows of `probes/<run>.csv` at each checkpoint."""
    val = validation_log[(validation_log["task"] == task) & (validation_log["step"] > 0)]
    train = training_log[training_log["step"] > 0]
    probe = probes[(probes["layer"] == layer) & (probes["step"].astype(str) != "final")]
    probe = probe.assign(step=probe["step"].astype(int)).query("step > 0").sort_values("step")
    if val.empty or probe.empty:
        raise ValueError(f"need validation rows of {task!r} and checkpoint probe rows at layer {layer}")
    metric = val["metric"].iloc[0]
    fig = Figure(figsize=FIGSIZE["training_curves"], dpi=DPI, layout="constrained")
    loss_ax, metric_ax, error_ax = fig.subplots(3, 1, sharex=True)
    loss_ax.plot(train["step"], train["loss"], color="#7f7f7f", linewidth=0.8, label="train loss", gid="train-loss")
    loss_ax.plot(val["step"], val["loss"], color="black", linewidth=1.2, label="validation loss", gid="val-loss")
    loss_ax.set_ylabel("loss (nats/token)")
    loss_ax.legend(loc="upper right")
    metric_ax.plot(val["step"], val["value"], color=TASK_COLORS[task], linewidth=1.2, gid="metric")
    metric_ax.set_ylabel(metric.replace("_", " "), color=TASK_COLORS[task])
    if metric != "accuracy":
        metric_ax.set_yscale("log")
    r2_ax = metric_ax.twinx()
    r2_ax.spines["right"].set_visible(True)
    r2_ax.plot(probe["step"], probe["r2_mean"], color="#2ca02c", marker="o", ms=3, linewidth=1, gid="probe-r2",
               label="OLS")
    # The ridge probe beside the paper's OLS: where OLS starts far below 0, the gap is the probe overfitting.
    r2_ax.plot(probe["step"], probe["ridge_r2_mean"], color="#2ca02c", linestyle="--", marker="s", ms=2.5,
               linewidth=1, gid="probe-ridge-r2", label="ridge")
    r2_ax.legend(loc="lower right", title="probe", fontsize="small")
    r2_ax.set_ylabel(f"probe R² (layer {layer})", color="#2ca02c")
    lowest = float(probe[["r2_mean", "ridge_r2_mean"]].min().min())
    r2_ax.set_ylim(max(-0.5, min(0.0, lowest)), 1.0)  # a wild early R² would flatten the rest
    error_ax.plot(probe["step"], probe["mean_error"], color="#9467bd", marker="o", ms=3, linewidth=1, gid="probe-error")
    error_ax.set_yscale("log")
    error_ax.set_ylabel("probe error (scaled units)")
    error_ax.set_xscale("log")
    for axis in (error_ax.xaxis, error_ax.yaxis, metric_ax.yaxis):
        if axis.get_scale() == "log":
            plain_log_labels(axis)
    error_ax.set_xlabel("gradient steps")
    loss_ax.set_title(title)
    data = pd.concat([
        train.assign(series="train_loss", value=train["loss"])[["series", "step", "value"]],
        val.assign(series="validation_loss", value=val["loss"])[["series", "step", "value"]],
        val.assign(series=f"validation_{metric}")[["series", "step", "value"]],
        probe.assign(series="probe_r2_mean", value=probe["r2_mean"])[["series", "step", "value"]],
        probe.assign(series="probe_ridge_r2_mean", value=probe["ridge_r2_mean"])[["series", "step", "value"]],
        probe.assign(series="probe_mean_error", value=probe["mean_error"])[["series", "step", "value"]],
    ], ignore_index=True)
    return fig, data.assign(task=task)


@styled
def checkpoint_metrics(checkpoints: pd.DataFrame, title: str):
    """Fig. 4b: standard-test metric against step for every task (`evaluation/<run>/checkpoints.csv`): mean
    absolute error on a log left axis (solid), accuracy on the right axis (dashed); step 0 left out (log x)."""
    table = checkpoints[(checkpoints["test_set"] == "standard") & (checkpoints["step"] > 0)].sort_values("step")
    fig, (ax,) = new_figure("checkpoint_metrics")
    acc_ax = ax.twinx()
    acc_ax.spines["right"].set_visible(True)
    for task in (t for t in TASK_NAMES if t in set(table["task"])):
        part = table[table["task"] == task]
        accuracy = part["metric"].iloc[0] == "accuracy"
        (acc_ax if accuracy else ax).plot(part["step"], part["value"], color=TASK_COLORS[task],
                                          linestyle="--" if accuracy else "-", marker="o", ms=2.5, linewidth=1.2,
                                          label=TASK_ABBR[task], gid=f"task:{task}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_labels(ax.xaxis)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("mean absolute error (solid)")
    acc_ax.set_ylabel("accuracy (dashed)")
    acc_ax.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.12, 0.5))
    ax.set_title(title)
    return fig, table[["step", "task", "metric", "value"]].reset_index(drop=True)


# ---- §13.12 Atlantis predictions ----------------------------------------------------------------------------

@styled
def atlantis_predictions(errors: pd.DataFrame, views: dict[str, pd.DataFrame], labels: dict[str, str]):
    """Fig. 6b: per model (`views`: run -> views table, one column each), its 3-D mixed view on top and, below,
    its real-city probe's predicted Atlantis positions (orange-red) against the true ones (black ×), from
    the Atlantis rows of `probes/atlantis_errors.csv.gz`."""
    fig = Figure(figsize=FIGSIZE["atlantis_predictions"], dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, len(views))
    rows = []
    for c, (run, table) in enumerate(views.items()):
        rows.append(scatter_view(fig.add_subplot(grid[0, c], projection="3d"), view_rows(table), "mixed",
                                 f"{labels[run]}: {VIEW_TITLES['mixed']}").assign(run=run, panel="mixed_view"))
        part = errors[(errors["run"] == run) & errors["group"].str.startswith("atlantis")]
        if part.empty:
            raise ValueError(f"no Atlantis rows for {run} in the reconstruction table")
        ax = fig.add_subplot(grid[1, c])
        ax.scatter(part["pred_x"], part["pred_y"], s=8, color="#e6550d", linewidths=0, label="predicted", gid="predicted")
        ax.scatter(part["x"], part["y"], s=12, marker="x", color="black", linewidths=0.8, label="true", gid="true")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x (0.1° longitude)")
        ax.set_ylabel("y (0.1° latitude)")
        ax.set_title(f"{labels[run]}: Atlantis, mean error {part['error'].mean():.0f}")
        ax.legend(loc="best")
        rows.append(part[["city_id", "x", "y", "pred_x", "pred_y", "error"]].assign(run=run, panel="predictions"))
    data = pd.concat(rows, ignore_index=True)
    region_legend(fig, data["region"].dropna())
    return fig, data


# ---- METHOD Appendix C.1: where fine-tuning puts a new city (results/experiments/subspace/) -----------------

FIGSIZE.update({"subspace_fraction": (8.0, 4.4), "subspace_vs_error": (9.0, 5.0)})
SUBSPACE_GROUPS = {"without_distance": ("mix without D", "#1f77b4"), "with_distance": ("mix with D", "#d62728")}


def subspace_groups(fractions: pd.DataFrame) -> dict[str, np.ndarray]:
    """Group name -> row mask of `experiments/subspace/fractions.csv`, in `SUBSPACE_GROUPS` order."""
    with_distance = fractions["includes_distance"].astype(bool).to_numpy()
    return {"without_distance": ~with_distance, "with_distance": with_distance}


def subspace_panels(kind: str, fractions: pd.DataFrame):
    """(fig, {subspace: axes}, {subspace: title}): one panel per world subspace (probe, pca), each with its dotted
    chance level rank/d."""
    fig, axes = new_figure(kind, ncols=2)
    titles = {"probe": "span of the x/y probe weights",
              "pca": f"top-{int(fractions['pca_rank'].max())} PCs of the real cities"}
    for ax, subspace in zip(axes, titles):
        ax.axhline(float(fractions[f"{subspace}_chance"].mean()), color="black", linestyle=":", linewidth=1,
                   label="chance (rank / d)", gid=f"chance:{subspace}")
    axes[0].set_ylabel("Atlantis update inside: Σ‖PΔ‖² / Σ‖Δ‖²")
    fig.suptitle(f"Where fine-tuning puts the Atlantis cities (layer {int(fractions['layer'].iloc[0])})")
    return fig, dict(zip(titles, axes)), titles


def subspace_legend(fig: Figure, ax) -> None:
    """One legend below both panels: inside a panel it would cover models."""
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3)


@styled
def subspace_fraction(fractions: pd.DataFrame, summary: pd.DataFrame):
    """`experiments/subspace/fractions.csv`: per fine-tuned model its pooled fraction, one strip per group (mix with
    or without distance), the group means and the Mann–Whitney p of `summary.csv` (measure pooled)."""
    fig, axes, titles = subspace_panels("subspace_fraction", fractions)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(fractions))  # fixed: the PNG must not change
    rows = []
    for subspace, ax in axes.items():
        test = summary[(summary["subspace"] == subspace) & (summary["measure"] == "pooled")].iloc[0]
        ticks = []
        for position, (group, keep) in enumerate(subspace_groups(fractions).items()):
            label, colour = SUBSPACE_GROUPS[group]
            values = fractions.loc[keep, f"{subspace}_pooled"].to_numpy(float)
            ax.scatter(position + jitter[keep], values, s=14, color=colour, alpha=0.8, label=label,
                       gid=f"models:{subspace}:{group}")
            ax.hlines(test[f"mean_{group}"], position - 0.25, position + 0.25, color=colour, linewidth=2,
                      gid=f"mean:{subspace}:{group}")
            ticks.append(f"{label}\n(n = {keep.sum()})")
            rows.append(pd.DataFrame({"subspace": subspace, "group": group, "run": fractions.loc[keep, "run"],
                                      "fraction": values, "group_mean": test[f"mean_{group}"],
                                      "chance": fractions.loc[keep, f"{subspace}_chance"],
                                      "mann_whitney_p": test["mann_whitney_p"]}))
        ax.set_xticks([0, 1], ticks)
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{titles[subspace]}\nMann–Whitney p = {test['mann_whitney_p']:.2g}")
    subspace_legend(fig, axes["probe"])
    return fig, pd.concat(rows, ignore_index=True)


@styled
def subspace_vs_error(fractions: pd.DataFrame, correlation: pd.DataFrame):
    """Per fine-tuned model its pooled fraction against its mean Atlantis reconstruction error, coloured by group,
    with the Pearson and Spearman correlations of `experiments/subspace/correlation.csv` (measure pooled)."""
    fig, axes, titles = subspace_panels("subspace_vs_error", fractions)
    rows = []
    for subspace, ax in axes.items():
        fit = correlation[(correlation["subspace"] == subspace) & (correlation["measure"] == "pooled")].iloc[0]
        for group, keep in subspace_groups(fractions).items():
            label, colour = SUBSPACE_GROUPS[group]
            ax.scatter(fractions.loc[keep, "atlantis_error"], fractions.loc[keep, f"{subspace}_pooled"], s=14,
                       color=colour, alpha=0.8, label=label, gid=f"models:{subspace}:{group}")
        ax.set_xlabel("mean Atlantis reconstruction error (scaled units)")
        ax.set_title(f"{titles[subspace]}\nPearson r = {fit['pearson_r']:.2f} (p = {fit['pearson_p']:.2g})\n"
                     f"Spearman ρ = {fit['spearman_r']:.2f} (p = {fit['spearman_p']:.2g}), n = {int(fit['n'])}")
        rows.append(fractions[["run", "includes_distance", "atlantis_error"]].assign(
            subspace=subspace, fraction=fractions[f"{subspace}_pooled"], chance=fractions[f"{subspace}_chance"],
            **{c: fit[c] for c in ("pearson_r", "pearson_p", "spearman_r", "spearman_p")}))
    subspace_legend(fig, axes["probe"])
    return fig, pd.concat(rows, ignore_index=True)


# ---- METHOD Appendix C.2 / C.4: the single-task family across conditions (noise levels, model sizes) -------------
FIGSIZE["condition_summary"] = (10.0, 3.8)


def condition_label(row: pd.Series) -> str:
    """x tick label of a condition: its label noise p, or its size (width × depth, parameters)."""
    if "level" in row:
        return "clean" if row["level"] == 0 else f"{row['level']:g}"
    return f"{row['variant']}\n{row['hidden_size']}×{row['num_hidden_layers']}, {row['parameters'] / 1e6:.2g}M"


@styled
def condition_summary(summary: pd.DataFrame, probes: pd.DataFrame, xlabel: str):
    """Left: the single-task CKA summary per condition (distance against the other tasks, and the other tasks among
    themselves; both estimators). Right: each run's final probe R² at its analysis layer, by task, and the mean.
    Conditions in table order (`noise/summary.csv` or `scale/summary.csv` and their probe_r2.csv)."""
    groups = list(dict.fromkeys(summary["group"]))
    first = {g: summary[summary["group"] == g].iloc[0] for g in groups}
    # Noise levels on their own scale (a function of p); sizes in order, evenly spaced.
    x = {g: float(first[g]["level"]) if "level" in summary else i for i, g in enumerate(groups)}
    labels = [condition_label(first[g]) for g in groups]
    fig, (left, right) = new_figure("condition_summary", ncols=2)
    rows = []
    for estimator, style in (("biased", "-"), ("debiased", ":")):
        part = summary[summary["estimator"] == estimator]
        for column, colour, name in (("anchor_vs_others", TASK_COLORS["distance"], "distance vs others"),
                                     ("others_vs_others", "#7f7f7f", "others vs others")):
            xs, ys = part["group"].map(x).to_numpy(), part[column].to_numpy(float)
            left.plot(xs, ys, style, marker="o", ms=4, color=colour, label=f"{name} ({estimator})")
            rows += [{"panel": "cka", "series": f"{column}/{estimator}", "group": g, "x": xi, "y": yi}
                     for g, xi, yi in zip(part["group"], xs, ys)]
    left.set_ylabel("mean off-diagonal CKA")
    left.set_ylim(0, 1.05)
    left.legend(loc="best")
    for task, part in probes.groupby("task", sort=False):
        xs = part["group"].map(x).to_numpy()
        right.plot(xs, part["r2_mean"], "-", marker="o", ms=3, color=TASK_COLORS[task], label=TASK_ABBR[task])
        rows += [{"panel": "r2", "series": task, "group": g, "x": xi, "y": yi}
                 for g, xi, yi in zip(part["group"], xs, part["r2_mean"])]
    mean = probes.groupby("group", sort=False)["r2_mean"].mean()
    right.plot(mean.index.map(x), mean.to_numpy(), "-", color="black", lw=2, label="mean")
    rows += [{"panel": "r2", "series": "mean", "group": g, "x": x[g], "y": v} for g, v in mean.items()]
    right.set_ylabel("probe R² (final, mean of x and y)")
    right.legend(loc="best", ncols=2)
    for ax in (left, right):
        ax.set_xticks([x[g] for g in groups], labels)
        ax.set_xlabel(xlabel)
    return fig, pd.DataFrame(rows)


# ---- METHOD Appendix C.3: gradient similarity of the tasks (results/experiments/gradients/) -----------------

FIGSIZE.update({"gradient_similarity": (14.0, 7.0), "gradient_scatter": (10.0, 8.0)})


@styled
def gradient_similarity(similarity: pd.DataFrame):
    """`experiments/gradients/similarity.csv`: the task × task mean gradient cosine, one panel per checkpoint step
    (columns) and parameter set (rows), on RdBu over [-1, 1] with one shared colour bar."""
    steps, sets = sorted(similarity["step"].unique()), list(dict.fromkeys(similarity["parameters"]))
    tasks = [t for t in TASK_NAMES if t in set(similarity["task_a"])]
    labels = [TASK_ABBR[t] for t in tasks]
    fig = Figure(figsize=FIGSIZE["gradient_similarity"], dpi=DPI, layout="constrained")
    axes = fig.subplots(len(sets), len(steps), squeeze=False)
    norm = colors.Normalize(-1.0, 1.0)
    for r, parameters in enumerate(sets):
        for c, step in enumerate(steps):
            part = similarity[(similarity["parameters"] == parameters) & (similarity["step"] == step)]
            values = part.pivot(index="task_a", columns="task_b", values="cosine").reindex(index=tasks, columns=tasks)
            image, cmap = heatmap(axes[r, c], values.to_numpy(float), labels, labels, "RdBu_r", norm)
            annotate_cells(axes[r, c], values.to_numpy(float), cmap, norm)
            axes[r, c].set_title(f"{parameters}, step {step}")
    fig.colorbar(image, ax=axes, label="mean cosine of the tasks' loss gradients", shrink=0.8)
    data = similarity[["step", "parameters", "task_a", "task_b", "cosine"]]
    return fig, data.reset_index(drop=True)


@styled
def gradient_scatter(points: pd.DataFrame, correlation: pd.DataFrame, labels: dict[str, str]):
    """`experiments/gradients/points.csv`: each pair's gradient cosine against a target (`labels`: target -> axis
    label, one column of panels each), one row per parameter set, one series per checkpoint step with its Pearson r
    and Spearman ρ over every task (`correlation.csv`, tasks "all") in the legend."""
    sets, steps = list(dict.fromkeys(points["parameters"])), sorted(points["step"].unique())
    palette = dict(zip(steps, mpl.colormaps["viridis"](np.linspace(0.0, 0.85, len(steps)))))
    fig = Figure(figsize=FIGSIZE["gradient_scatter"], dpi=DPI, layout="constrained")
    axes = fig.subplots(len(sets), len(labels), squeeze=False)
    drawn = []
    for r, parameters in enumerate(sets):
        for c, (target, label) in enumerate(labels.items()):
            for step in steps:
                part = points[(points["parameters"] == parameters) & (points["target"] == target)
                              & (points["step"] == step)]
                fit = correlation[(correlation["parameters"] == parameters) & (correlation["target"] == target)
                                  & (correlation["step"] == step) & (correlation["tasks"] == "all")].iloc[0]
                axes[r, c].scatter(part["cosine"], part["value"], s=16, color=palette[step], gid=f"step:{step}",
                                   label=f"step {step}: r = {fit['pearson_r']:.2f}, ρ = {fit['spearman_r']:.2f}")
                drawn.append(part.assign(pearson_r=fit["pearson_r"], spearman_r=fit["spearman_r"]))
            axes[r, c].set_xlabel(f"gradient cosine ({parameters})")
            axes[r, c].set_ylabel(label)
            axes[r, c].legend(loc="best")
    return fig, pd.concat(drawn, ignore_index=True)
