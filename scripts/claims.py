"""Snakemake adapter: rule claims -> results/claims.csv + results/claims.md (METHOD §15)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.claims import Evidence, checklist, markdown

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
inp, p = snakemake.input, snakemake.params
tables = {key: pd.read_csv(inp[key]) if key in inp.keys() else None
          for key in ("probes", "health", "cka_pt1", "task_count", "cka_fit", "deviation", "atlantis")}
evidence = Evidence(tasks=p.tasks, kind=p.kind, layer=p.layer, base_runs=p.base_runs,
                    views=dict(zip(p.views, map(pd.read_csv, inp.views))), **tables)
table = checklist(evidence)
atomic_write_bytes(Path(snakemake.output.table), lambda handle: table.to_csv(handle, index=False))
text = markdown(table, p.name)
atomic_write_bytes(Path(snakemake.output.markdown), lambda handle: handle.write(text.encode()))
print(text, file=log)
