"""Snakemake adapter: rule probes -> results/probes/{run}.csv: one row per (step, layer) with the probe
metrics of §11 on the standard split; step is "final" for the final checkpoint."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.probes import probe_split, standard_probe
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
cities = read_cities(snakemake.input.cities).set_index("city_id")
sources = [("final", Path(snakemake.input.final))]
for directory in snakemake.input.checkpoints:
    sources += [(str(int(p.stem.removeprefix("step-"))), p) for p in sorted(Path(directory).glob("step-*.npz"))]

rows, split = [], None
for step, path in sources:
    ids, reps = load_representations(path)
    xy = cities.loc[ids, ["x", "y"]].to_numpy(np.float64)
    split = split or probe_split(len(ids), snakemake.params.seed)  # one split for every model and checkpoint
    for layer, features in reps.items():
        rows.append({"step": step, "layer": layer, **standard_probe(features, xy, split)})
table = pd.DataFrame(rows)
atomic_write_bytes(Path(snakemake.output[0]), lambda handle: table.to_csv(handle, index=False))
print(table.to_string(), file=log)
