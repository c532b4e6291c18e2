"""Snakemake adapter: rule cka_task_count -> results/cka/task_count.csv + task_count_summary.csv (METHOD §12).

A family pt{k}'s models are trained on k tasks. Values of one variant pair pool all seed combinations (seed
"pooled"); the per-seed rows (seed = 42, 1, ...) use only same-seed pairs, seeds paired by position. The tables
are `worldrep.cka.task_count_tables` (also `archive verify --recompute`)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import task_count_tables

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
pairs = {Path(path).parent.name: pd.read_csv(path) for path in snakemake.input.pairs}
values, summary_table = task_count_tables(pairs, snakemake.params.task_sets)
for path, table in ((snakemake.output.values, values), (snakemake.output.summary, summary_table)):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(summary_table.query("seed == 'pooled'").to_string(), file=log)
