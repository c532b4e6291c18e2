"""Snakemake adapter: rule variant_cka -> results/variants/{variant}/cka_vs_default.csv: each of the variant's
pretraining models against the main grid's model of the same mixture and seed, every layer against every layer
(`worldrep.cka.cross_model_table`; METHOD Appendix B)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import cross_model_table
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
pairs = [tuple(pair) for pair in snakemake.params.pairs]
paths = dict(zip([run for pair in pairs for run in pair], snakemake.input.representations))
cities = read_cities(snakemake.input.cities)
table = cross_model_table(pairs, paths, set(cities.loc[cities.is_atlantis, "city_id"]), load_representations)
atomic_write_bytes(Path(snakemake.output[0]), lambda handle: table.to_csv(handle, index=False))
print(table.groupby(["run_a", "run_b", "estimator"])["cka"].describe().to_string(), file=log)
