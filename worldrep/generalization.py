"""Normalized improvement and the generalization matrices (METHOD §9).

Input is the combined evaluation table (`results/evaluation/metrics.csv`, one row per run, test set and task:
run, mixture, kind, seed, test_set, task, metric, value, ...). A fine-tuned model's Atlantis metric v is set
against the same-seed base model's standard (b_std) and Atlantis (b_atl) metrics: NI 0 = no better on Atlantis
than the base model, 1 = as good on Atlantis as the base model is on the real world, clipped to [0, 1.5].

What exists is read from the inputs (seeds from the table, mixes from the config's name -> tasks dict), so
reduced configs work unchanged. Missing inputs are errors that name the run and test set, never empty cells.
`generalization_tables` gives every table of the job at once (scripts/generalization.py, `archive verify --recompute`).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from .tasks import TASK_ABBR, canonical_order

NI_MAX = 1.5
HIGHER_IS_BETTER = {"mean_absolute_error": False, "accuracy": True}  # §3.7: error vs accuracy tasks
REQUIRED_COLUMNS = ("run", "mixture", "kind", "seed", "test_set", "task", "metric", "value")


# ---- the formula -----------------------------------------------------------------------------------------

def normalized_improvement(v: float, b_std: float, b_atl: float, higher_is_better: bool) -> float:
    """NI of one Atlantis metric v against base metrics b_std (standard) and b_atl (Atlantis), §9, clipped to
    [0, 1.5]; NaN if any input is NaN. The plain reference for `normalized_improvements`."""
    if any(math.isnan(x) for x in (v, b_std, b_atl)):
        return math.nan
    if higher_is_better:
        ni = 0.0 if b_std <= b_atl else (v - b_atl) / (b_std - b_atl)
    elif b_std >= b_atl or min(v, b_std, b_atl) <= 0:
        # The log ratio is undefined or points the wrong way: the piecewise rule, checked in the spec's order.
        if v >= b_atl:
            ni = 0.0
        elif v <= b_std:
            ni = 1.0
        else:
            ni = (b_atl - v) / (b_atl - b_std)
    else:
        ni = math.log(b_atl / v) / math.log(b_atl / b_std)
    return min(max(ni, 0.0), NI_MAX)


def normalized_improvements(v, b_std, b_atl, higher_is_better) -> np.ndarray:
    """`normalized_improvement` elementwise over broadcastable arrays (float64 out)."""
    v, b_std, b_atl = (np.asarray(x, dtype=np.float64) for x in (v, b_std, b_atl))
    higher = np.asarray(higher_is_better, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(b_std <= b_atl, 0.0, (v - b_atl) / (b_std - b_atl))
        piecewise = np.where(v >= b_atl, 0.0, np.where(v <= b_std, 1.0, (b_atl - v) / (b_atl - b_std)))
        log_ratio = np.log(b_atl / v) / np.log(b_atl / b_std)
    use_piecewise = (b_std >= b_atl) | (np.minimum(np.minimum(v, b_std), b_atl) <= 0)
    ni = np.clip(np.where(higher, accuracy, np.where(use_piecewise, piecewise, log_ratio)), 0.0, NI_MAX)
    return np.where(np.isnan(v) | np.isnan(b_std) | np.isnan(b_atl), np.nan, ni)


def better(a, b, higher_is_better):
    """The better of two metric values (higher accuracy, lower error), elementwise; NaN if either is NaN."""
    out = np.where(higher_is_better, np.maximum(a, b), np.minimum(a, b))
    return float(out) if out.ndim == 0 else out


# ---- the NI table ----------------------------------------------------------------------------------------

def check_metrics(metrics: pd.DataFrame) -> None:
    """The evaluation table has the columns used here, one row per (run, test set, task), known metrics."""
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}")
    duplicated = metrics[metrics.duplicated(["run", "test_set", "task"], keep=False)]
    if len(duplicated):
        row = duplicated.iloc[0]
        raise ValueError(f"metrics table has {len(duplicated)} rows for run {row.run!r}, "
                         f"test set {row.test_set!r}, task {row.task!r}; expected one")
    unknown = sorted(set(metrics.metric) - set(HIGHER_IS_BETTER))
    if unknown:
        raise ValueError(f"metrics table has unknown metrics {unknown}; known: {sorted(HIGHER_IS_BETTER)}")


def with_baseline(tuned: pd.DataFrame, base: pd.DataFrame, test_set: str, column: str,
                  base_mixture: str) -> pd.DataFrame:
    """`tuned` rows with the same-seed base model's metric on `test_set` of the same task as `column`."""
    reference = base.loc[base.test_set == test_set, ["seed", "task", "metric", "value"]]
    reference = reference.rename(columns={"metric": "base_metric", "value": column})
    merged = tuned.merge(reference, on=["seed", "task"], how="left", indicator=True)
    missing = merged[merged["_merge"] == "left_only"]
    if len(missing):
        row = missing.iloc[0]
        raise ValueError(f"base run {base_mixture}_s{row.seed} has no metric on the {test_set} test set of "
                         f"task {row.task!r}, needed for the NI of {row.run}")
    clash = merged[merged.metric != merged.base_metric]
    if len(clash):
        row = clash.iloc[0]
        raise ValueError(f"task {row.task!r}: {row.run} reports {row.metric!r} but base run "
                         f"{base_mixture}_s{row.seed} reports {row.base_metric!r}")
    return merged.drop(columns=["_merge", "base_metric"])


