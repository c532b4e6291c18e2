"""Snakemake adapter: rule dataset -> results/datasets/{variant}/{task}/{split}.{txt,npz} + metadata.json."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from tqdm import tqdm

from worldrep.artifacts import write_json
from worldrep.datasets import SPLITS, World, check_dataset, dataset_metadata, generate_dataset, render, write_split
from worldrep.provenance import provenance
from worldrep.tasks import TASKS
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
task, variant, p = TASKS[snakemake.wildcards.task], snakemake.wildcards.variant, snakemake.params
world = World.from_table(read_cities(snakemake.input.cities))
splits = generate_dataset(task, tuple(p.city_counts), variant, p.sizes, world, p.seed,
                          snakemake.resources.max_draw_rounds)
params = {"city_counts": p.city_counts, "sizes": p.sizes, "seed": p.seed}
metadata = dataset_metadata(task, variant, splits, params)
check_dataset(metadata, p.sizes, task.balanced)  # before anything is written
directory = Path(snakemake.output.metadata).parent
for split in tqdm(SPLITS, desc=f"{variant}/{task.name}: render and write", file=log):
    write_split(directory, split, *render(task, splits[split], world))
write_json(snakemake.output.metadata, {**metadata, "provenance": provenance()})
