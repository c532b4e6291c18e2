"""The experiment grid (METHOD §7.3) as plain data: which runs a config plans, with which recipe and test sets.

No torch here: the Snakefile imports this to plan, and planning must stay fast.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .config import (BASES, SCHEMA_PATH, ConfigError, architecture_problems, merged, mixture_families, overlay_problem,
                     schema_problems, semantic_problems)
from .datasets import dataset_base
from .experiments import enabled, experiment, experiment_variants, noise_variant, scale_variant, single_task_mixtures
from .mixtures import finetuning_sources, pretraining_sources
from .tasks import TASK_NAMES

RUN_NAME = re.compile(r"^(?P<mixture>[a-z0-9][a-z0-9-]*)_s(?P<seed>[0-9]+)$")


@dataclass(frozen=True)
class Run:
    mixture: str
    seed: int
    kind: str          # "pretraining" or "finetuning"
    seeds_entry: str   # the `training.seeds` key that gave this seed (recorded: §7.3 overrides)
    variant: str | None = None  # an architecture of `variants` (METHOD Appendix B); None: the config's `model`

    @property
    def name(self) -> str:
        return run_name(self.mixture, self.seed, self.variant)


def run_name(mixture: str, seed: int, variant: str | None = None) -> str:
    """`pt7_s42`; a variant's run shows its architecture after the mixture: `pt7-wide_s42`."""
    return f"{mixture}-{variant}_s{seed}" if variant else f"{mixture}_s{seed}"


def pretraining_mixtures(config: dict) -> dict[str, list[str]]:
    families = mixture_families(config)
    return {**families["pretraining"], **families["with_atlantis"]}


def seeds_entry(config: dict, mixture: str) -> str:
    """The key of `training.seeds` that applies to a mixture: its own entry, else its base's (fine-tuning),
    else `default`."""
    seeds = config["training"]["seeds"]
    if mixture in seeds:
        return mixture
    base = config["training"]["base"]
    if mixture in mixture_families(config)["finetuning.mixes"] and mixture != base:
        return seeds_entry(config, base)
    return "default"


def variant_blocks(config: dict) -> dict[str, dict]:
    """Every `variants` block (METHOD App. B): the config's own, then those its experiments add (`experiments.noise` and
    `experiments.scale`, Appendix C: `worldrep.experiments`), on or off."""
    return {**config.get("variants", {}), **experiment_variants(config)}


def enabled_variants(config: dict) -> dict[str, dict]:
    """The `variants` blocks that are on, in config order."""
    return {name: block for name, block in variant_blocks(config).items() if block["enabled"]}


def training_runs(config: dict) -> list[Run]:
    """Every planned run: pretraining mixtures × their seeds, then fine-tuning mixes × the base's seeds; then each
    enabled variant's runs: its pretraining mixtures × their seeds, its fine-tuning mixes × its base's seeds."""
    runs = []
    for mixture in pretraining_mixtures(config):
        entry = seeds_entry(config, mixture)
        runs += [Run(mixture, seed, "pretraining", entry) for seed in config["training"]["seeds"][entry]]
    for mixture in mixture_families(config)["finetuning.mixes"]:
        entry = seeds_entry(config, mixture)
        runs += [Run(mixture, seed, "finetuning", entry) for seed in config["training"]["seeds"][entry]]
    base = config["training"]["base"]
    for variant, block in enabled_variants(config).items():
        for mixture, entry in block["pretraining"].items():
            key = f"variants.{variant}.pretraining.{mixture}"
            runs += [Run(mixture, seed, "pretraining", key, variant) for seed in entry["seeds"]]
        for mixture in block["finetuning"]:
            key = f"variants.{variant}.pretraining.{base}"
            runs += [Run(mixture, seed, "finetuning", key, variant) for seed in block["pretraining"][base]["seeds"]]
    return runs


def model_settings(config: dict, variant: str | None = None) -> dict:
    """The architecture of a run: the config's `model`, with a variant's keys over it."""
    return {**config["model"], **(variant_blocks(config)[variant]["model"] if variant else {})}


