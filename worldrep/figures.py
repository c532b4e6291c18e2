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
from matplotlib import colors
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Polygon

from .artifacts import atomic_write_bytes
from .generalization import pair_label
from .tasks import TASKS, TASK_NAMES

DPI = 150
TASK_ABBR = {name: task.abbr for name, task in TASKS.items()}

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


@styled
def cka_matrix(matrix: pd.DataFrame, layer: int, estimator: str, labels: dict[str, str] | None = None,
               task_sets: dict[str, list[str]] | None = None, with_sem: bool = False):
    """Family CKA matrix from `cka/<family>/matrix.csv` (layer, estimator, row, column, mean, sem, n).
    `labels` maps variant -> axis label and fixes the order (default: the variant names in index order);
    `task_sets` (variant -> tasks) marks cells whose two task sets partially overlap."""
    part = matrix[(matrix["layer"] == layer) & (matrix["estimator"] == estimator)]
    if part.empty:
        raise ValueError(f"no CKA cells for layer {layer}, estimator {estimator!r}")
    present = set(part["row"]) | set(part["column"])
    if labels is None:
        labels = {v: v for v in sorted(present, key=lambda v: int(v.rsplit("-", 1)[1]))}
    variants = [v for v in labels if v in present]
    mean = part.pivot(index="row", columns="column", values="mean").reindex(index=variants, columns=variants)
    sem = part.pivot(index="row", columns="column", values="sem").reindex(index=variants, columns=variants)
    fig, (ax,) = new_figure("cka_matrix")
    names = [labels[v] for v in variants]
    norm = piecewise_cka_norm()
    image, cmap = heatmap(ax, mean.to_numpy(float), names, names, "magma", norm)
    texts = None
    if with_sem:
        texts = np.array([[f"{m:.2f}\n±{s:.2f}" for m, s in zip(mr, sr)] for mr, sr in zip(mean.to_numpy(), sem.to_numpy())])
    annotate_cells(ax, mean.to_numpy(float), cmap, norm, texts)
    overlap = np.zeros(mean.shape, dtype=bool)
    if task_sets is not None:
        for (i, a), (j, b) in ((ia, jb) for ia in enumerate(variants) for jb in enumerate(variants)):
            overlap[i, j] = partial_overlap(task_sets[a], task_sets[b])
            if overlap[i, j]:
                ax.add_patch(overlap_triangle(i, j))
    fig.colorbar(image, ax=ax, label=f"CKA ({estimator})", ticks=[0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0])
    suffix = "" if estimator == "biased" else f" ({estimator})"
    ax.set_title(f"Layer-{layer} residual-stream CKA{suffix}")
    data = pd.DataFrame({
        "row": np.repeat(variants, len(variants)), "column": np.tile(variants, len(variants)),
        "row_label": np.repeat(names, len(names)), "column_label": np.tile(names, len(names)),
        "mean": mean.to_numpy(float).ravel(), "sem": sem.to_numpy(float).ravel(), "partial_overlap": overlap.ravel(),
    }).assign(layer=layer, estimator=estimator)
    return fig, data


# ---- §13.5 CKA vs number of tasks -----------------------------------------------------------------------

TASK_COUNTS = (1, 2, 3)  # §12: families pt1, pt2, pt3


@styled
def cka_vs_task_count(values: pd.DataFrame, summary: pd.DataFrame, estimator: str = "biased", jitter_seed: int = 0):
    """One panel per layer: pooled mean ± SEM per task count k (`cka/task_count_summary.csv`, seed "pooled")
    over the individual pair values (`cka/task_count.csv`), jittered horizontally with a seeded Generator."""
    points = values[values["estimator"] == estimator].sort_values(
        ["layer", "k", "variant_a", "variant_b", "seed_a", "seed_b"], kind="stable")
    means = select_seed(summary[summary["estimator"] == estimator], "pooled").sort_values(["layer", "k"])
    layers = sorted(means["layer"].unique())
    rng = np.random.default_rng(jitter_seed)
    points = points.assign(x=points["k"] + rng.uniform(-0.12, 0.12, len(points)))
    fig, axes = new_figure("cka_vs_task_count", ncols=len(layers), sharey=True)
    for ax, layer in zip(axes, layers):
        p, m = points[points["layer"] == layer], means[means["layer"] == layer]
        ax.scatter(p["x"], p["cka"], s=8, color="#7f7f7f", alpha=0.6, linewidths=0, gid="pair")
        ax.errorbar(m["k"], m["mean"], yerr=m["sem"], color="black", marker="o", ms=4, capsize=3, gid="mean")
        ax.set_xticks(TASK_COUNTS)
        ax.set_xlim(TASK_COUNTS[0] - 0.5, TASK_COUNTS[-1] + 0.5)
        ax.set_title(f"Layer {layer}")
        ax.set_xlabel("number of training tasks")
    axes[0].set_ylabel(f"CKA ({estimator})")
    data = pd.concat([
        points.assign(series="pair", y=points["cka"], sem=np.nan)[["layer", "k", "series", "x", "y", "sem"]],
        means.assign(series="mean", x=means["k"], y=means["mean"])[["layer", "k", "series", "x", "y", "sem"]],
    ], ignore_index=True).assign(estimator=estimator)
    return fig, data


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
            ax.text(j - 0.42, i - 0.42, "T", ha="left", va="top", fontsize=7, fontweight="bold", gid="trained")
    fig.colorbar(image, ax=ax, label="normalized improvement")
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("fine-tuned task")
    ax.set_title("FTWB1 generalization" + (" (mean over seeds)" if str(seed) == "mean" else f" (seed {seed})"))
    data = ni.stack(future_stack=True).rename("ni").reset_index()
    return fig, data.assign(trained=data["finetuned_task"] == data["evaluated_task"], seed=str(seed))


