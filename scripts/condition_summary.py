"""Snakemake adapter: rules noise_summary / scale_summary -> results/experiments/{noise,scale}/summary.csv,
matrices.csv and probe_r2.csv: the single-task family compared across conditions (noise levels, model sizes) by
`worldrep.cka.single_task_condition_tables` (METHOD Appendix C.2, C.4)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import single_task_condition_tables
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
inp, p = snakemake.input, snakemake.params
cities = read_cities(inp.cities)
runs = [run for label in p.order for run in p.groups[label]["runs"]]  # the inputs' order (rules/noise.smk)
paths, probes = dict(zip(runs, inp.representations)), dict(zip(runs, map(pd.read_csv, inp.probes)))
groups = {label: {**p.groups[label], "paths": paths, "probes": probes} for label in p.order}
tables = single_task_condition_tables(groups, p.variant_task, set(cities.loc[cities.is_atlantis, "city_id"]),
                                      load_representations)
for path, table in zip((snakemake.output.summary, snakemake.output.matrices, snakemake.output.probes), tables):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(tables[0].to_string(), file=log)
