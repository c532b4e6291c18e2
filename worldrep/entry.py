"""One store entry: where a trained run lives by recipe hash, how it is written and how it is published
(docs/METHOD.md §7.5; which entries a config needs, and the CLI: worldrep.store).

    results/store/{hash}/            one run's entry: final/, checkpoints/ (pretraining), training_log.csv,
                                     validation_log.csv, and complete.json, the marker, written last
    results/store/{hash}.work/       the run's work folder while its stack trains: resume state, logs, checkpoints
    results/store/{hash}/            one of a run's products (PRODUCT_FILES), computed by its stack job from the
                                     run's weights, under the product's own recipe hash, with its marker

The training and publishing scripts import this module, so its import closure is part of their code identity
(worldrep.codehash): it stays small, standard library only, so that editing the planning code retrains nothing.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from .artifacts import sha256_file

MARKER = "complete.json"
# What a run's entry holds besides its marker: the files its publish rule links into results/models/{run}/.
PRETRAINING_FILES = ("final", "checkpoints", "training_log.csv", "validation_log.csv")
FINETUNING_FILES = ("final", "training_log.csv", "validation_log.csv")


# What a stack job computes from each run's weights besides the weights (worldrep.grid.run_products), entry by entry:
# a product's recipe covers its own params and code, so changing the evaluation's batch size or the extracted layers
# recomputes that product and retrains nothing.
PRODUCT_FILES = {
    "evaluation": ("metrics.csv", "predictions.csv.gz"),
    "checkpoint_evaluation": ("checkpoints.csv",),
    "representations": ("final.npz",),
    "checkpoint_representations": ("checkpoints",),
}

# Where a stack job computes its products fused (a GPU: worldrep.training.fused_by_default), a run's checkpoints go
# through one stacked model this many at a time, evaluated and extracted: the memory of 21 paper models' activations
# at the evaluation batch, and the run plan's count of stacked passes (worldrep.plan).
CHECKPOINT_STACK = 21


def product_reads(product: str, params: dict) -> list[str]:
    """The files a product reads besides the weights, as the rules name them (its params: worldrep.recipes
    .product_params). Its entry records their sha256, and publishing checks them."""
    if product.endswith("evaluation"):
        return [f"results/datasets/{name}/test.npz" for name in params["test_sets"]]
    return ["results/world/cities.csv"]


def entry_files(kind: str) -> tuple[str, ...]:
    """The files of a run's entry (kind: pretraining or finetuning) or of a product's."""
    return PRODUCT_FILES.get(kind) or (PRETRAINING_FILES if kind == "pretraining" else FINETUNING_FILES)


def store_dir(results: Path) -> Path:
    return Path(results) / "store"


def entry_dir(results: Path, recipe_hash: str) -> Path:
    return store_dir(results) / recipe_hash


def marker_path(results: Path, recipe_hash: str) -> Path:
    return entry_dir(results, recipe_hash) / MARKER


def work_dir(results: Path, recipe_hash: str) -> Path:
    return store_dir(results) / f"{recipe_hash}.work"


def is_complete(results: Path, recipe_hash: str) -> bool:
    return marker_path(results, recipe_hash).is_file()


# ---- writing and publishing entries -------------------------------------------------------------------------------

def link_tree(source: Path, target: Path) -> None:
    """`target` as a hard-linked copy of `source` (file or directory), complete or absent. Hard links, not moves:
    a kill at any point leaves the source whole, and nothing is copied twice on disk."""
    partial = target.with_name(target.name + ".partial")
    remove(partial)
    if source.is_dir():
        shutil.copytree(source, partial, copy_function=link_or_copy)
    else:
        link_or_copy(source, partial)
    remove(target)
    os.replace(partial, target)


def link_or_copy(source, target) -> None:
    """A hard link, or a copy where there can be none (the store and results/models/ on different disks)."""
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def finish_entry(work: Path, entry: Path, names: tuple[str, ...], record: dict) -> None:
    """Make `entry` from a finished run's work folder: its `names` linked into a staging folder, the marker
    written last, the folder renamed into place. The work folder (and its resume state) stays: its job removes it
    once every entry it writes exists, so that a failure in between leaves every run something to resume from."""
    staging = entry.with_name(entry.name + ".partial")
    remove(staging)
    staging.mkdir(parents=True)
    for name in names:
        link_tree(work / name, staging / name)
    (staging / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if entry.exists():  # Snakemake made the empty folder of the marker; anything else there has no marker
        remove(entry)
    os.replace(staging, entry)


class StaleEntry(Exception):
    """An entry trained on other bytes than the mixture or base model there now."""


def check_inputs(entry: Path, current: dict[str, Path]) -> dict:
    """The entry's marker, after checking that each input it recorded (train, val, base) has the sha256 of the
    file there now. Same recipe but other bytes means a file changed behind the workflow's back, or a
    non-deterministic build: never publish silently."""
    record = json.loads((entry / MARKER).read_text())
    recorded = record["inputs_sha256"]
    for name, path in current.items():
        now = sha256_file(path)
        if recorded.get(name) != now:
            raise StaleEntry(
                f"store entry {entry} was trained on a {name} input with sha256 {recorded.get(name)}, but {path} "
                f"now has {now}: same recipe, other bytes. Find out why {path} changed; to retrain, remove the entry "
                f"(rm -r {entry}) and rerun.")
    return record


def publish(entry: Path, outputs: dict[str, Path], current: dict[str, Path]) -> dict:
    """Link the entry's files into place (`outputs`: name in the entry -> path), the final model last."""
    record = check_inputs(entry, current)
    for name in sorted(outputs, key=lambda name: name == "final"):
        outputs[name].parent.mkdir(parents=True, exist_ok=True)
        link_tree(entry / name, outputs[name])
    return record
