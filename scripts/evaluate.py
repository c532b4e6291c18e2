"""Snakemake adapter: rule evaluate -> results/evaluation/{run}/metrics.csv + predictions.csv.gz;
rule evaluate_checkpoints -> results/evaluation/{run}/checkpoints.csv."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.lease import job_lease

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
# Before torch touches CUDA (see scripts/train.py).
lease = job_lease(snakemake.config["gpu"], log=lambda line: print(line, file=log, flush=True))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from worldrep.artifacts import atomic_write_bytes  # noqa: E402
from worldrep.evaluation import evaluate_model, load_model, resolve_device_precision, test_set_name  # noqa: E402

torch.set_num_threads(snakemake.threads)
device = torch.device(lease.device)
precision = resolve_device_precision(device, snakemake.params.precision)
test_sets = {test_set_name(Path(f).parent.parent.name, Path(f).parent.name): Path(f) for f in snakemake.input.test_sets}
batch_size = snakemake.params.batch_size


def write_csv(path, table, **options):
    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False, **options))


if "checkpoints" in snakemake.input.keys():
    checkpoints = sorted(Path(snakemake.input.checkpoints).glob("step-*"))
    tables = []
    for checkpoint in tqdm(checkpoints, desc="checkpoints", file=log):
        metrics, _ = evaluate_model(load_model(checkpoint, device), test_sets, batch_size, device, precision)
        tables.append(metrics.assign(step=int(checkpoint.name.removeprefix("step-"))))
    metrics = pd.concat(tables, ignore_index=True)
    write_csv(snakemake.output.metrics, metrics[["step", *metrics.columns.drop("step")]])
else:
    progress = tqdm(desc="items", unit="item", file=log, mininterval=10)
    metrics, predictions = evaluate_model(load_model(snakemake.input.model, device), test_sets, batch_size,
                                          device, precision, progress)
    progress.close()
    write_csv(snakemake.output.predictions, predictions, compression={"method": "gzip", "mtime": 0})
    write_csv(snakemake.output.metrics, metrics)
print(metrics.to_string(), file=log)
lease.release()