# ---- §13.8 CKA vs generalization ------------------------------------------------------------------------

@styled
def cka_vs_generalization(points: pd.DataFrame, fit: pd.DataFrame, estimator: str = "biased"):
    """`cka/cka_vs_generalization.csv` points coloured by fine-tuned task X, with the least-squares line and
    r², p from `cka/cka_vs_generalization_fit.csv`; line and annotation are left out when the fit is NaN."""
    p = points[points["estimator"] == estimator]
    f = fit[fit["estimator"] == estimator]
    if len(f) != 1:
        raise ValueError(f"expected one fit row for estimator {estimator!r}, found {len(f)}")
    f = f.iloc[0]
    fig, (ax,) = new_figure("cka_vs_generalization")
    for task in (t for t in TASK_NAMES if t in set(p["finetuned_task"])):
        q = p[p["finetuned_task"] == task]
        ax.scatter(q["cka"], q["ni"], s=18, color=TASK_COLORS[task], label=TASK_ABBR[task], gid=f"task:{task}")
    if np.isfinite([f["slope"], f["intercept"], f["r2"], f["p"]]).all() and len(p):
        x = np.array([p["cka"].min(), p["cka"].max()])
        ax.plot(x, f["slope"] * x + f["intercept"], color="black", linewidth=1, gid="fit")
        ax.text(0.03, 0.97, f"r² = {f['r2']:.2f}, p = {f['p']:.2g}", transform=ax.transAxes, ha="left", va="top",
                gid="fit-annotation")
    ax.set_xlabel(f"layer-{int(f['layer'])} CKA(X, Y) ({estimator})")
    ax.set_ylabel("NI on Y after fine-tuning on X")
    ax.legend(title="X", loc="center left", bbox_to_anchor=(1.01, 0.5))
    data = p[["finetuned_task", "evaluated_task", "cka", "ni"]].reset_index(drop=True)
    return fig, data.assign(estimator=estimator, **{c: f[c] for c in ("layer", "r", "r2", "p", "slope", "intercept")})


# ---- §13.9 FTWB2 deviation matrix -----------------------------------------------------------------------

def has_distance(label: str) -> bool:
    return TASK_ABBR["distance"] in label.split(",")


@styled
def deviation_matrix(table: pd.DataFrame, seed="mean"):
    """Mean (or one seed's) deviation from `generalization/deviation_matrix.csv` (seed, pair, evaluated_task,
    deviation); rows in file order (ftwb2 index), RdBu centred at 0 with symmetric limits (red = interference);
    row labels of pairs containing distance in red."""
    part = select_seed(table, seed)
    rows = list(dict.fromkeys(part["pair"]))
    columns = [t for t in TASK_NAMES if t in set(part["evaluated_task"])]
    dev = part.pivot(index="pair", columns="evaluated_task", values="deviation").reindex(index=rows, columns=columns)
    limit = np.nanmax(np.abs(dev.to_numpy(float)), initial=0.0)
    limit = limit if limit > 0 else 1.0
    norm = colors.Normalize(-limit, limit)
    fig, (ax,) = new_figure("deviation_matrix")
    image, cmap = heatmap(ax, dev.to_numpy(float), rows, [TASK_ABBR[t] for t in columns], "RdBu", norm)
    annotate_cells(ax, dev.to_numpy(float), cmap, norm)
    for tick, label in zip(ax.get_yticklabels(), rows):
        tick.set_color("#d62728" if has_distance(label) else "black")
    fig.colorbar(image, ax=ax, label="deviation from best-teacher prediction")
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("fine-tuned pair")
    ax.set_title("FTWB2 deviation" + (" (mean over seeds)" if str(seed) == "mean" else f" (seed {seed})"))
    data = dev.stack(future_stack=True).rename("deviation").reset_index()
    return fig, data.assign(has_distance=data["pair"].map(has_distance), seed=str(seed))


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
def atlantis_histogram(errors: pd.DataFrame, summary: pd.DataFrame):
    """The three pooled groups of `probes/atlantis_errors.csv.gz` (run, group, city_id, error) on 40
    log-spaced bins over their pooled range; dashed lines at the group means and a solid green line at the
    pt7-atl Atlantis mean (`probes/atlantis_summary.csv`), when there is one."""
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
    ax.set_xlabel("reconstruction error (scaled units)")
    ax.set_ylabel("cities")
    ax.legend(loc="upper left")
    data = pd.concat(rows, ignore_index=True)
    return fig, data.assign(control_atlantis_mean=float(control.iloc[0]) if len(control) else np.nan)
