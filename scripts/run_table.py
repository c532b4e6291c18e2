"""Snakemake adapter: rules evaluation_table and probe_table -> one table of every run's rows, with the run's
mixture, kind and seed as leading columns."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
tables = [pd.read_csv(path).assign(**run) for run, path in zip(snakemake.params.runs, snakemake.input)]
table = pd.concat(tables, ignore_index=True)
columns = ["run", "mixture", "kind", "seed"]
table = table[columns + [c for c in table.columns if c not in columns]]
atomic_write_bytes(Path(snakemake.output[0]), lambda handle: table.to_csv(handle, index=False))
print(f"{len(tables)} models, {len(table)} rows", file=log)
