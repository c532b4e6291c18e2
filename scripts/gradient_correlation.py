"""Snakemake adapter: rule gradient_correlation -> results/experiments/gradients/{points,correlation}.csv (issue
14.3): each checkpoint's gradient similarity against the single-task CKA (unordered pairs, analysis layer, both
estimators) and the FTWB1 NI (ordered pairs, diagonal left out), Pearson and Spearman; only against what the
config plans. The tables are `worldrep.gradients.correlation_tables`."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.gradients import correlation_tables

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")


def planned(name):
    """A target table the config plans (an input of that name), else None."""
    path = snakemake.input.get(name)
    return None if path is None else pd.read_csv(path)


points, correlation = correlation_tables(pd.read_csv(snakemake.input.similarity), planned("cka"), planned("ftwb1"),
                                         snakemake.params.variant_task, snakemake.params.layer)
for path, table in ((snakemake.output.points, points), (snakemake.output.correlation, correlation)):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(correlation.to_string(), file=log)
