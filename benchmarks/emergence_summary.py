"""The items-per-city rule from calibration curves: when does each run's probe R² cross 0.5 and 0.9? (METHOD §7.4)

Reads the CSVs (or logs) of `benchmarks/emergence.py`, one run each: task, world size, R² per layer at every
probe checkpoint. Optionally also a workflow run's `probes/{run}.csv`, given as
`--workflow TASK:MIN_POPULATION:N_REAL:TASKS:CSV`: its checkpoint rows, with that task's items = step × 128 /
the number of tasks in its mixture. For each curve it takes, at each checkpoint, the best layer's mean
coordinate R² and its x and y, and reports the first items per real city at which mean R² >= each threshold.
It writes the table as CSV and a figure of mean R² (and x, y) against items per city.

    python benchmarks/emergence_summary.py evidence/2026-12-01-cpu-calibration/*.csv \
        --workflow distance:1000000:564:1:results/probes/pt1-1_s42.csv --out evidence/2026-12-01-cpu-calibration/summary
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

THRESHOLDS = (0.5, 0.9)
BATCH = 128


def load_calibration(path: Path) -> pd.DataFrame:
    """A CSV of benchmarks/emergence.py, or its printed log (a run stopped before it wrote the CSV)."""
    if path.suffix == ".log":
        return load_log(path)
    return pd.read_csv(path).assign(source=path.stem)


def load_log(path: Path) -> pd.DataFrame:
    """The probe lines of an emergence.py log: `step N  X items/city  T s  R² x/y: L1 a/b  L2 c/d ...`."""
    import re

    text = path.read_text(errors="replace").replace("\r", "\n")
    head = re.search(r"^(\w+): (\d+) real cities \(population >= ([\d,]+)\)", text, flags=re.MULTILINE)
    task, n_real, min_population = head.group(1), int(head.group(2)), int(head.group(3).replace(",", ""))
    rows = []
    for step, layers in re.findall(r"step\s+(\d+)\s+\d+ items/city\s+\d+ s\s+R² x/y: (.*)", text):
        for layer, x, y in re.findall(r"L(\d+) ([+-][\d.]+)/([+-][\d.]+)", layers):
            rows.append({"task": task, "min_population": min_population, "n_real": n_real, "step": int(step),
                         "items": int(step) * BATCH, "items_per_city": int(step) * BATCH / n_real,
                         "layer": int(layer), "r2_x": float(x), "r2_y": float(y), "r2_mean": (float(x) + float(y)) / 2})
    return pd.DataFrame(rows).assign(source=path.stem)


def load_workflow(spec: str) -> pd.DataFrame:
    """TASK:MIN_POPULATION:N_REAL:TASKS:PATH of a probes/{run}.csv, checkpoint rows only. TASKS is the number of
    tasks of the run's mixture (equal shares): items per city count that task's items only (the rule's count)."""
    task, min_population, n_real, tasks, path = spec.split(":", 4)
    frame = pd.read_csv(path)
    frame = frame[frame["step"].astype(str) != "final"].astype({"step": int})
    items = frame["step"] * BATCH / int(tasks)
    return frame.assign(task=task, min_population=int(min_population), n_real=int(n_real), items=items,
                        items_per_city=items / int(n_real), source=Path(path).stem)


def best_layer(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (source, step): the row of the layer with the highest mean R²."""
    index = curves.groupby(["source", "step"])["r2_mean"].idxmax()
    return curves.loc[index].sort_values(["source", "step"]).reset_index(drop=True)


def crossings(curves: pd.DataFrame) -> pd.DataFrame:
    """First items per city at which each source's best-layer mean R² reaches each threshold (NaN: never)."""
    rows = []
    for source, part in best_layer(curves).groupby("source", sort=False):
        row = {"source": source, "task": part["task"].iloc[0], "min_population": part["min_population"].iloc[0],
               "n_real": part["n_real"].iloc[0], "last_items_per_city": part["items_per_city"].max(),
               "final_r2_x": part["r2_x"].iloc[-1], "final_r2_y": part["r2_y"].iloc[-1],
               "final_r2_mean": part["r2_mean"].iloc[-1]}
        for threshold in THRESHOLDS:
            reached = part[part["r2_mean"] >= threshold]
            row[f"items_per_city_r2_{threshold}"] = reached["items_per_city"].iloc[0] if len(reached) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def figure(curves: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_layer(curves)
    tasks = sorted(best["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        for (source, n_real), part in best[best["task"] == task].groupby(["source", "n_real"], sort=False):
            line, = ax.plot(part["items_per_city"], part["r2_mean"], label=f"{source} ({n_real} cities): mean")
            ax.plot(part["items_per_city"], part["r2_x"], ls="--", lw=0.8, color=line.get_color(), label="x")
            ax.plot(part["items_per_city"], part["r2_y"], ls=":", lw=0.8, color=line.get_color(), label="y")
        for threshold in THRESHOLDS:
            ax.axhline(threshold, color="grey", lw=0.5)
        ax.set(title=f"{task}: probe R² (best layer) against items seen", xlabel="items per real city",
               ylim=(-0.8, 1.0))
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("R² on the standard test split (OLS)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="*", type=Path, help="benchmarks/emergence.py outputs (CSV, or its log)")
    parser.add_argument("--workflow", action="append", default=[],
                        help="TASK:MIN_POPULATION:N_REAL:TASKS_IN_MIXTURE:probes CSV of a workflow run")
    parser.add_argument("--out", type=Path, required=True, help="output stem: STEM.csv (table) and STEM.png")
    args = parser.parse_args()
    curves = pd.concat([*map(load_calibration, args.csv), *map(load_workflow, args.workflow)], ignore_index=True)
    table = crossings(curves)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.4g")
    figure(curves, args.out)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for task, part in table.groupby("task"):
        for threshold in THRESHOLDS:
            values = part[f"items_per_city_r2_{threshold}"].dropna()
            spread = f"{values.mean():.0f} (range {values.min():.0f}-{values.max():.0f}, {len(values)} of {len(part)} curves)" \
                if len(values) else f"not reached by any of {len(part)} curves"
            print(f"{task}: mean R² >= {threshold} at {spread} items per real city")
    return 0


if __name__ == "__main__":
    sys.exit(main())
