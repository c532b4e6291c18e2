"""Snakemake adapter: rule representations -> results/representations/{run}/final.npz; rule
checkpoint_representations -> results/representations/{run}/checkpoints/step-NNNNNN.npz."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from worldrep.evaluation import load_model
from worldrep.representations import eligible_cities, extract, partial_prompt_tokens, prompt_task, save_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)
p = snakemake.params
task = prompt_task(snakemake.wildcards.mixture, p.tasks, finetuning=p.finetuning, configured_tasks=p.configured_tasks)
city_ids = eligible_cities(read_cities(snakemake.input.cities))["city_id"].to_numpy()
tokens = partial_prompt_tokens(task, city_ids)
print(f"prompt task {task}: {len(city_ids)} eligible cities", file=log)
device = torch.device("cpu")  # a forward pass over ~5,700 short prompts: seconds on a CPU, no GPU lease needed


def extract_to(model_dir, path):
    save_representations(path, city_ids, extract(load_model(model_dir, device), tokens, layers=p.layers,
                                                           device=device))


if "checkpoints" in snakemake.input.keys():
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    for checkpoint in tqdm(sorted(Path(snakemake.input.checkpoints).glob("step-*")), desc="checkpoints", file=log):
        extract_to(checkpoint, out / f"{checkpoint.name}.npz")
else:
    extract_to(snakemake.input.model, snakemake.output[0])
