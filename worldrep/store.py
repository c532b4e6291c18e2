"""The store: trained runs kept by recipe hash (worldrep.entry), which a config needs, and its CLI (METHOD §7.5).

An entry appears in one rename, marker inside, so it is complete or absent. While the Snakefile is parsed, each
stack's training job lists only the runs whose entries are missing (`training_jobs`); a per-run rule then
publishes an entry into results/models/{run}/ as hard links (`worldrep.entry.publish`), checking first that the
mixture and base model the entry was trained on are the ones there now.

CLI: python -m worldrep.store {list,gc,adopt} --configfile CONFIG [OVERLAY ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .artifacts import sha256_file
from .entry import (entry_dir, entry_files, finish_entry, is_complete, link_tree, remove, store_dir,  # noqa: F401
                    work_dir)
from .grid import Run, Stack, training_runs, training_stacks

# ---- what to train ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingJob:
    """One stack's training job: the runs it trains (`stack.runs`) and those whose entries it writes (`stale`).
    They differ only under `training.stack: whole-family`, which retrains a stale run's whole family so that its
    bytes on a GPU are those of a clean build (a fused stack rounds with its partners)."""
    stack: Stack
    stale: tuple[str, ...]


def training_jobs(config: dict, hashes: dict[str, str], results: Path) -> list[TrainingJob]:
    """The training jobs of this config against the store under `results`: one per stack with a missing entry.
    Computed from the config, the code and the store's markers alone, so that a cluster worker that re-parses the
    Snakefile while its stack trains finds the same job (markers appear only when a job ends)."""
    whole = config["training"]["stack"] == "whole-family"
    jobs = []
    for stack in training_stacks(config):
        stale = tuple(run.name for run in stack.runs if not is_complete(results, hashes[run.name]))
        if stale:
            runs = stack.runs if whole else tuple(run for run in stack.runs if run.name in stale)
            jobs.append(TrainingJob(replace(stack, runs=runs), stale))
    return jobs


def run_inputs(config: dict, run: Run, results: Path) -> dict[str, Path]:
    """The files a run's entry records the sha256 of: its mixture's train and val splits, and its base model."""
    from .grid import training_mixture
    from .recipes import base_run

    mixture = Path(results) / "mixtures" / training_mixture(config, run)
    files = {"train": mixture / "train.npz", "val": mixture / "val.npz"}
    base = base_run(config, run)
    if base is not None:
        files["base"] = Path(results) / "models" / base.name / "final" / "model.safetensors"
    return files


# ---- the CLI: list, gc, adopt -------------------------------------------------------------------------------------

def entries(results: Path) -> dict[str, int]:
    """Every folder in the store (entries, work and staging folders) -> its bytes on disk."""
    folder = store_dir(results)
    if not folder.is_dir():
        return {}
    from .plan import folder_bytes

    return {p.name: folder_bytes(p) for p in sorted(folder.iterdir())}


def garbage(keep: set[str], results: Path) -> list[Path]:
    """The store's folders that no kept recipe hash names (entries, work and staging folders), and the work and
    staging folders left beside a complete entry (a kill between its rename and the cleanup; whole-family partners)."""
    folder = store_dir(results)
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if (name := p.name.split(".")[0]) not in keep
            or (p.name != name and is_complete(results, name))]


def adopt(config: dict, hashes: dict[str, str], results: Path) -> tuple[list[str], list[str]]:
    """Store entries for runs published by a workflow that had no store: each run's files in results/models/{run}/
    become its entry (hard links), provided its run.json records this config's model, recipe, seed and mixture and
    the sha256 of the mixture and base model there now. Returns (adopted runs, refused runs with the reason)."""
    from .grid import training_mixture
    from .recipes import training_params

    adopted, refused = [], []
    for run in training_runs(config):  # base runs come first, so a fine-tuning run checks against an adopted base
        recipe_hash = hashes[run.name]
        published = Path(results) / "models" / run.name
        if is_complete(results, recipe_hash):
            continue
        if not (published / "final" / "run.json").is_file():
            refused.append(f"{run.name}: no published model")
            continue
        meta = json.loads((published / "final" / "run.json").read_text())
        wanted = training_params(config, run)
        recorded = meta.get("recipe", {})
        recipe = {k: (list(recorded[k]) if k == "betas" else recorded[k]) for k in wanted["recipe"] if k in recorded}
        precision = recorded.get("precision")  # the one its device used: among the config's per-device choices
        checks = (("model", meta.get("model") == wanted["model"]), ("recipe", recipe == wanted["recipe"]),
                  ("precision", precision in wanted["precision"].values()),
                  ("seed", meta.get("seed") == wanted["seed"]),
                  ("mixture", meta.get("mixture") == training_mixture(config, run)))
        differs = [key for key, ok in checks if not ok]
        current, inputs = run_inputs(config, run, results), meta.get("inputs_sha256", {})
        differs += [name for name, path in current.items()
                    if not path.is_file() or inputs.get(name) != sha256_file(path)]
        if differs:
            refused.append(f"{run.name}: its run.json differs from this config in {', '.join(differs)}")
            continue
        work = work_dir(results, recipe_hash).with_suffix(".adopt")
        remove(work)
        work.mkdir(parents=True)
        names = entry_files(run.kind)
        for name in names:
            link_tree(published / name, work / name)
        finish_entry(work, entry_dir(results, recipe_hash), names,
                     {"run": run.name, "recipe_hash": recipe_hash, "inputs_sha256": meta["inputs_sha256"],
                      "adopted": True})
        remove(work)
        adopted.append(run.name)
    return adopted, refused


def load_config(paths: list[Path]) -> dict:
    import yaml

    from .grid import validate_config
    from .plan import merged

    config = {}
    for path in paths:
        config = merged(config, yaml.safe_load(Path(path).read_text()))
    return validate_config(config)


def main(argv: list[str] | None = None) -> int:
    from .recipes import Recipes

    parser = argparse.ArgumentParser(prog="python -m worldrep.store", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["list", "gc", "adopt"],
                        help="list: each run's entry; gc: remove the entries no given config refers to; adopt: "
                             "make entries of the runs a workflow without a store published (then: snakemake --touch)")
    parser.add_argument("--configfile", type=Path, nargs="+", action="append", required=True,
                        help="a config and its overlays, merged in order as Snakemake does; gc takes the option "
                             "once per config whose entries it keeps")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--dry-run", action="store_true", help="gc: only list what it would remove")
    args = parser.parse_args(argv)
    configs = [load_config(paths) for paths in args.configfile]
    hashes = [Recipes(config).run_hashes() for config in configs]
    if args.command == "list":
        sizes = entries(args.results)
        for config, by_run in zip(configs, hashes):
            for run, recipe_hash in by_run.items():
                state = ("complete" if is_complete(args.results, recipe_hash) else
                         "training (work folder)" if work_dir(args.results, recipe_hash).is_dir() else "missing")
                print(f"{run}\t{recipe_hash}\t{state}\t{sizes.get(recipe_hash, 0) / 1e6:,.1f} MB")
        from .plan import folder_bytes

        print(f"store: {len(sizes)} folder(s), {folder_bytes(store_dir(args.results)) / 1e9:,.2f} GB on disk")
    elif args.command == "gc":
        keep = {h for by_run in hashes for h in by_run.values()}
        for path in garbage(keep, args.results):
            print(f"{'would remove' if args.dry_run else 'removing'} {path}")
            if not args.dry_run:
                remove(path)
    else:
        if len(configs) != 1:
            parser.error("adopt takes one config (--configfile once)")
        adopted, refused = adopt(configs[0], hashes[0], args.results)
        print(f"adopted {len(adopted)} run(s)")
        if refused:  # a --touch now would mark these runs' outdated models up to date for good
            print("not adopted (retrain them: remove their results/models/{run}/ folders, then run snakemake; only "
                  "then `snakemake --touch` once):\n  " + "\n  ".join(refused))
            return 1
        print("now run `snakemake --touch` once with the same config files, so that Snakemake records the new "
              "params of every job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
