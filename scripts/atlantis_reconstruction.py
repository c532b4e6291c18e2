"""Snakemake adapter: rule atlantis_reconstruction -> results/probes/atlantis_errors.csv.gz (per model and
city: true and predicted x/y, error) and atlantis_summary.csv (the pooled groups of §11 and the Mann–Whitney U test)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.probes import atlantis_groups, atlantis_predictions, atlantis_split, euclidean_errors
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
cities = read_cities(snakemake.input.cities).set_index("city_id")
p = snakemake.params
errors, baselines, atlantis = [], [], []


split = {"seed": p.seed, "n_train": p.n_train, "n_baseline": p.n_baseline}


def reconstruct(run, path, baseline_group, atlantis_group):
    ids, reps = load_representations(path)
    is_atlantis = cities.loc[ids, "is_atlantis"].to_numpy(bool)
    xy = cities.loc[ids, ["x", "y"]].to_numpy(np.float64)
    predictions = atlantis_predictions(reps[p.layer], xy, is_atlantis, **split)
    _, baseline_rows, atlantis_rows = atlantis_split(is_atlantis, **split)
    result = []
    for group, rows, pred in zip((baseline_group, atlantis_group), (baseline_rows, atlantis_rows), predictions):
        result.append(euclidean_errors(pred, xy[rows]))
        errors.append(pd.DataFrame({"run": run, "group": group, "city_id": ids[rows], "x": xy[rows, 0],
                                    "y": xy[rows, 1], "pred_x": pred[:, 0], "pred_y": pred[:, 1],
                                    "error": result[-1]}))
    return result


for run, path, with_distance in zip(p.runs, snakemake.input.representations, p.includes_distance):
    group = "atlantis_with_distance" if with_distance else "atlantis_without_distance"
    base, atl = reconstruct(run, path, "baseline", group)
    baselines.append(base)
    atlantis.append(atl)
# The control's own held-out real cities are not part of the §11 baseline group (two-task models only).
control = [reconstruct(run, path, "control_baseline", "atlantis_control")[1]
           for run, path in zip(p.controls, snakemake.input.controls)]
result = atlantis_groups(baselines, atlantis, p.includes_distance,
                         np.concatenate(control) if control else None)
rows = [{"group": name, **result[name]} for name in ("baseline", "atlantis_without_distance", "atlantis_with_distance")]
summary = pd.DataFrame(rows)
test = result["mann_whitney"] or {}
summary["mann_whitney_u"], summary["mann_whitney_p"] = test.get("u"), test.get("p_value")
summary["control_atlantis_mean"] = result.get("control_atlantis_mean")
table = pd.concat(errors, ignore_index=True)
atomic_write_bytes(Path(snakemake.output.errors),
                   lambda handle: table.to_csv(handle, index=False, compression={"method": "gzip", "mtime": 0}))
atomic_write_bytes(Path(snakemake.output.summary), lambda handle: summary.to_csv(handle, index=False))
print(summary.to_string(), file=log)
