"""Snakemake adapter: rule health_report -> results/evaluation/health_report.csv (METHOD §14)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.health import health_report

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
inp = snakemake.input
table = health_report(pd.read_csv(inp.metrics), pd.read_csv(inp.baselines), pd.read_csv(inp.probes),
                      snakemake.params.layer)
atomic_write_bytes(Path(snakemake.output[0]), lambda handle: table.to_csv(handle, index=False))
print(table.to_string(), file=log)