def ni_table(metrics: pd.DataFrame, base_mixture: str = "pt7") -> pd.DataFrame:
    """One row per (fine-tuned run, evaluated task): mixture, seed, task, metric, v (Atlantis test set),
    b_std and b_atl (same-seed `base_mixture` model on the standard / Atlantis test sets) and clipped NI.
    Fine-tuned runs are those of kind `finetuning`; rows keep the table's order."""
    check_metrics(metrics)
    base = metrics[metrics.mixture == base_mixture]
    tuned = metrics.loc[(metrics.kind == "finetuning") & (metrics.test_set == "atlantis"),
                        ["run", "mixture", "seed", "task", "metric", "value"]].rename(columns={"value": "v"})
    if len(tuned) and base.empty:
        raise ValueError(f"metrics table has no rows of the base mixture {base_mixture!r}")
    table = with_baseline(tuned, base, "standard", "b_std", base_mixture)
    table = with_baseline(table, base, "atlantis", "b_atl", base_mixture)
    table["ni"] = normalized_improvements(table.v, table.b_std, table.b_atl,
                                          table.metric.map(HIGHER_IS_BETTER).astype(bool))
    return table[["mixture", "seed", "task", "metric", "v", "b_std", "b_atl", "ni"]].reset_index(drop=True)


# ---- matrices --------------------------------------------------------------------------------------------

def mixes_of_size(mixes: dict[str, list[str]], size: int) -> dict[str, list[str]]:
    """The entries of a fine-tuning mixes dict (name -> tasks) that train `size` distinct tasks; a mix of
    another size than 1 or 2 is an error, since §9 has no matrix for it."""
    for name, tasks in mixes.items():
        if len(set(tasks)) != len(tasks) or len(tasks) not in (1, 2):
            raise ValueError(f"fine-tuning mix {name!r} trains {list(tasks)}; §9 expects one or two distinct tasks")
    return {name: list(tasks) for name, tasks in mixes.items() if len(tasks) == size}


def pair_label(tasks) -> str:
    """Display label of a task pair in canonical order (§0, §4.2): ["crossing", "distance"] -> "D,Cr"."""
    return ",".join(TASK_ABBR[t] for t in canonical_order(tasks))


def mix_index(name: str) -> int:
    """i of a mixture name `ftwb2-i`: FTWB2 rows follow it (§4.2)."""
    match = re.search(r"-(\d+)$", name)
    if match is None:
        raise ValueError(f"mixture name {name!r} does not end in '-<index>'")
    return int(match.group(1))


def ftwb1_rows(mixes: dict[str, list[str]]) -> dict[str, str]:
    """Single-task mix name -> row label (its task), in canonical task order."""
    single = mixes_of_size(mixes, 1)
    if not single:
        raise ValueError("no single-task (ftwb1) mixes given")
    teachers = teacher_mixes(single)
    return {teachers[t]: t for t in canonical_order(teachers)}


