"""Snakemake adapter: rule probes -> results/probes/{run}.csv: one row per (step, layer) with the probe
metrics of §11 on the standard split; step is "final" for the final checkpoint. Also the analysis layer's 3-D views
(PCA and probe "mixed", §11) of the final checkpoint and of the dynamics checkpoints -> results/views/{run}.csv.gz,
so the figures never refit anything."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.probes import mixed_view, pca_view, probe_split, standard_probe, view_steps
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
cities = read_cities(snakemake.input.cities).set_index("city_id")
sources = [("final", Path(snakemake.input.final))]
for directory in snakemake.input.checkpoints:
    sources += [(str(int(p.stem.removeprefix("step-"))), p) for p in sorted(Path(directory).glob("step-*.npz"))]

drawn = {"final", *map(str, view_steps(int(step) for step, _ in sources[1:]))}
rows, views, split = [], [], None
for step, path in sources:
    ids, reps = load_representations(path)
    xy = cities.loc[ids, ["x", "y"]].to_numpy(np.float64)
    split = split or probe_split(len(ids), snakemake.params.seed)  # one split for every model and checkpoint
    for layer, features in reps.items():
        rows.append({"step": step, "layer": layer, **standard_probe(features, xy, split)})
    if step in drawn:
        pca, mixed = pca_view(reps[snakemake.params.layer]), mixed_view(reps[snakemake.params.layer], xy, split[0])
        views.append(pd.DataFrame({
            "step": step, "city_id": ids, "region": cities.loc[ids, "region"].to_numpy(),
            "is_atlantis": cities.loc[ids, "is_atlantis"].to_numpy(bool), "x": xy[:, 0], "y": xy[:, 1],
            **{f"pc{i + 1}": pca[:, i] for i in range(3)}, **{f"mixed{i + 1}": mixed[:, i] for i in range(3)}}))
table = pd.DataFrame(rows)
atomic_write_bytes(Path(snakemake.output.metrics), lambda handle: table.to_csv(handle, index=False))
view_table = pd.concat(views, ignore_index=True)
atomic_write_bytes(Path(snakemake.output.views), lambda handle: view_table.to_csv(
    handle, index=False, float_format="%.6g", compression={"method": "gzip", "mtime": 0}))
print(table.to_string(), file=log)
