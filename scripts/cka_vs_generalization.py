"""Snakemake adapter: rule cka_vs_generalization -> results/cka/cka_vs_generalization{,_fit}.csv (§12).

Points: ordered pairs (X, Y), X != Y, of non-crossing tasks that have both a single-task model and an FTWB1
model; x = analysis-layer (5) seed-averaged single-task CKA, y = seed-mean FTWB1 NI (fine-tune on X, evaluate Y)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from worldrep.artifacts import atomic_write_bytes

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
LAYER, EXCLUDED = snakemake.params.layer, "crossing"  # the analysis layer (5); crossing fails to learn alone (§14)
task_of = snakemake.params.variant_task
cka = pd.read_csv(snakemake.input.cka).query("layer == @LAYER")
cka = cka.assign(finetuned_task=cka.row.map(task_of), evaluated_task=cka.column.map(task_of))
ni = pd.read_csv(snakemake.input.ftwb1).query("seed == 'mean'")
points = cka.merge(ni, on=["finetuned_task", "evaluated_task"])
points = points[(points.finetuned_task != points.evaluated_task) & (points.finetuned_task != EXCLUDED)
                & (points.evaluated_task != EXCLUDED)]
points = points[["estimator", "finetuned_task", "evaluated_task", "mean", "ni"]].rename(columns={"mean": "cka"})
# Every non-crossing task with both a single-task and an FTWB1 model must give all its ordered pairs (30 in
# the paper grid): a silently shorter join would bias r.
tasks = (set(cka.finetuned_task) & set(ni.finetuned_task) & set(ni.evaluated_task)) - {EXCLUDED}
expected = len(tasks) * (len(tasks) - 1)
for estimator, group in points.groupby("estimator"):
    if len(group) != expected:
        raise ValueError(f"{estimator} CKA vs generalization: {len(group)} points, expected {expected} for {sorted(tasks)}")

fits = []
for estimator, group in points.groupby("estimator"):
    x, y = group.cka.to_numpy(), group.ni.to_numpy()
    if len(x) >= 3 and x.std() > 0 and y.std() > 0:
        r, p = stats.pearsonr(x, y)
        slope, intercept = np.polyfit(x, y, 1)
    else:  # too few points (reduced configs): no fit rather than a meaningless one
        r = p = slope = intercept = np.nan
    fits.append({"estimator": estimator, "layer": LAYER, "n": len(x), "r": r, "r2": r * r, "p": p,
                 "slope": slope, "intercept": intercept})
fit = pd.DataFrame(fits, columns=["estimator", "layer", "n", "r", "r2", "p", "slope", "intercept"])
for path, table in ((snakemake.output.points, points), (snakemake.output.fit, fit)):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(fit.to_string(), file=log)
