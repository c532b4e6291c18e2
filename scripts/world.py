"""Snakemake adapter: rule world -> results/world/cities.csv + world.json."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.artifacts import atomic_write_bytes, write_json
from worldrep.provenance import provenance
from worldrep.world import WorldSettings, build_world, world_metadata

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
p = snakemake.params
settings = WorldSettings(
    min_population=p.min_population,
    atlantis_count=p.atlantis["count"],
    atlantis_center=tuple(p.atlantis["center"]),
    atlantis_std=p.atlantis["std"],
    atlantis_seed=p.atlantis["seed"],
    city_id_seed=p.city_id_seed,
)
cities = build_world(settings)
metadata = world_metadata(cities, settings)
print(f"{metadata['counts']}", flush=True)
atomic_write_bytes(Path(snakemake.output.cities), lambda h: cities.to_csv(h, index=False))
write_json(snakemake.output.metadata, {**metadata, "provenance": provenance()})
