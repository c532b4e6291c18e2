"""Snakemake adapter: rule probes -> results/probes/{run}.csv: one row per (step, layer) with the probe
metrics of §11 on the standard split (OLS; ridge and the control task beside it); step is "final" for the final
checkpoint. Also the analysis layer's 3-D views (PCA and probe "mixed", §11) of the final checkpoint and of the
dynamics checkpoints -> results/views/{run}.csv.gz, so the figures never refit anything. The tables are
`worldrep.probes.probe_tables` (also `archive verify --recompute`)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.artifacts import atomic_write_bytes
from worldrep.probes import checkpoint_sources, probe_tables
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
cities = read_cities(snakemake.input.cities).set_index("city_id")
sources = [("final", Path(snakemake.input.final)), *checkpoint_sources(snakemake.input.checkpoints)]
table, view_table = probe_tables(cities, sources, snakemake.params.seed, snakemake.params.layer, load_representations,
                                 snakemake.params.ridge_alphas, snakemake.params.control_seed)
atomic_write_bytes(Path(snakemake.output.metrics), lambda handle: table.to_csv(handle, index=False))
atomic_write_bytes(Path(snakemake.output.views), lambda handle: view_table.to_csv(
    handle, index=False, float_format="%.6g", compression={"method": "gzip", "mtime": 0}))
print(table.to_string(), file=log)
