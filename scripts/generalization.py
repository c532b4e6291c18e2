"""Snakemake adapter: rule generalization -> results/generalization/*.csv (METHOD §9).

Matrices are written long: one row per (seed, row label, evaluated task), with seed "mean" for the average of
the clipped per-seed values."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.generalization import best_teacher_deviation, deviation_matrix, ftwb1_matrix, ftwb2_matrix, ni_table

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
metrics = pd.read_csv(snakemake.input.metrics)
mixes, base = snakemake.params.mixes, snakemake.params.base


def write(path, table):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
    print(f"{path}: {len(table)} rows", file=log)


def long(per_seed, mean, value):
    """Seed -> matrix and the mean matrix as one tidy table."""
    frames = [m.stack(future_stack=True).rename(value).reset_index().assign(seed=str(s)) for s, m in per_seed.items()]
    frames.append(mean.stack(future_stack=True).rename(value).reset_index().assign(seed="mean"))
    table = pd.concat(frames, ignore_index=True)
    return table[["seed", *table.columns.drop("seed")]]


ni = ni_table(metrics, base)
write(snakemake.output.ni, ni)
write(snakemake.output.ftwb1, long(*ftwb1_matrix(ni, mixes), "ni"))
write(snakemake.output.ftwb2, long(*ftwb2_matrix(ni, mixes), "ni"))
deviation = best_teacher_deviation(metrics, mixes, mixes, base)
write(snakemake.output.deviation, deviation)
write(snakemake.output.deviation_matrix, long(*deviation_matrix(deviation, mixes), "deviation"))
print(long(*ftwb1_matrix(ni, mixes), "ni").query("seed == 'mean'").to_string(), file=log)