def ftwb2_rows(mixes: dict[str, list[str]]) -> dict[str, str]:
    """Two-task mix name -> row label ("D,Cr"), in mixture index order."""
    pairs = mixes_of_size(mixes, 2)
    if not pairs:
        raise ValueError("no two-task (ftwb2) mixes given")
    rows = {name: pair_label(pairs[name]) for name in sorted(pairs, key=mix_index)}
    if len(set(rows.values())) != len(rows):
        raise ValueError(f"two fine-tuning mixes train the same pair: {rows}")
    return rows


def matrices(table: pd.DataFrame, value: str, rows: dict[str, str], row_name: str):
    """(seed -> matrix, seed-mean matrix) of `value` with rows = `rows` (mixture -> label, in order) and columns
    = evaluated tasks in canonical order. The mean is over the seeds each cell has (NaN if any seed is NaN)."""
    absent = [m for m in rows if m not in set(table.mixture)]
    if absent:
        raise ValueError(f"no results for fine-tuning mixes {absent}")
    part = table[table.mixture.isin(list(rows))]
    columns = canonical_order(part.task.unique())

    def pivot(frame: pd.DataFrame) -> pd.DataFrame:
        matrix = frame.assign(row=frame.mixture.map(rows)).pivot(index="row", columns="task", values=value)
        matrix = matrix.reindex(index=list(rows.values()), columns=columns)
        return matrix.rename_axis(index=row_name, columns="evaluated_task")

    per_seed = {int(seed): pivot(group) for seed, group in part.groupby("seed", sort=False)}
    mean = part.groupby(["mixture", "task"], as_index=False)[value].mean(skipna=False)
    return per_seed, pivot(mean)


def ftwb1_matrix(ni: pd.DataFrame, mixes: dict[str, list[str]]):
    """FTWB1 NI matrices from `ni_table` output: ({seed: matrix}, mean). Rows = fine-tuned task, columns =
    evaluated task, both canonical; the mean averages clipped per-seed NI (§9). `mixes` is name -> tasks
    (e.g. the config's fine-tuning mixes); its single-task entries make the rows."""
    return matrices(ni, "ni", ftwb1_rows(mixes), "finetuned_task")


def ftwb2_matrix(ni: pd.DataFrame, mixes: dict[str, list[str]]):
    """FTWB2 NI matrices: ({seed: matrix}, mean). Rows = the two-task entries of `mixes` in index order
    (ftwb2-1..21), labelled "D,T"; columns = evaluated tasks, canonical."""
    return matrices(ni, "ni", ftwb2_rows(mixes), "pair")


# ---- best-teacher prediction -----------------------------------------------------------------------------

def teacher_mixes(mixes: dict[str, list[str]]) -> dict[str, str]:
    """Task -> the single-task mix that fine-tunes it."""
    teachers = {}
    for name, (task,) in mixes_of_size(mixes, 1).items():
        if task in teachers:
            raise ValueError(f"fine-tuning mixes {teachers[task]!r} and {name!r} both train only {task!r}")
        teachers[task] = name
    return teachers


def student_teachers(mixes_ftwb1: dict[str, list[str]], mixes_ftwb2: dict[str, list[str]]) -> pd.DataFrame:
    """One row per two-task mix: mixture, teacher_a, teacher_b (the ftwb1 mixes of its tasks, canonical)."""
    teachers = teacher_mixes(mixes_ftwb1)
    rows = []
    for name, pair in mixes_of_size(mixes_ftwb2, 2).items():
        missing = [t for t in canonical_order(pair) if t not in teachers]
        if missing:
            raise ValueError(f"the best-teacher prediction of {name!r} ({pair_label(pair)}) needs a single-task "
                             f"mix of {missing}, and none is configured")
        a, b = canonical_order(pair)
        rows.append({"mixture": name, "teacher_a": teachers[a], "teacher_b": teachers[b]})
    return pd.DataFrame(rows, columns=["mixture", "teacher_a", "teacher_b"])


