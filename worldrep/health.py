"""The per-run health report of METHOD §14: each pretraining run's final standard-test metrics beside the
trivial predictor's (majority class or training median) and its final probe R².

Informational, not a gate: a seed that failed to train (single-task inside in the authors' code) shows up
here as a metric no better than the trivial predictor and a probe R² near zero. Pure pandas, so the report
needs no torch.
"""
from __future__ import annotations

import pandas as pd

HIGHER_IS_BETTER = {"accuracy": True, "mean_absolute_error": False}


def beats(metric: str, value: float, baseline: float) -> bool:
    """Whether `value` is strictly better than `baseline` for this metric (higher accuracy, lower error)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(HIGHER_IS_BETTER)}")
    return value > baseline if HIGHER_IS_BETTER[metric] else value < baseline


def health_report(metrics: pd.DataFrame, baselines: pd.DataFrame, probes: pd.DataFrame, layer: int) -> pd.DataFrame:
    """One row per pretraining run and task, on the standard test sets (§14; Atlantis test sets are left out:
    a model that never saw Atlantis is not unhealthy for failing them).

    `metrics` is `evaluation/metrics.csv` (run, mixture, kind, seed, test_set, task, metric, value, failures, ...),
    `baselines` is `evaluation/trivial_baselines.csv` (test_set, task, predictor = the constant answer, value) and `probes` is
    `probes/probe_metrics.csv` (run, step, layer, r2_mean, mean_error, ...); the probe columns are the final
    checkpoint's at `layer`. A test set without a trivial baseline is an error, not a silent gap.
    """
    runs = metrics[(metrics["kind"] == "pretraining") & (metrics["test_set"] == "standard")]
    floor = baselines[["test_set", "task", "predictor", "value"]].rename(
        columns={"value": "trivial_value", "predictor": "trivial_answer"})
    table = runs.merge(floor, on=["test_set", "task"], how="left", validate="many_to_one")
    missing = table[table["trivial_value"].isna()][["test_set", "task"]].drop_duplicates()
    if len(missing):
        raise ValueError(f"no trivial baseline for test sets {missing.to_records(index=False).tolist()}")
    table["beats_trivial"] = [beats(m, v, b) for m, v, b in zip(table["metric"], table["value"], table["trivial_value"])]
    final = probes[(probes["step"].astype(str) == "final") & (probes["layer"] == layer)]
    final = final[["run", "r2_mean", "mean_error"]].rename(
        columns={"r2_mean": f"probe_r2_layer{layer}", "mean_error": f"probe_error_layer{layer}"})
    table = table.merge(final, on="run", how="left", validate="many_to_one")
    columns = ["run", "mixture", "seed", "test_set", "task", "metric", "value", "failures", "trivial_answer",
               "trivial_value", "beats_trivial", f"probe_r2_layer{layer}", f"probe_error_layer{layer}"]
    return table[columns].reset_index(drop=True)
