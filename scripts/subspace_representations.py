"""Snakemake adapter: rule subspace_representations -> results/experiments/subspace/representations/{run}/{task}.npz:
a base model's final checkpoint at another task's partial prompt (METHOD §10 extraction), so that its Atlantis
cities compare with those of a model fine-tuned from it, whose own file uses that prompt (METHOD Appendix C.1)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys

import torch

from worldrep.evaluation import load_model
from worldrep.representations import eligible_cities, extract, partial_prompt_tokens, save_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)
task = snakemake.wildcards.task
city_ids = eligible_cities(read_cities(snakemake.input.cities))["city_id"].to_numpy()
print(f"{snakemake.wildcards.run} at the {task} prompt: {len(city_ids)} eligible cities", file=log)
device = torch.device("cpu")  # as scripts/representations.py: seconds on a CPU
reps = extract(load_model(snakemake.input.model, device), partial_prompt_tokens(task, city_ids),
               layers=snakemake.params.layers, device=device)
save_representations(snakemake.output[0], city_ids, reps)