def with_teacher(students: pd.DataFrame, ni: pd.DataFrame, teacher: str, column: str) -> pd.DataFrame:
    """`students` with the same-seed Atlantis metric on the same task of the mix named in `teacher`."""
    reference = ni[["mixture", "seed", "task", "v"]].rename(columns={"mixture": teacher, "v": column})
    merged = students.merge(reference, on=[teacher, "seed", "task"], how="left", indicator=True)
    missing = merged[merged["_merge"] == "left_only"]
    if len(missing):
        row = missing.iloc[0]
        raise ValueError(f"teacher run {row[teacher]}_s{row.seed} has no metric on the atlantis test set of "
                         f"task {row.task!r}, needed for the best-teacher prediction of {row.mixture}_s{row.seed}")
    return merged.drop(columns="_merge")


def best_teacher_deviation(metrics: pd.DataFrame, mixes_ftwb1: dict[str, list[str]],
                           mixes_ftwb2: dict[str, list[str]], base_mixture: str = "pt7") -> pd.DataFrame:
    """Per (two-task mix, seed, evaluated task): the better same-seed single-task teacher (`teacher`,
    `v_teacher`), its NI with the student's baselines (`pred`), the student's NI (`ni_ftwb2`) and
    `deviation` = ni_ftwb2 - pred (§9; < 0 interference, > 0 synergy). Both mixes arguments are name -> tasks;
    their single- and two-task entries are used, so the config's whole fine-tuning dict may go to both."""
    ni = ni_table(metrics, base_mixture)
    pairs = student_teachers(mixes_ftwb1, mixes_ftwb2)
    absent = sorted(set(pairs.mixture) - set(ni.mixture))
    if absent:
        raise ValueError(f"no results for fine-tuning mixes {absent}")
    table = ni.merge(pairs, on="mixture")
    table = with_teacher(with_teacher(table, ni, "teacher_a", "v_a"), ni, "teacher_b", "v_b")
    higher = table.metric.map(HIGHER_IS_BETTER).astype(bool).to_numpy()
    a_wins = np.where(higher, table.v_a >= table.v_b, table.v_a <= table.v_b)  # ties: the canonically first
    table["teacher"] = np.where(a_wins, table.teacher_a, table.teacher_b)
    table["v_teacher"] = better(table.v_a.to_numpy(), table.v_b.to_numpy(), higher)
    table["pred"] = normalized_improvements(table.v_teacher, table.b_std, table.b_atl, higher)
    table["deviation"] = table.ni - table.pred
    table = table.rename(columns={"ni": "ni_ftwb2"})
    return table[["mixture", "seed", "task", "teacher", "v_teacher", "ni_ftwb2", "pred", "deviation"]]


def deviation_matrix(deviation: pd.DataFrame, mixes: dict[str, list[str]]):
    """Deviation matrices from `best_teacher_deviation` output: ({seed: matrix}, seed mean), laid out as
    `ftwb2_matrix` (all evaluated tasks, trained ones included)."""
    return matrices(deviation, "deviation", ftwb2_rows(mixes), "pair")


# ---- the job's tables (scripts/generalization.py, archive --recompute) ----------------------------------------

def long_table(per_seed: dict, mean: pd.DataFrame, value: str) -> pd.DataFrame:
    """Seed -> matrix and the mean matrix as one tidy table: one row per (seed, row label, evaluated task), seed
    "mean" for the average."""
    frames = [m.stack(future_stack=True).rename(value).reset_index().assign(seed=str(s)) for s, m in per_seed.items()]
    frames.append(mean.stack(future_stack=True).rename(value).reset_index().assign(seed="mean"))
    table = pd.concat(frames, ignore_index=True)
    return table[["seed", *table.columns.drop("seed")]]


def generalization_tables(metrics: pd.DataFrame, mixes: dict[str, list[str]], base: str) -> dict[str, pd.DataFrame]:
    """The tables of results/generalization/ from the combined evaluation table: `ni` (normalized_improvement),
    `ftwb1` and `ftwb2` (the matrices, long), `deviation` (best_teacher_deviation) and `deviation_matrix` (long)."""
    ni = ni_table(metrics, base)
    deviation = best_teacher_deviation(metrics, mixes, mixes, base)
    return {"ni": ni, "ftwb1": long_table(*ftwb1_matrix(ni, mixes), "ni"),
            "ftwb2": long_table(*ftwb2_matrix(ni, mixes), "ni"), "deviation": deviation,
            "deviation_matrix": long_table(*deviation_matrix(deviation, mixes), "deviation")}