def representation_settings(config: dict, variant: str | None = None) -> dict:
    """The extracted layers and the analysis layer of a run: `representations`, or the variant's own."""
    return {**config["representations"], **(variant_blocks(config)[variant].get("representations", {}) if variant else {})}


def recipe_settings(config: dict, mixture: str, variant: str | None = None) -> dict:
    """The `Recipe` fields of a mixture's runs: the shared settings plus the kind's peak lr and epochs
    (pretraining epochs by number of tasks, §7.1; a variant's pretraining entry may set its own epochs)."""
    training = config["training"]
    shared = {k: training[k] for k in ("batch_size", "warmup_steps", "eps", "weight_decay", "grad_clip",
                                       "checkpoint_fraction", "validation_fraction", "log_every", "compile")}
    shared["betas"] = list(training["betas"])
    pretraining = pretraining_mixtures(config)
    if mixture in pretraining:
        kind = training["pretraining"]
        epochs = kind["epochs"][len(pretraining[mixture])]
        if variant:
            epochs = variant_blocks(config)[variant]["pretraining"].get(mixture, {}).get("epochs", epochs)
    else:
        kind = training["finetuning"]
        epochs = kind["epochs"]
    if variant:  # a variant may keep checkpoints of its own density (the experiments' variants keep few)
        shared["checkpoint_fraction"] = variant_blocks(config)[variant].get("checkpoint_fraction",
                                                                             shared["checkpoint_fraction"])
    return {**shared, "peak_lr": kind["peak_lr"], "epochs": epochs}


def configured_tasks(config: dict) -> list[str]:
    """The config's tasks in canonical order (METHOD §0)."""
    return [t for t in TASK_NAMES if t in config["tasks"]]


def mixture_sources(config: dict, mixture: str):
    """The datasets a mixture draws from, in draw order (METHOD §4): both the mixture rule's inputs and its
    `sources` param. A label-noise copy draws the same slices from the noisy copies of the same datasets."""
    noisy = noisy_mixtures(config)
    if mixture in noisy:
        clean, variant = noisy[mixture]
        return [replace(s, variant=f"{s.variant}-{variant}") for s in mixture_sources(config, clean)]
    families = mixture_families(config)
    if mixture in families["finetuning.mixes"]:
        ft = config["mixtures"]["finetuning"]
        return finetuning_sources(families["finetuning.mixes"][mixture], configured_tasks(config), ft["replay_items"],
                                  ft["buffer_items"])
    variant = "with_atlantis" if mixture in families["with_atlantis"] else "pretraining"
    return pretraining_sources(pretraining_mixtures(config)[mixture], variant)


def dataset_pairs(config: dict) -> set[tuple[str, str]]:
    """(variant, task) of every dataset the workflow builds: every configured task's pretraining and
    Atlantis-required sets (the evaluation's test sets), plus whatever other dataset a configured mixture needs."""
    pairs = {(v, t) for v in ("pretraining", "atlantis_required") for t in configured_tasks(config)}
    return pairs | {(s.variant, s.task) for m in all_mixtures(config) for s in mixture_sources(config, m)}


def all_mixtures(config: dict) -> list[str]:
    """Every mixture the workflow composes: the configured ones, then the label-noise copies its runs train on."""
    return [*pretraining_mixtures(config), *mixture_families(config)["finetuning.mixes"], *noisy_mixtures(config)]


# ---- label noise (METHOD Appendix C.2) ---------------------------------------------------------------------------
# A noise level's variant (`label_noise: p`, generated by worldrep/experiments.py) trains on copies of its mixtures,
# `{mixture}-{variant}`, drawn from copies of their datasets, `results/datasets/{dataset variant}-{variant}/{task}`,
# whose train splits carry the noise.

def label_noise(config: dict, variant: str, task: str) -> float:
    """The label noise of a dataset: its noise variant's level, else the task's own `label_noise` (0 by default)."""
    if "-" in variant:
        return float(variant_blocks(config)[variant.split("-", 1)[1]]["label_noise"])
    return float(config["tasks"][task].get("label_noise", 0))  # float: `0` and the default replan nothing


