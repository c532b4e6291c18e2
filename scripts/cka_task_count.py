"""Snakemake adapter: rule cka_task_count -> results/cka/task_count.csv + task_count_summary.csv (METHOD §12).

A family pt{k}'s models are trained on k tasks. Values of one variant pair pool all seed combinations; the
per-seed rows (seed = 42, 1, ...) use only same-seed pairs; seed "pooled" uses all."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import disjoint_pairs
from worldrep.grid import RUN_NAME

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
values = []
for path in snakemake.input.pairs:
    family = Path(path).parent.name
    table = pd.read_csv(path)
    for side in ("a", "b"):
        parts = table[f"run_{side}"].str.extract(RUN_NAME)
        table[f"variant_{side}"], table[f"seed_{side}"] = parts["mixture"], parts["seed"].astype(int)
    chosen = {frozenset(pair) for pair in disjoint_pairs(snakemake.params.task_sets[family])}
    keep = [frozenset((a, b)) in chosen for a, b in zip(table.variant_a, table.variant_b)]
    if any(keep):  # (an empty frame in the concat would turn the integer columns into floats)
        values.append(table[keep].assign(family=family, k=int(family.removeprefix("pt"))))
columns = ["family", "k", "layer", "estimator", "variant_a", "seed_a", "variant_b", "seed_b", "cka"]
values = pd.concat(values, ignore_index=True)[columns] if values else pd.DataFrame(columns=columns)


def summary(frame, seed):
    cka = frame["cka"].to_numpy()
    sem = cka.std() / np.sqrt(len(cka)) if len(cka) else np.nan  # ddof 0, as the §12 matrices
    return {"seed": seed, "mean": cka.mean() if len(cka) else np.nan, "sem": sem, "n": len(cka)}


rows = []
for (k, layer, estimator), group in values.groupby(["k", "layer", "estimator"]):
    base = {"k": k, "layer": layer, "estimator": estimator}
    rows.append(base | summary(group, "pooled"))
    for seed in sorted(set(group.seed_a) & set(group.seed_b)):
        rows.append(base | summary(group[(group.seed_a == seed) & (group.seed_b == seed)], str(seed)))
summary_table = pd.DataFrame(rows, columns=["k", "layer", "estimator", "seed", "mean", "sem", "n"])
for path, table in ((snakemake.output.values, values), (snakemake.output.summary, summary_table)):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(summary_table.query("seed == 'pooled'").to_string(), file=log)
