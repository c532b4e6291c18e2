"""Snakemake adapter: rule atlantis_reconstruction -> results/probes/atlantis_errors.csv.gz (per model and
city: true and predicted x/y, error) and atlantis_summary.csv (the pooled groups of §11 and the Mann–Whitney U test).
The tables are `worldrep.probes.atlantis_tables` (also `archive verify --recompute`)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.artifacts import atomic_write_bytes
from worldrep.probes import atlantis_tables
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
cities = read_cities(snakemake.input.cities).set_index("city_id")
p = snakemake.params
table, summary = atlantis_tables(cities, list(zip(p.runs, snakemake.input.representations)), p.includes_distance,
                                 list(zip(p.controls, snakemake.input.controls)), p.seed, p.n_train, p.n_baseline,
                                 p.layer, load_representations)
atomic_write_bytes(Path(snakemake.output.errors),
                   lambda handle: table.to_csv(handle, index=False, compression={"method": "gzip", "mtime": 0}))
atomic_write_bytes(Path(snakemake.output.summary), lambda handle: summary.to_csv(handle, index=False))
print(summary.to_string(), file=log)
