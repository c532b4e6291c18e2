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
    """One stack's job: the runs it trains (`stack.runs`, none when only products are missing), those whose model
    entries it writes (`stale`), the products it computes from the runs' weights (`products`: (run, product) whose
    entries are missing), and the runs whose weights it reads from their entries (`loaded`: a product is missing,
    the model is not). `stack.runs` and `stale` differ only under `training.stack: whole-family`, which retrains a
    stale run's whole family so that its bytes on a GPU are those of a clean build (a fused stack rounds with its
    partners); a partner's products are computed from its stored weights, never from the retrained copy."""
    stack: Stack
    stale: tuple[str, ...]
    products: tuple[tuple[str, str], ...] = ()
    loaded: tuple[str, ...] = ()


def training_jobs(config: dict, hashes: dict[str, str], results: Path,
                  products: dict[tuple[str, str], str] | None = None) -> list[TrainingJob]:
    """The stack jobs of this config against the store under `results`: one per stack with a missing entry, a run's
    (`hashes`: run -> recipe hash) or a product's (`products`: (run, product) -> recipe hash). Computed from the
    config, the code and the store's markers alone, so that a cluster worker that re-parses the Snakefile while its
    stack runs finds the same job (markers appear only when a job ends)."""
    whole = config["training"]["stack"] == "whole-family"
    of_run = {}
    for (run, product), product_hash in (products or {}).items():
        of_run.setdefault(run, []).append((product, product_hash))
    jobs = []
    for stack in training_stacks(config):
        stale = tuple(run.name for run in stack.runs if not is_complete(results, hashes[run.name]))
        missing = tuple((run.name, product) for run in stack.runs for product, product_hash in of_run.get(run.name, ())
                        if not is_complete(results, product_hash))
        if stale or missing:
            runs = stack.runs if whole and stale else tuple(run for run in stack.runs if run.name in stale)
            loaded = tuple(dict.fromkeys(run for run, _ in missing if run not in stale))
            jobs.append(TrainingJob(replace(stack, runs=runs), stale, missing, loaded))
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


def run_json_differences(config: dict, run: Run, meta: dict) -> list[str]:
    """What a published run's run.json (`meta`) records differently from what `config` says of the run: among
    model, recipe, precision (the one its device used, among the config's per-device choices), seed and mixture,
    in that order. Pure: `adopt` and `python -m worldrep.archive create` both ask it."""
    from .grid import training_mixture
    from .recipes import training_params

    wanted = training_params(config, run)
    recorded = meta.get("recipe", {})
    recipe = {k: (list(recorded[k]) if k == "betas" else recorded[k]) for k in wanted["recipe"] if k in recorded}
    checks = (("model", meta.get("model") == wanted["model"]), ("recipe", recipe == wanted["recipe"]),
              ("precision", recorded.get("precision") in wanted["precision"].values()),
              ("seed", meta.get("seed") == wanted["seed"]),
              ("mixture", meta.get("mixture") == training_mixture(config, run)))
    return [key for key, ok in checks if not ok]


def adopt(config: dict, hashes: dict[str, str], results: Path) -> tuple[list[str], list[str]]:
    """Store entries for runs published by a workflow that had no store: each run's files in results/models/{run}/
    become its entry (hard links), provided its run.json records this config's model, recipe, seed and mixture and
    the sha256 of the mixture and base model there now. Returns (adopted runs, refused runs with the reason)."""
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
        differs = run_json_differences(config, run, meta)
        current, inputs = run_inputs(config, run, results), meta.get("inputs_sha256", {})
        differs += [name for name, path in current.items()
                    if not path.is_file() or inputs.get(name) != sha256_file(path)]
        if differs:
            refused.append(f"{run.name}: its run.json differs from this config in {', '.join(differs)}")
            continue
        entry_from_published(results, recipe_hash, published, entry_files(run.kind),
                             {"run": run.name, "recipe_hash": recipe_hash, "inputs_sha256": meta["inputs_sha256"],
                              "adopted": True})
        adopted.append(run.name)
    return adopted, refused


