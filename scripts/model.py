"""Snakemake adapter: rules pretrained_model / finetuned_model -> results/models/{run}/ from the run's store entry
(worldrep.entry.publish: hard links, after checking the entry's recorded mixture and base against those here)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.entry import StaleEntry, publish

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
entry = Path(snakemake.input.entry).parent
current = {name: Path(path) for name in ("train", "val") if (path := getattr(snakemake.input, name))}
if base := getattr(snakemake.input, "base", None):  # a fine-tuning run: its base model's published weights
    current["base"] = Path(base) / "model.safetensors"
try:
    record = publish(entry, {Path(path).name: Path(path) for path in snakemake.output}, current)
except StaleEntry as error:
    raise SystemExit(f"error: {error}")
print(f"published {record['run']} from {entry} (recipe {snakemake.params.recipe})", file=log)
