"""Snakemake adapter: rule gradient_similarity -> results/experiments/gradients/similarity.csv (METHOD C.3): the
cosine similarity of every pair of tasks' loss gradients, all parameters and the digit-embedding rows, at the first
checkpoints of one pretraining run. The table is `worldrep.gradients.similarity_table`."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import torch

from worldrep.artifacts import atomic_write_bytes
from worldrep.gradients import similarity_table

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)
p = snakemake.params
table = similarity_table(Path(snakemake.input.checkpoints), dict(zip(p.tasks, snakemake.input.train)),
                         p.checkpoints, p.batches, p.batch_size, p.seed, log)
atomic_write_bytes(Path(snakemake.output[0]), lambda handle: table.to_csv(handle, index=False))
print(table.to_string(), file=log)