def entry_from_published(results: Path, recipe_hash: str, published: Path, names: tuple[str, ...],
                         record: dict) -> None:
    """An entry made of a published folder's `names` (hard links, through an `.adopt` work folder), marker last."""
    work = work_dir(results, recipe_hash).with_suffix(".adopt")
    remove(work)
    work.mkdir(parents=True)
    for name in names:
        link_tree(published / name, work / name)
    finish_entry(work, entry_dir(results, recipe_hash), names, record)
    remove(work)


def published_product(results: Path, run: str, product: str) -> Path:
    """Where a run's product is published: results/evaluation/{run}/ or results/representations/{run}/."""
    return Path(results) / ("evaluation" if product.endswith("evaluation") else "representations") / run


def product_problems(product: str, params: dict, folder: Path) -> list[str]:
    """How a published product differs from its params, as far as its files tell: the test sets and precision of an
    evaluation (its metrics), the layers of representations (the arrays)."""
    import csv

    names = entry_files(product)
    if not all((folder / name).exists() for name in names):
        return ["files"]
    if product.endswith("evaluation"):
        with open(folder / names[0], newline="") as handle:
            rows = list(csv.DictReader(handle))
        sets = list(dict.fromkeys((r["test_set"], r["task"]) for r in rows))  # per step in checkpoints.csv
        wanted = [name.split("/")[1] for name in params["test_sets"]]
        return ((["test sets"] if [task for _, task in sets] != wanted else [])
                + (["precision"] if {r["precision"] for r in rows} - set(params["precision"].values()) else []))
    import numpy as np

    files = [folder / names[0]] if product == "representations" else sorted((folder / names[0]).glob("*.npz"))
    layers = []
    for file in files:
        with np.load(file) as arrays:
            layers.append(sorted(int(k[6:]) for k in arrays.files if k.startswith("layer_") and k[6:].isdigit()))
    return [] if files and all(found == sorted(params["layers"]) for found in layers) else ["layers"]


def adopt_products(config: dict, products: dict[tuple[str, str], str], results: Path,
                   adopted_runs: set[str]) -> tuple[list[str], list[str]]:
    """Store entries for the published products (evaluation, representations, ...) of runs whose models have entries,
    checked against their params (`product_problems`), with the sha256 of the test sets or cities there now."""
    from .entry import product_reads
    from .recipes import product_params

    runs = {run.name: run for run in training_runs(config)}
    adopted, refused = [], []
    for (name, product), product_hash in products.items():
        if name not in adopted_runs or is_complete(results, product_hash):
            continue
        params = product_params(config, runs[name], product)
        folder = published_product(results, name, product)
        reads = {path: Path(results).parent / path for path in product_reads(product, params)}
        differs = product_problems(product, params, folder) + [path for path, file in reads.items()
                                                               if not file.is_file()]
        if differs:
            refused.append(f"{name} {product}: differs from this config in {', '.join(differs)}")
            continue
        entry_from_published(results, product_hash, folder, entry_files(product),
                             {"run": name, "product": product, "recipe_hash": product_hash, "adopted": True,
                              "inputs_sha256": {path: sha256_file(file) for path, file in reads.items()}})
        adopted.append(f"{name} {product}")
    return adopted, refused


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .grid import load_config
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
    try:
        configs = [load_config(paths) for paths in args.configfile]
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
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
        with_entries = {run for run, recipe_hash in hashes[0].items() if is_complete(args.results, recipe_hash)}
        products, refused_products = adopt_products(configs[0], Recipes(configs[0]).product_hashes(), args.results,
                                                    with_entries)
        print(f"adopted {len(adopted)} run(s) and {len(products)} product(s) (evaluations, representations)")
        if refused_products:  # recomputed from the stored weights by the stack jobs: no training
            print("products not adopted (their stack jobs recompute them, training nothing):\n  "
                  + "\n  ".join(refused_products))
        if refused:  # a --touch now would mark these runs' outdated models up to date for good
            print("not adopted (retrain them: remove their results/models/{run}/ folders, then run snakemake; only "
                  "then `snakemake --touch` once):\n  " + "\n  ".join(refused))
            return 1
        print("now run `snakemake --touch` once with the same config files, so that Snakemake records the new "
              "params of every job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
