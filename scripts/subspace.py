"""Snakemake adapter: rule subspace -> results/experiments/subspace/fractions.csv (per fine-tuned model: the
fractions of its Atlantis updates inside its world subspaces, their chance levels, its mean Atlantis error),
summary.csv (models with vs without distance, Mann–Whitney U) and correlation.csv (fraction vs error, Pearson and
Spearman). The tables are `worldrep.subspace.subspace_tables` (METHOD Appendix C.1)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.artifacts import atomic_write_bytes
from worldrep.representations import load_representations
from worldrep.subspace import subspace_tables
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
inp, p = snakemake.input, snakemake.params
cities = read_cities(inp.cities).set_index("city_id")
tables = subspace_tables(cities, p.runs, inp.finetuned, inp.bases, p.components, p.layer, p.seed, p.n_train,
                         p.n_baseline, load_representations)
for name, table in zip(("fractions", "summary", "correlation"), tables):
    atomic_write_bytes(Path(snakemake.output[name]), lambda handle: table.to_csv(handle, index=False))
    print(table.to_string(), file=log)
