"""Snakemake adapter: rule cka_family -> results/cka/{family}/pairs.csv + matrix.csv (METHOD §12). The tables are
`worldrep.cka.family_tables` (also `archive verify --recompute`)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import family_tables
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
cities = read_cities(snakemake.input.cities)
pairs, cells = family_tables(snakemake.params.runs, snakemake.input.representations, snakemake.params.variants,
                             snakemake.params.seeds, set(cities.loc[cities.is_atlantis, "city_id"]),
                             load_representations, snakemake.wildcards.family, snakemake.params.similarity)
print(f"{len(snakemake.params.runs)} models", file=log)
for path, table in ((snakemake.output.pairs, pairs), (snakemake.output.matrix, cells)):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(cells.groupby(["layer", "estimator"])["mean"].describe().to_string(), file=log)
