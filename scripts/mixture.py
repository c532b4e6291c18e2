"""Snakemake adapter: rules pretraining_mixture / finetuning_mixture -> results/mixtures/{mixture}/."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldrep.artifacts import atomic_write_bytes, write_json
from worldrep.datasets import SPLITS, load_split
from worldrep.mixtures import Source, compose
from worldrep.tasks import TASK_NAMES
from worldrep.provenance import provenance

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
sources = [Source(**s) for s in snakemake.params.sources]
# Each source's directory, read off the rule's own input paths (.../{variant}/{task}/metadata.json).
directories = {(Path(f).parent.parent.name, Path(f).parent.name): Path(f).parent
               for f in snakemake.input.datasets if f.endswith("metadata.json")}
progress = tqdm(total=len(sources), desc=f"{snakemake.wildcards.mixture}: sources", file=log)


def load(variant, task):
    progress.update()
    return {s: load_split(directories[variant, task], s) for s in SPLITS}


splits, counts = compose(sources, load, snakemake.params.seed)
progress.close()
directory = Path(snakemake.output.metadata).parent
for split in SPLITS:
    atomic_write_bytes(directory / f"{split}.npz", lambda h: np.savez(h, **splits[split]))
write_json(snakemake.output.metadata, {
    "mixture": snakemake.wildcards.mixture, "seed": snakemake.params.seed, "sources": counts,
    "task_names": list(TASK_NAMES),  # the `task` array indexes this list
    "sizes": {s: len(splits[s]["task"]) for s in SPLITS}, "token_width": int(splits["train"]["tokens"].shape[1]),
    "provenance": provenance(),
})
