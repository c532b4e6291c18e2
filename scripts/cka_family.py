"""Snakemake adapter: rule cka_family -> results/cka/{family}/pairs.csv + matrix.csv (METHOD §12)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.cka import cka_matrices, family_matrix
from worldrep.representations import load_representations
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
runs, variants, seeds = snakemake.params.runs, snakemake.params.variants, snakemake.params.seeds
counts = {variant: len(seeds[variant]) for variant in variants}
if len(set(counts.values())) != 1:
    raise ValueError(f"family {snakemake.wildcards.family}: variants have unequal seed counts {counts}; the "
                     "seed-averaged matrix pairs seeds by position (a replaced seed takes the place of the old one)")
n_seeds = counts[variants[0]]
# Each run's variant, seed and seed position, in the order of `runs` (variant-major, seeds in config order).
variant_of = np.repeat(variants, n_seeds)
seed_of = np.array([seed for variant in variants for seed in seeds[variant]])
position_of = np.tile(np.arange(n_seeds), len(variants))
cities = read_cities(snakemake.input.cities)
atlantis = set(cities.loc[cities.is_atlantis, "city_id"])

features, reference, layers = [], None, []
for run, path in zip(runs, snakemake.input.representations):
    ids, reps = load_representations(path)
    keep = ~np.isin(ids, list(atlantis))  # CKA uses the eligible non-Atlantis cities (§12)
    if reference is None:
        reference = ids[keep]
    elif not np.array_equal(ids[keep], reference):
        raise ValueError(f"{path}: its city IDs differ from {snakemake.input.representations[0]}'s")
    if features and sorted(reps) != layers:
        raise ValueError(f"{path}: layers {sorted(reps)} differ from {snakemake.input.representations[0]}'s {layers}")
    layers = sorted(reps)  # every extracted layer (`representations.layers`); widths may differ between models
    features.append({layer: reps[layer][keep] for layer in layers})
print(f"{len(runs)} models x {len(reference)} cities", file=log)

pairs, cells = [], []
for layer in layers:
    for estimator, values in cka_matrices([f[layer] for f in features]).items():
        a, b = np.triu_indices(len(runs), k=1)
        pairs.append(pd.DataFrame({
            "layer": layer, "estimator": estimator, "run_a": np.array(runs)[a], "run_b": np.array(runs)[b],
            "variant_a": variant_of[a], "variant_b": variant_of[b], "seed_a": seed_of[a], "seed_b": seed_of[b],
            "position_a": position_of[a], "position_b": position_of[b], "cka": values[a, b],
        }))
        mean, sem, n = family_matrix(values, variants, list(range(n_seeds)))
        rows, columns = np.indices(mean.shape)
        cells.append(pd.DataFrame({"layer": layer, "estimator": estimator, "row": np.array(variants)[rows.ravel()],
                                   "column": np.array(variants)[columns.ravel()], "mean": mean.ravel(),
                                   "sem": sem.ravel(), "n": n.ravel()}))
for path, table in ((snakemake.output.pairs, pd.concat(pairs)), (snakemake.output.matrix, pd.concat(cells))):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False))
print(pd.concat(cells).groupby(["layer", "estimator"])["mean"].describe().to_string(), file=log)
