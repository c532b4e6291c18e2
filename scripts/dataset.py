"""Snakemake adapter: rule dataset -> results/datasets/{variant}/{task}/{split}.{txt,npz} + metadata.json.

A label-noise copy (`{variant}-{noise variant}`, issue 14.2) is generated as its clean variant, with the same items,
then a fraction `label_noise` of its train answers is replaced (`worldrep.datasets.add_label_noise`)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from tqdm import tqdm

from worldrep.artifacts import write_json
from worldrep.datasets import (SPLITS, World, add_label_noise, check_dataset, dataset_base, dataset_metadata,
                               generate_dataset, noise_metadata, noise_rng, render, write_split)
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
check_dataset(dataset_metadata(task, base, splits, params), p.sizes, task.balanced)  # the clean splits, before noise
noise = None
if p.label_noise:
    splits["train"], changed = add_label_noise(splits["train"], task.categories, p.label_noise,
                                               noise_rng(p.seed, task.name, base))
    noise = noise_metadata(p.label_noise, changed, p.seed, task.name, base, len(splits["train"].k))
    print(f"label noise {p.label_noise}: {len(changed)} of {len(splits['train'].k)} train answers replaced", file=log)
metadata = {**dataset_metadata(task, base, splits, params), "variant": variant, "label_noise": noise}
directory = Path(snakemake.output.metadata).parent
for split in tqdm(SPLITS, desc=f"{variant}/{task.name}: render and write", file=log):
    write_split(directory, split, *render(task, splits[split], world))
write_json(snakemake.output.metadata, {**metadata, "provenance": provenance()})
