"""Snakemake adapter: rule cka_task_count -> results/cka/task_count.csv + task_count_summary.csv (METHOD §12).

A family pt{k}'s models are trained on k tasks. Values of one variant pair pool all seed combinations (seed
"pooled"); the per-seed rows (seed = 42, 1, ...) use only same-seed pairs, seeds paired by position."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import disjoint_pairs

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
values = []
for path in snakemake.input.pairs:
    family = Path(path).parent.name
    table = pd.read_csv(path)
    chosen = {frozenset(pair) for pair in disjoint_pairs(snakemake.params.task_sets[family])}
    keep = [frozenset((a, b)) in chosen for a, b in zip(table.variant_a, table.variant_b)]
    if any(keep):  # (an empty frame in the concat would turn the integer columns into floats)
        values.append(table[keep].assign(family=family, k=int(family.removeprefix("pt"))))
columns = ["family", "k", "layer", "estimator", "variant_a", "seed_a", "position_a", "variant_b", "seed_b",
           "position_b", "cka"]
values = pd.concat(values, ignore_index=True)[columns] if values else pd.DataFrame(columns=columns)


def summary(frame, seed):
    cka = frame["cka"].to_numpy()
    sem = cka.std() / np.sqrt(len(cka)) if len(cka) else np.nan  # ddof 0, as the §12 matrices
    return {"seed": seed, "mean": cka.mean() if len(cka) else np.nan, "sem": sem, "n": len(cka)}


rows = []
for (k, layer, estimator), group in values.groupby(["k", "layer", "estimator"]):
    base = {"k": k, "layer": layer, "estimator": estimator}
    rows.append(base | summary(group, "pooled"))
    # Same-seed panels pair seeds by position, as the matrices do: a replaced seed (pt1-5: [42, 1, 3]) stands
    # in for the one it replaced. A panel is named after the seed most of its runs have.
    same = group[group.position_a == group.position_b]
    for _, panel in same.groupby("position_a"):
        rows.append(base | summary(panel, str(pd.concat([panel.seed_a, panel.seed_b]).mode().iloc[0])))
summary_table = pd.DataFrame(rows, columns=["k", "layer", "estimator", "seed", "mean", "sem", "n"])
for path, table in ((snakemake.output.values, values), (snakemake.output.summary, summary_table)):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(summary_table.query("seed == 'pooled'").to_string(), file=log)