def training_mixture(config: dict, run: Run) -> str:
    """The mixture folder a run trains on: its mixture's, or for a label-noise variant's run its noisy copy."""
    noisy = run.variant and variant_blocks(config)[run.variant].get("label_noise")
    return f"{run.mixture}-{run.variant}" if noisy else run.mixture


def noisy_mixtures(config: dict) -> dict[str, tuple[str, str]]:
    """The label-noise copies the planned runs train on: name -> (clean mixture, variant)."""
    return {name: (run.mixture, run.variant) for run in training_runs(config)
            if (name := training_mixture(config, run)) != run.mixture}


def train_items(config: dict, mixture: str) -> int:
    """A mixture's train N: each source's slice, or its dataset's whole train split (METHOD §4)."""
    return sum(s.n_train if s.n_train is not None else config["datasets"][dataset_base(s.variant)]["n_train"]
               for s in mixture_sources(config, mixture))


def step_counts(config: dict, mixture: str, variant: str | None = None) -> tuple[int, int]:
    """(epochs, steps per epoch) of a mixture's runs: the last partial batch is kept (§7.1)."""
    recipe = recipe_settings(config, mixture, variant)
    return recipe["epochs"], -(-train_items(config, mixture) // recipe["batch_size"])


def checkpoint_count(total: int, fraction: float) -> int:
    """len(training.checkpoint_steps(total, fraction)) without importing torch: 0, every ⌈fraction·T⌉, and T."""
    interval = max(1, math.ceil(fraction * total))  # as training.every
    return len(set(range(0, total + 1, interval)) | {total})


def family(config: dict, mixture: str) -> str:
    """pt{k}, pt{k}-atl or ftwb{k}, k = number of tasks: the rows of METHOD §7.3, and the stacks of
    `training.stack: family`."""
    families = mixture_families(config)
    if mixture in families["finetuning.mixes"]:
        return f"ftwb{len(families['finetuning.mixes'][mixture])}"
    k = len(pretraining_mixtures(config)[mixture])
    return f"pt{k}-atl" if mixture in families["with_atlantis"] else f"pt{k}"


# ---- stacks: the runs one training job trains together (METHOD §7.1) --------------------------------------

@dataclass(frozen=True)
class Stack:
    name: str               # the mixture (training.stack: mixture) or the family (training.stack: family), then
                            # `-{variant}` for a variant's runs (a stack has one architecture)
    kind: str               # "pretraining" or "finetuning": a stack never mixes them
    runs: tuple[Run, ...]

    @property
    def rule(self) -> str:
        """The Snakemake rule that trains this stack: pretrain_pt1, finetune_ftwb2_13, ..."""
        return f"{'pretrain' if self.kind == 'pretraining' else 'finetune'}_{self.name.replace('-', '_')}"

    @property
    def mixtures(self) -> list[str]:
        return list(dict.fromkeys(run.mixture for run in self.runs))


def training_stacks(config: dict) -> list[Stack]:
    """The planned runs grouped into training jobs by `training.stack`: `mixture` puts every seed of a mixture in
    one stack, `family` every run of a family (`family`). Runs keep their `training_runs` order; stacks come in
    order of their first run. A variant's runs stack apart, so that every stack has one architecture."""
    by = config["training"]["stack"]
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in training_runs(config):
        name = run.mixture if by == "mixture" else family(config, run.mixture)
        groups.setdefault((f"{name}-{run.variant}" if run.variant else name, run.kind), []).append(run)
    return [Stack(name, kind, tuple(runs)) for (name, kind), runs in groups.items()]


def stack_problems(config: dict) -> list[str]:
    """A stack's runs must share the step count (one lr schedule, one batch of static shape per step)."""
    problems = []
    for stack in training_stacks(config):
        variant = stack.runs[0].variant
        counts = {m: step_counts(config, m, variant) for m in stack.mixtures}
        if len(set(counts.values())) > 1:
            shown = ", ".join(f"{m}: {e} epochs x {spe} steps" for m, (e, spe) in counts.items())
            problems.append(f"config key 'training.stack': stack {stack.name!r} ({stack.kind}) groups runs of "
                            f"different step counts ({shown}); use `training.stack: mixture` or equal sizes")
    return problems


# ---- the items-per-city rule (docs/METHOD.md §7.4) ----------------------------------------------------------
# A city map appears once a run has seen about this many training items of one task per real city (the
# paper's Fig. 1: 1,000-1,300; our calibration in evidence/: see §7.4). Planning warns below it; it never stops.
MAP_ITEMS_PER_CITY = 1500


def items_seen(config: dict, mixture: str) -> dict[str, int]:
    """Training items of each task that a pretraining run of `mixture` sees: its epochs × the task's whole train
    split (every task contributes its whole split, §4.1)."""
    families = mixture_families(config)
    variant = "with_atlantis" if mixture in families["with_atlantis"] else "pretraining"
    epochs = recipe_settings(config, mixture)["epochs"]
    return {task: epochs * config["datasets"][variant]["n_train"] for task in pretraining_mixtures(config)[mixture]}


def items_per_city(config: dict, mixture: str, n_real: int) -> dict[str, float]:
    """`items_seen` per real city of the world."""
    return {task: n / n_real for task, n in items_seen(config, mixture).items()}


def short_runs(config: dict, n_real: int, rule: float = MAP_ITEMS_PER_CITY) -> dict[str, dict[str, float]]:
    """Pretraining mixtures whose runs see fewer than `rule` items of some task per real city: name -> the
    items per city of each task. Counted per task, not pooled (§7.4); only mixtures the config trains runs of (the
    paper grid defines pt7-atl but gives it no seeds)."""
    trained = {run.mixture for run in training_runs(config) if run.kind == "pretraining"}
    return {mixture: per_city for mixture in pretraining_mixtures(config) if mixture in trained
            and min((per_city := items_per_city(config, mixture, n_real)).values()) < rule}


def evaluation_sets(config: dict, mixture: str) -> list[tuple[str, str]]:
    """(dataset variant, task) test sets a mixture's models are scored on (§8): models that saw every
    configured task (the 7-task runs) and fine-tuned models get every standard and Atlantis test set; the
    1-, 2- and 3-task runs get the standard sets of their own tasks."""
    tasks = configured_tasks(config)
    pretraining = pretraining_mixtures(config)
    if mixture in pretraining and set(pretraining[mixture]) != set(tasks):
        return [("pretraining", t) for t in TASK_NAMES if t in pretraining[mixture]]
    return [(variant, t) for variant in ("pretraining", "atlantis_required") for t in tasks]


def grid_problems(config: dict) -> list[str]:
    """Config checks of the grid, in the style of `config.semantic_problems`."""
    problems = []
    training = config["training"]
    pretraining = pretraining_mixtures(config)
    finetuning = mixture_families(config)["finetuning.mixes"]
    for key in training["seeds"]:
        if key != "default" and key not in pretraining and key not in finetuning:
            problems.append(f"config key 'training.seeds.{key}': no mixture is named {key!r}")
    if finetuning and training["base"] not in pretraining:
        problems.append(f"config key 'training.base': {training['base']!r} is not a configured pretraining mixture")
    elif finetuning:
        base_seeds = set(training["seeds"][seeds_entry(config, training["base"])])
        for mixture in finetuning:
            extra = set(training["seeds"].get(mixture, [])) - base_seeds
            if extra:
                problems.append(f"config key 'training.seeds.{mixture}': seeds {sorted(extra)} have no "
                                f"'{training['base']}' base model")
    epochs = training["pretraining"]["epochs"]
    bad_keys = [k for k in epochs if not isinstance(k, int) or isinstance(k, bool) or k < 1]
    if bad_keys:
        problems.append(f"config key 'training.pretraining.epochs': keys {bad_keys} are not task counts "
                        "(positive integers)")
    for mixture, tasks in pretraining.items():
        if len(tasks) not in epochs:
            problems.append(f"config key 'training.pretraining.epochs': no entry for {len(tasks)} task(s), "
                            f"needed by mixture {mixture!r}")
    problems += variant_problems(config)
    problems += [] if problems else experiment_problems(
        config, {run.name for run in training_runs(config) if run.kind == "pretraining" and not run.variant})
    problems += [] if problems else stack_problems(config)
    planned = {run.name for run in training_runs(config) if run.kind == "pretraining"} if not problems else set()
    for name in config["evaluation"]["checkpoint_runs"]:
        if not problems and name not in planned:
            problems.append(f"config key 'evaluation.checkpoint_runs': {name!r} is not a planned pretraining run")
    return problems


def variant_problems(config: dict) -> list[str]:
    """Each enabled variant names configured mixtures, has its base run when it fine-tunes, and names no run that
    another run already has (e.g. a variant `atl` would make `pt7-atl_s42`, the with-Atlantis control's name)."""
    problems = []
    pretraining, finetuning = pretraining_mixtures(config), mixture_families(config)["finetuning.mixes"]
    base = config["training"]["base"]
    for name, block in enabled_variants(config).items():  # a block that is off may name mixtures a config cut
        key = f"variants.{name}"
        problems += [f"config key '{key}.pretraining.{m}': no pretraining mixture is named {m!r}"
                     for m in block["pretraining"] if m not in pretraining]
        unknown = [m for m in block["finetuning"] if m not in finetuning]
        problems += [f"config key '{key}.finetuning': no fine-tuning mix is named {m!r}" for m in unknown]
        if unknown:
            continue
        if block["finetuning"] and base not in block["pretraining"]:
            problems.append(f"config key '{key}.pretraining': fine-tuning needs the variant's own base "
                            f"'{base}' (training.base) among its pretraining mixtures")
        problems += finetuning_list_problems(key, block["finetuning"], finetuning)
    if problems:
        return problems
    seen: dict[str, Run] = {}
    for run in training_runs(config):
        if run.name in seen:
            problems.append(f"config key 'variants.{run.variant or seen[run.name].variant}': its run name "
                            f"{run.name!r} is also the name of another planned run")
        seen[run.name] = run
    for stack in training_stacks(config):  # e.g. a variant `atl` would make stack `pt7-atl`, the control's
        variants = sorted({run.variant or "main grid" for run in stack.runs})
        if len(variants) > 1:
            problems.append(f"config key 'variants': stack {stack.name!r} would train runs of architectures "
                            f"{variants} together; rename the variant")
    return problems


def finetuning_list_problems(key: str, mixes: list[str], finetuning: dict[str, list[str]]) -> list[str]:
    """A variant's generalization (§9) needs FTWB1 and FTWB2 mixes, and every FTWB2 pair's two FTWB1 teachers."""
    if not mixes:
        return []
    single = {finetuning[m][0] for m in mixes if len(finetuning[m]) == 1}
    pairs = [m for m in mixes if len(finetuning[m]) == 2]
    if not single or not pairs:
        return [f"config key '{key}.finetuning': the generalization analysis needs both one-task (FTWB1) and "
                "two-task (FTWB2) mixes"]
    return [f"config key '{key}.finetuning': {m} ({', '.join(finetuning[m])}) needs the FTWB1 mixes of "
            f"{', '.join(t for t in finetuning[m] if t not in single)} too (its best-teacher prediction)"
            for m in pairs if not set(finetuning[m]) <= single]


# ---- the analyses' groups of runs (METHOD §10-15): one definition for the rules (rules/common.smk), the run plan,
# `archive verify --recompute` and the checklist of a stopped DAG (worldrep.evidence). Main-grid runs only: an
# architecture variant's runs are analysed apart.

def main_runs(config: dict, kind: str | None = None) -> list[Run]:
    return [r for r in training_runs(config) if r.variant is None and (kind is None or r.kind == kind)]


def cka_families(config: dict) -> dict[str, list[str]]:
    """The CKA families of §12: pretraining mixtures named pt1-k, pt2-k, pt3-k (variant k, in config order)."""
    pretraining = mixture_families(config)["pretraining"]
    return {f: [m for m in pretraining if m.startswith(f"{f}-")] for f in ("pt1", "pt2", "pt3")
            if any(m.startswith(f"{f}-") for m in pretraining)}


def family_runs(config: dict, family: str) -> list[str]:
    """A family's runs, variant-major then seed in config order: the layout `cka.family_matrix` expects."""
    runs = main_runs(config, "pretraining")
    return [r.name for m in cka_families(config)[family] for r in runs if r.mixture == m]


def curve_runs(config: dict) -> list[str]:
    """Runs whose every checkpoint is extracted and probed (§10): the single-task family's runs, then the checkpoint
    runs whose checkpoints the evaluation also scores (pt7 seed 42)."""
    single = cka_families(config).get("pt1", [])
    runs = [r.name for r in main_runs(config, "pretraining") if r.mixture in single]
    return runs + [name for name in config["evaluation"]["checkpoint_runs"] if name not in runs]


def run_products(config: dict) -> dict[str, tuple[str, ...]]:
    """Run name -> what its stack job computes from the run's weights besides the weights (worldrep.entry
    .PRODUCT_FILES): every run's final evaluation and representations; the checkpoint runs' checkpoint evaluation
    (§8 curves); the curve runs' checkpoint representations (§10)."""
    checkpoint, curves = set(config["evaluation"]["checkpoint_runs"]), set(curve_runs(config))
    return {run.name: ("evaluation", "representations")
            + (("checkpoint_evaluation",) if run.name in checkpoint else ())
            + (("checkpoint_representations",) if run.name in curves else ())
            for run in training_runs(config)}


def mixture_tasks(config: dict, mixture: str) -> list[str]:
    families = mixture_families(config)
    return {**families["pretraining"], **families["with_atlantis"]}.get(mixture) or families["finetuning.mixes"][mixture]


def run_prompt_task(config: dict, run: Run) -> str:
    """The task whose partial prompt a run's representations are read at (§10)."""
    from .tasks import prompt_task

    return prompt_task(run.mixture, mixture_tasks(config, run.mixture), finetuning=run.kind == "finetuning",
                       configured_tasks=configured_tasks(config))


def atlantis_runs(config: dict) -> list[str]:
    """Fine-tuned runs of two-task mixes: the Atlantis reconstruction's (§11)."""
    mixes = mixture_families(config)["finetuning.mixes"]
    return [r.name for r in main_runs(config, "finetuning") if len(mixes[r.mixture]) == 2]


def control_runs(config: dict) -> list[str]:
    """The with-Atlantis pretraining runs: the reconstruction's controls."""
    return [r.name for r in main_runs(config, "pretraining") if r.mixture in mixture_families(config)["with_atlantis"]]


def single_task_runs(config: dict) -> list[str]:
    mixtures = pretraining_mixtures(config)
    return [r.name for r in main_runs(config, "pretraining") if len(mixtures[r.mixture]) == 1]


def claims_tables(config: dict) -> dict[str, str]:
    """The analysis tables the §15 checklist reads, under results/: only those this config plans (a missing one
    leaves its claims 'not reached')."""
    families, finetuning = cka_families(config), bool(main_runs(config, "finetuning"))
    tables = {"probes": "probes/probe_metrics.csv"}
    if main_runs(config, "pretraining"):
        tables["health"] = "evaluation/health_report.csv"
    if "pt1" in families:
        tables["cka_pt1"] = "cka/pt1/matrix.csv"
    if families:
        tables["task_count"] = "cka/task_count_summary.csv"
    if finetuning and "pt1" in families:
        tables["cka_fit"] = "cka/cka_vs_generalization_fit.csv"
    if finetuning:
        tables["deviation"] = "generalization/best_teacher_deviation.csv"
    if atlantis_runs(config):
        tables["atlantis"] = "probes/atlantis_summary.csv"
    return tables


def claims_settings(config: dict) -> dict:
    """What the checklist knows of the grid besides its tables: each run's tasks and kind, the base runs, the runs
    whose views it reads (the single-task ones), the analysis layer and the config's name."""
    mixes = {**pretraining_mixtures(config), **mixture_families(config)["finetuning.mixes"]}
    runs = main_runs(config)
    return {"tasks": {r.name: mixes[r.mixture] for r in runs}, "kind": {r.name: r.kind for r in runs},
            "base_runs": [r.name for r in runs if r.kind == "pretraining" and r.mixture == config["training"]["base"]],
            "views": single_task_runs(config), "layer": config["representations"]["analysis_layer"],
            "name": config.get("name", "unnamed")}


# ---- validation: the schema, the checks across keys (worldrep.config), then the grid's --------------------------

def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH, files: list[str | Path] = ()) -> dict:
    """Raise ConfigError listing every problem, or return the config unchanged. `files`: the config files it was
    merged from, named when they are an overlay given without its base."""
    schema = json.loads(Path(schema_path).read_text())
    if overlay_problem(config, schema["required"], list(files)):
        raise ConfigError(overlay_problem(config, schema["required"], list(files), fitting_base(config)))
    problems = schema_problems(config, schema)
    if not problems:
        problems = semantic_problems(config) + model_problems(config) or grid_problems(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


def fitting_base(overlay: dict) -> str | None:
    """The first of config.BASES that `overlay` merges over into a valid config (the refusal's example command)."""
    import yaml

    for base in BASES:
        try:
            validate_config(merged(yaml.safe_load((SCHEMA_PATH.parents[1] / base).read_text()), overlay))
            return base
        except ConfigError:
            continue
    return None


def slurm_resources(config: dict, gpu: bool) -> dict[str, str]:
    """The executor plugin's resources (slurm_partition, slurm_account) for a GPU job or any other job, from the
    config's `slurm` block ({} where it names none)."""
    target = config.get("slurm", {}).get("gpu_jobs" if gpu else "cpu_jobs", {})
    return {f"slurm_{key}": value for key, value in sorted(target.items())}


def load_config(paths: list[str | Path]) -> dict:
    """Config files merged in order as Snakemake merges `--configfile a b`, then validated."""
    import yaml

    config = {}
    for path in paths:
        config = merged(config, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(config, files=paths)


def model_problems(config: dict) -> list[str]:
    """The architecture (`model`) and the extracted layers (`representations`) fit together (METHOD §6, §10), and
    so does each variant's (`variants.{name}`: its keys over `model`, its own layers or the default ones)."""
    problems = architecture_problems(config["model"], config["representations"], "model", "representations")
    own = config.get("variants", {})
    for name, block in variant_blocks(config).items():
        # Named as the variant's key even when its layers are inherited: the fix is the variant's own list. Only a
        # scale experiment's variant (Appendix C.4) sets an architecture of its own: named by its size.
        model_key, reps_key = ((f"variants.{name}.model", f"variants.{name}.representations") if name in own else
                               (scale_key(config, name),) * 2)
        problems += architecture_problems({**config["model"], **block["model"]},
                                          block.get("representations", config["representations"]), model_key, reps_key)
    return problems


def scale_key(config: dict, name: str) -> str:
    """`experiments.scale.sizes.{i}` of a scale variant, saying that what it does not set comes from `model`; a noise
    level's variant has `model`'s architecture, so its problems are `model`'s and are reported there."""
    names = [scale_variant(size) for size in experiment(config, "scale").get("sizes", [])]
    if name not in names:
        return f"experiments (variant {name})"
    return f"experiments.scale.sizes.{names.index(name)} (keys it does not set follow model's head width and ratios)"


# ---- the experiments' checks that need the grid's runs (blocks: worldrep.experiments) -------------------------------

def gradients_run(config: dict) -> str:
    """The run whose checkpoints the gradient experiment uses: `run`, else the first seed's run of training.base."""
    base = config["training"]["base"]
    seeds = config["training"]["seeds"].get(seeds_entry(config, base), [])
    return experiment(config, "gradients").get("run") or (run_name(base, seeds[0]) if seeds else f"{base} (no seeds)")


def experiment_problems(config: dict, pretraining_runs: set[str]) -> list[str]:
    """Checks the schema cannot express; every message names its key. `pretraining_runs`: the planned pretraining
    runs' names (each keeps its checkpoints)."""
    problems = []
    own = config.get("variants", {})
    noise, scale = experiment(config, "noise"), experiment(config, "scale")
    levels = noise.get("levels", [])
    odd = [p for p in levels if abs(100 * p - round(100 * p)) > 1e-9]
    if odd:
        problems.append(f"config key 'experiments.noise.levels': {odd} are not whole percentages (each level names "
                        "its variant noise{100p})")
    names = [noise_variant(p) for p in levels] + [scale_variant(s) for s in scale.get("sizes", [])]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice and not odd:
        problems.append(f"config key 'experiments': levels or sizes repeat the variants {twice}")
    taken = sorted(set(names) & set(own))
    if taken:
        problems.append(f"config key 'variants': {taken} are the names of experiment variants; rename them")
    for name in ("noise", "scale"):
        if enabled(config, name) and not single_task_mixtures(config):
            problems.append(f"config key 'experiments.{name}': needs single-task pretraining mixtures (pt1-k)")
    for name in ("noise", "scale"):  # each level or size is compared with the main grid's runs of the same seeds
        block = experiment(config, name)
        missing = sorted({f"{m}_s{seed}" for m in single_task_mixtures(config) for seed in block.get("seeds", [])}
                         - pretraining_runs) if block["enabled"] else []
        if missing:
            problems.append(f"config key 'experiments.{name}.seeds': the main grid has no runs {missing} to compare "
                            "with (training.seeds)")
    problems += gradients_problems(config, pretraining_runs) if enabled(config, "gradients") else []
    if enabled(config, "subspace") and not mixture_families(config)["finetuning.mixes"]:
        problems.append("config key 'experiments.subspace': needs fine-tuning mixes (mixtures.finetuning.mixes)")
    width = 2 * config["model"]["hidden_size"]  # a §10 vector: two positions of the residual stream
    if enabled(config, "subspace") and experiment(config, "subspace")["components"] >= width:
        problems.append(f"config key 'experiments.subspace.components': {experiment(config, 'subspace')['components']} "
                        f"principal components of {width}-wide representations leave no room outside them")
    noisy = [t for m in single_task_mixtures(config) for t in mixture_families(config)["pretraining"][m]
             if config["tasks"][t].get("label_noise")]
    if enabled(config, "noise") and noisy:  # its clean condition would not be clean
        problems.append(f"config key 'tasks.{noisy[0]}.label_noise': experiments.noise compares with the main grid's "
                        "runs as the clean condition; set it to 0 while the experiment is on")
    return problems


def gradients_problems(config: dict, pretraining_runs: set[str]) -> list[str]:
    """The run is planned and saves enough checkpoints; a batch fits in a train split; there are tasks to pair."""
    block, run, key = experiment(config, "gradients"), gradients_run(config), "config key 'experiments.gradients"
    problems = []
    if len(configured_tasks(config)) < 2:
        problems.append(f"{key}': needs at least two configured tasks to pair")
    if block["batch_size"] > config["datasets"]["pretraining"]["n_train"]:
        problems.append(f"{key}.batch_size': {block['batch_size']} items per batch, but a task's train split has "
                        f"{config['datasets']['pretraining']['n_train']} (datasets.pretraining.n_train)")
    if run not in pretraining_runs:
        return problems + [f"{key}.run': {run!r} is not a planned pretraining run (its checkpoints are the ones used)"]
    mixture = RUN_NAME.match(run)["mixture"]
    if mixture not in mixture_families(config)["pretraining"]:  # the batches come from the pretraining sets
        return problems + [f"{key}.run': {run!r} trained on the with-Atlantis sets, not the pretraining sets whose "
                           "batches the gradients are taken on"]
    epochs, per_epoch = step_counts(config, mixture)
    saved = checkpoint_count(epochs * per_epoch, recipe_settings(config, mixture)["checkpoint_fraction"])
    if block["checkpoints"] > saved:
        problems.append(f"{key}.checkpoints': {block['checkpoints']} asked, but {run} saves {saved} "
                        "(training.checkpoint_fraction)")
    return problems
