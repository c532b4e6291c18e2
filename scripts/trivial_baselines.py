"""Snakemake adapter: rule trivial_baselines -> results/evaluation/trivial_baselines.csv."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

import pandas as pd

from worldrep.artifacts import atomic_write_bytes
from worldrep.datasets import load_split
from worldrep.evaluation import METRIC_NAME, test_set_name, trivial_prediction, trivial_score

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
predictions = {Path(f).parent.name: trivial_prediction(Path(f).parent.name, load_split(Path(f).parent, "train")["answers"])
               for f in snakemake.input.train}
rows = []
for path in map(Path, snakemake.input.test_sets):
    test_set, task = test_set_name(path.parent.parent.name, path.parent.name)
    answers = load_split(path.parent, "test")["answers"]
    rows.append({"test_set": test_set, "task": task, "metric": METRIC_NAME[task], "predictor": predictions[task],
                 "value": trivial_score(task, predictions[task], answers), "n": len(answers)})
table = pd.DataFrame(rows)
atomic_write_bytes(Path(snakemake.output[0]), lambda handle: table.to_csv(handle, index=False))
print(table.to_string(), file=log)
