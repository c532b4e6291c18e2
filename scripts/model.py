"""Snakemake adapter: rules pretrained_model / finetuned_model -> results/models/{run}/, and evaluate,
evaluate_checkpoints, representations, checkpoint_representations -> results/evaluation/{run}/ and
results/representations/{run}/, from the store entry a stack job wrote (worldrep.entry.publish: hard links, after
checking that what the entry was computed from, recorded by sha256, is what is here now)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.entry import StaleEntry, publish

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
entry = Path(snakemake.input.entry).parent
if checked := getattr(snakemake.input, "checked", None):  # a product: the test sets or cities it read, by path
    current = {path: Path(path) for path in ([checked] if isinstance(checked, str) else checked)}
else:  # a model: its mixture's splits and (fine-tuning) its base model's published weights
    current = {name: Path(path) for name in ("train", "val") if (path := getattr(snakemake.input, name))}
    if base := getattr(snakemake.input, "base", None):
        current["base"] = Path(base) / "model.safetensors"
try:
    record = publish(entry, {Path(path).name: Path(path) for path in snakemake.output}, current)
except StaleEntry as error:
    raise SystemExit(f"error: {error}")
print(f"published {record['run']}{'.' + record['product'] if 'product' in record else ''} from {entry} "
      f"(recipe {snakemake.params.recipe})", file=log)
