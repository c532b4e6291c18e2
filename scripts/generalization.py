"""Snakemake adapter: rule generalization -> results/generalization/*.csv (METHOD §9).

Matrices are written long: one row per (seed, row label, evaluated task), with seed "mean" for the average of
the clipped per-seed values. The tables are `worldrep.generalization.generalization_tables` (also
`archive verify --recompute`)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.generalization import generalization_tables

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")


def write(path, table):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
    print(f"{path}: {len(table)} rows", file=log)


tables = generalization_tables(pd.read_csv(snakemake.input.metrics), snakemake.params.mixes, snakemake.params.base)
for name, table in tables.items():
    write(getattr(snakemake.output, name), table)
print(tables["ftwb1"].query("seed == 'mean'").to_string(), file=log)
