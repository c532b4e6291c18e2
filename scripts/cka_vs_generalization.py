"""Snakemake adapter: rule cka_vs_generalization -> results/cka/cka_vs_generalization{,_fit}.csv (§12).

Points: ordered pairs (X, Y), X != Y, of non-crossing tasks that have both a single-task model and an FTWB1
model; x = analysis-layer (5) seed-averaged single-task CKA, y = seed-mean FTWB1 NI (fine-tune on X, evaluate Y).
The tables are `worldrep.cka.cka_vs_generalization_tables` (also `archive verify --recompute`)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import cka_vs_generalization_tables

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
points, fit = cka_vs_generalization_tables(pd.read_csv(snakemake.input.cka), pd.read_csv(snakemake.input.ftwb1),
                                           snakemake.params.variant_task, snakemake.params.layer)
for path, table in ((snakemake.output.points, points), (snakemake.output.fit, fit)):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(fit.to_string(), file=log)
