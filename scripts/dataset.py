"""Snakemake adapter: rule dataset -> results/datasets/{variant}/{task}/{split}.{txt,npz} + metadata.json.

A label-noise copy (`{variant}-{noise variant}`, METHOD C.2) is generated as its clean variant, with the same items,
then a fraction `label_noise` of its train answers is replaced (`worldrep.datasets.with_label_noise`), as is a task's
own `label_noise`."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from tqdm import tqdm

from worldrep.artifacts import write_json
from worldrep.datasets import (SPLITS, World, check_dataset, dataset_base, dataset_metadata, generate_dataset, render,
                               with_label_noise, write_split)
from worldrep.provenance import provenance
from worldrep.tasks import TASKS
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
task, variant, p = TASKS[snakemake.wildcards.task], snakemake.wildcards.variant, snakemake.params
base = dataset_base(variant)  # the generated variant: its pools, seed stream and sizes
world = World.from_table(read_cities(snakemake.input.cities))
splits = generate_dataset(task, tuple(p.city_counts), base, p.sizes, world, p.seed,
                          snakemake.resources.max_draw_rounds)
params = {"city_counts": p.city_counts, "sizes": p.sizes, "seed": p.seed, "label_noise": p.label_noise}
metadata = dataset_metadata(task, base, splits, params)
check_dataset(metadata, p.sizes, task.balanced)  # the clean splits: the noise below breaks train's balance on purpose
splits, noise = with_label_noise(task, splits, p.label_noise, p.seed, base)
if noise:
    print(f"label noise {p.label_noise}: {noise['changed']} of {noise['of']} train answers replaced", file=log)
    metadata = dataset_metadata(task, base, splits, params)
metadata = {**metadata, "variant": variant, "label_noise": noise}
directory = Path(snakemake.output.metadata).parent
for split in tqdm(SPLITS, desc=f"{variant}/{task.name}: render and write", file=log):
    write_split(directory, split, *render(task, splits[split], world))
write_json(snakemake.output.metadata, {**metadata, "provenance": provenance()})
