# Names and paths shared by the rules. Output patterns themselves live in each rule's `output:`.
import re
import sys
from pathlib import Path

from worldrep import entry, grid, recipes, store
from worldrep.config import mixture_families
from worldrep.datasets import SPLITS, VARIANTS, dataset_base
from worldrep.tasks import TASK_NAMES, prompt_task

# Pinned conda environments for `--sdm conda`, one per kind of job (envs/; same pins as pyproject.toml).
ENV_DATA = "../envs/data.yaml"  # world, tokenizer, datasets, mixtures: no torch
ENV_TRAINING = "../envs/training.yaml"  # training, evaluation, representations: torch + transformers
# probes, CKA, generalization, tables: numpy, pandas, scipy; and torch, as representation files are read
# through worldrep.representations, which imports it
ENV_ANALYSIS = "../envs/analysis.yaml"
ENV_PLOTTING = "../envs/plotting.yaml"  # figures: matplotlib
CONFIGURED_TASKS = grid.configured_tasks(config)  # canonical order (METHOD §0)
FAMILIES = mixture_families(config)
PRETRAINING_MIXTURES = {**FAMILIES["pretraining"], **FAMILIES["with_atlantis"]}
FINETUNING_MIXTURES = FAMILIES["finetuning.mixes"]


def one_of(names):
    """A wildcard constraint matching exactly these names (and nothing, if there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


# Dataset variants: the three generated ones, and the label-noise copies some runs train on (METHOD Appendix C.2).
DATASET_VARIANTS = sorted(set(VARIANTS) | {v for v, _ in grid.dataset_pairs(config)})
# Label-noise copies of mixtures: name -> (clean mixture, variant).
NOISY_MIXTURES = grid.noisy_mixtures(config)


wildcard_constraints:
    task=one_of(TASK_NAMES),
    variant=one_of(DATASET_VARIANTS),
    split=one_of(SPLITS),


def dataset_files(variant, task):
    prefix = f"results/datasets/{variant}/{task}"
    return [f"{prefix}/{s}.{ext}" for s in SPLITS for ext in ("txt", "npz")] + [f"{prefix}/metadata.json"]


def mixture_sources(name):
    """The datasets a mixture draws from, in draw order: both this rule's inputs and its `sources` param."""
    return grid.mixture_sources(config, name)


def mixture_input(wildcards):
    sources = mixture_sources(wildcards.mixture)
    return sorted({f for s in sources for f in dataset_files(s.variant, s.task)})


def dataset_targets():
    """Every dataset the workflow builds (`grid.dataset_pairs`)."""
    return [f"results/datasets/{v}/{t}/metadata.json" for v, t in sorted(grid.dataset_pairs(config))]


def mixture_targets():
    return [f"results/mixtures/{m}/metadata.json" for m in grid.all_mixtures(config)]


def mixtures_of_kind(mixtures):
    """These mixtures and their label-noise copies: the names one mixture rule composes."""
    return [*mixtures, *(name for name, (clean, _) in NOISY_MIXTURES.items() if clean in mixtures)]


# ---- training and evaluation -----------------------------------------------------------------------------
from worldrep.grid import (MAP_ITEMS_PER_CITY, evaluation_sets, model_settings, representation_settings, run_name,
                           short_runs, training_runs)
from worldrep.recipes import canonical
from worldrep.world import real_city_count

# Every run: the main grid's, then each enabled architecture variant's (`variants`, METHOD App. B). A variant's runs are
# trained, evaluated, extracted and probed like the main grid's, but analysed apart (rules/variants.smk): RUNS and
# everything derived from it below are the main grid only.
ALL_RUNS = training_runs(config)
RUNS = [r for r in ALL_RUNS if r.variant is None]
VARIANT_RUNS = {v: [r for r in ALL_RUNS if r.variant == v] for v in dict.fromkeys(r.variant for r in ALL_RUNS) if v}
# Recipes (worldrep.recipes): what shapes each artifact, from the config and the code only. A run's recipe hash names its
# store entry; the training jobs are the stacks with a missing entry, each listing only those (worldrep.store).
RECIPES = recipes.Recipes(config, Path(workflow.basedir))
RUN_HASH = RECIPES.run_hashes()
# (run, product) -> recipe hash of what a stack job computes from the run's weights: evaluation, representations
PRODUCT_HASH = RECIPES.product_hashes()
TRAINING_JOBS = store.training_jobs(config, RUN_HASH, Path("results"), PRODUCT_HASH)
# Run names without their seed, `{mixture}` in per-run patterns `{mixture}_s{seed}` (a variant's: `pt1-1-wide`).
RUN_PREFIXES = {kind: sorted({r.name.rsplit("_s", 1)[0] for r in ALL_RUNS if r.kind == kind})
                for kind in ("pretraining", "finetuning")}
PRETRAINING_RUNS = [r for r in RUNS if r.kind == "pretraining"]
FINETUNING_RUNS = [r for r in RUNS if r.kind == "finetuning"]
TOKENIZER_FILES = ["results/tokenizer/tokenizer.json", "results/tokenizer/tokenizer_config.json"]


wildcard_constraints:
    seed=r"\d+",


def model_dir(mixture, seed, variant=None):
    return f"results/models/{run_name(mixture, seed, variant)}"


# The store's entries and what a stack job or a publishing job reads (rules/training.smk).
def store_marker(run_name):
    return str(entry.marker_path(Path("results"), RUN_HASH[run_name]))


def product_marker(run_name, product):
    return str(entry.marker_path(Path("results"), PRODUCT_HASH[(run_name, product)]))


def base_final(run):
    """A fine-tuning run's starting point: the same-seed published final model of `training.base` (§7.1)."""
    base = recipes.base_run(config, run)
    return f"results/models/{base.name}/final" if base else None


def mixture_splits(run):
    mixture = grid.training_mixture(config, run)
    return {"train": f"results/mixtures/{mixture}/train.npz", "val": f"results/mixtures/{mixture}/val.npz"}


def stack_inputs(stack):
    """Every run's mixture (train and val splits, metadata; a label-noise variant's noisy copy) and, for
    fine-tuning, its same-seed base model."""
    mixtures = dict.fromkeys(grid.training_mixture(config, run) for run in stack.runs)
    files = [f"results/mixtures/{m}/{name}" for m in mixtures for name in ("train.npz", "val.npz", "metadata.json")]
    return files + sorted({base_final(run) for run in stack.runs if run.kind == "finetuning"})


def product_reads(run_name, product):
    return entry.product_reads(product, recipes.product_params(config, RUN_BY_NAME[run_name], product))


def product_inputs(products):
    """What a stack job's missing products read: the test sets of its evaluations, the cities of its extractions."""
    return {"product_files": list(dict.fromkeys(f for run, product in products for f in product_reads(run, product)))}


def product_params(products):
    """Run -> {"hash": its recipe hash, "products": {product: {"hash": the product's recipe hash, **its params}}}."""
    out = {}
    for run, product in products:
        entry = out.setdefault(run, {"hash": RUN_HASH[run], "products": {}})
        entry["products"][product] = {"hash": PRODUCT_HASH[(run, product)],
                                      **recipes.product_params(config, RUN_BY_NAME[run], product)}
    return canonical(out)


def run_of(wildcards):
    """The run of a per-run job (`{mixture}_s{seed}` wildcards; a variant's run is `{mixture}-{variant}_s{seed}`)."""
    return RUN_BY_NAME[f"{wildcards.mixture}_s{wildcards.seed}"]


def run_layers(wildcards):
    """The hidden_states indices extracted from a run: its architecture's (`representations`, or its variant's)."""
    return representation_settings(config, run_of(wildcards).variant)["layers"]


def run_prompt_task(run):
    """The task whose partial prompt a run's representations are read at (§10)."""
    return grid.run_prompt_task(config, run)


def run_analysis_layer(wildcards):
    return representation_settings(config, run_of(wildcards).variant)["analysis_layer"]


def test_set_files(mixture):
    return [f"results/datasets/{v}/{t}/test.npz" for v, t in evaluation_sets(config, mixture)]


def model_targets():
    return [f"results/models/{r.name}/final" for r in ALL_RUNS]


def evaluation_targets():
    targets = [f"results/evaluation/{r.name}/metrics.csv" for r in ALL_RUNS]
    if RUNS:
        targets += ["results/evaluation/metrics.csv", "results/evaluation/trivial_baselines.csv"]
    return targets + [f"results/evaluation/{name}/checkpoints.csv" for name in config["evaluation"]["checkpoint_runs"]]


# ---- analysis ----------------------------------------------------------------------------------------------
# The CKA families of METHOD §12: pretraining mixtures named pt1-k, pt2-k, pt3-k (variant k, in config order).
CKA_FAMILIES = grid.cka_families(config)


def family_runs(family):
    return grid.family_runs(config, family)


CURVE_RUNS = grid.curve_runs(config)
ATLANTIS_RUNS = grid.atlantis_runs(config)
CONTROL_RUNS = grid.control_runs(config)
SINGLE_TASK_RUNS = grid.single_task_runs(config)
RUN_BY_NAME = {r.name: r for r in ALL_RUNS}


def mixture_tasks(mixture):
    return PRETRAINING_MIXTURES.get(mixture) or FINETUNING_MIXTURES[mixture]


def analysis_targets():
    targets = [f"results/probes/{r.name}.csv" for r in ALL_RUNS]
    if RUNS:
        targets.append("results/probes/probe_metrics.csv")
    if PRETRAINING_RUNS:
        targets.append("results/evaluation/health_report.csv")
    if ATLANTIS_RUNS:
        targets.append("results/probes/atlantis_summary.csv")
    targets += [f"results/cka/{family}/matrix.csv" for family in CKA_FAMILIES]
    if CKA_FAMILIES:
        targets.append("results/cka/task_count_summary.csv")
    if FINETUNING_RUNS:
        targets.append("results/generalization/deviation_matrix.csv")
    if FINETUNING_RUNS and "pt1" in CKA_FAMILIES:
        targets.append("results/cka/cka_vs_generalization_fit.csv")
    return targets


# ---- figures -------------------------------------------------------------------------------------------------
from snakemake.io import report as report_item  # `report` alone is a Snakefile keyword
from worldrep.generalization import pair_label


def figure_output(name, caption, category, subcategory=None):
    return [
        report_item(f"results/figures/{name}.png", caption=f"captions/{caption}.rst", category=category,
                    subcategory=subcategory),
        f"results/figures/{name}.pdf",
        f"results/figures/{name}.csv",
    ]


def table_output(name, caption, category, subcategory=None):
    """A key table, listed in the report with its caption (Snakemake 9's report offers it as a download)."""
    return report_item(f"results/{name}.csv", caption=f"captions/{caption}.rst", category=category,
                       subcategory=subcategory)


ANALYSIS_LAYER = config["representations"]["analysis_layer"]  # the paper's layer 5 by default (§10–13)
FIGURE_SEED = 42  # §13: single-model figures use seed 42 (a config without it falls back to the mixture's first seed)


def figure_run(mixture):
    """The run a single-model figure shows for `mixture`, or None when the config plans none."""
    runs = [r for r in RUNS if r.mixture == mixture]
    chosen = [r for r in runs if r.seed == FIGURE_SEED] or runs[:1]
    return chosen[0].name if chosen else None


def view_file(run):
    return f"results/views/{run}.csv.gz"


SINGLE_TASK_MIXTURE = {PRETRAINING_MIXTURES[m][0]: m for m in CKA_FAMILIES.get("pt1", [])}


def single_task_runs(tasks):
    """Figure runs of the single-task models of `tasks` that the config has, in the order given."""
    return [run for t in tasks if (run := figure_run(SINGLE_TASK_MIXTURE.get(t))) is not None]


def run_labels(runs):
    """Run -> its task-set label ("D", "D,T", ...) for panel titles."""
    return {run: pair_label(mixture_tasks(RUN_BY_NAME[run].mixture)) for run in runs}


# §13.2 panel choices: the main views, the two-task panels (with their single-task insets), the dynamics rows.
VIEW_RUNS = single_task_runs(["distance", "angle", "compass", "inside"])
TWO_TASK_RUNS = [run for m in ("pt2-1", "pt2-3") if m in PRETRAINING_MIXTURES and (run := figure_run(m))]
TWO_TASK_INSETS = {run: single_task_runs(mixture_tasks(RUN_BY_NAME[run].mixture)) for run in TWO_TASK_RUNS}
DYNAMICS_RUNS = [run for run in single_task_runs(["distance", "angle", "compass"]) if run in CURVE_RUNS]
GALLERY_RUNS = [r.name for r in PRETRAINING_RUNS
                if r.mixture in CKA_FAMILIES.get("pt1", []) and PRETRAINING_MIXTURES[r.mixture] != ["crossing"]]
MODEL_VIEW_RUNS = [run for m in ("pt7", "pt7-atl") if m in PRETRAINING_MIXTURES and (run := figure_run(m))]
CURVE_FIGURE_RUNS = [run for run in single_task_runs(TASK_NAMES) if run in CURVE_RUNS]
# §13.12: a well-integrated (A,Co) and an ill-integrated (D,P) two-task fine-tuned model.
PREDICTION_RUNS = [run for m in ("ftwb2-2", "ftwb2-13") if (run := figure_run(m)) in ATLANTIS_RUNS]


def figure_targets():
    """The §13 figures this config has the runs for (PNG; the PDF and CSV come with each)."""
    estimators = ("biased", "debiased")
    # The paper's estimator and the debiased one get the paper's figures; every estimator of the tables (calibrated
    # CKA and mutual k-NN too) is drawn side by side in the *_estimators figures.
    names = ["world_map"] + [f"cka_{f}_{e}" for f in CKA_FAMILIES for e in (*estimators, "estimators")]
    if CKA_FAMILIES:
        names += [f"cka_task_count_{e}" for e in (*estimators, "estimators")]
    if FINETUNING_RUNS:
        names += ["ftwb1_matrix", "deviation_matrix", "deviation_histogram"]
    if FINETUNING_RUNS and "pt1" in CKA_FAMILIES:
        names += [f"cka_vs_generalization_{e}" for e in (*estimators, "estimators")]
    if ATLANTIS_RUNS:
        names.append("atlantis_histogram")
    names += ["representation_views"] * bool(VIEW_RUNS) + ["two_task_views"] * bool(TWO_TASK_RUNS)
    names += ["pca_gallery"] * bool(GALLERY_RUNS) + ["dynamics_views"] * bool(DYNAMICS_RUNS)
    names += [f"views_{run}" for run in MODEL_VIEW_RUNS] + [f"training_curves_{run}" for run in CURVE_FIGURE_RUNS]
    names += [f"checkpoint_metrics_{run}" for run in config["evaluation"]["checkpoint_runs"]]
    names += ["atlantis_predictions"] * bool(PREDICTION_RUNS)
    return [f"results/figures/{name}.png" for name in names]


# ---- architecture variants (METHOD Appendix B; rules/variants.smk) ---------------------------------------------
VARIANT_FOLDER = "results/variants/{variant}"
VARIANT_CATEGORY = "7. Other architectures"


def variant_runs(variant, kind=None):
    return [r for r in VARIANT_RUNS[variant] if kind is None or r.kind == kind]


def variant_mixes(variant):
    """The variant's fine-tuning mixes: name -> tasks."""
    return {m: FINETUNING_MIXTURES[m] for m in dict.fromkeys(r.mixture for r in variant_runs(variant, "finetuning"))}


def variant_atlantis_runs(variant):
    return [r.name for r in variant_runs(variant, "finetuning") if len(FINETUNING_MIXTURES[r.mixture]) == 2]


def variant_cka_pairs(variant):
    """(variant run, main-grid run) of the same mixture and seed, for every variant pretraining run that has one."""
    return [(r.name, run_name(r.mixture, r.seed)) for r in variant_runs(variant, "pretraining")
            if run_name(r.mixture, r.seed) in RUN_BY_NAME]


def variant_layer(wildcards):
    return representation_settings(config, wildcards.variant)["analysis_layer"]


def variant_table_params(wildcards):
    return [{"run": r.name, "mixture": r.mixture, "kind": r.kind, "seed": r.seed} for r in variant_runs(wildcards.variant)]


def variant_figure_output(name, caption):
    """A variant's figure: PNG (in the report, section 7, one subcategory per variant), PDF and plotted values."""
    return [
        report_item(f"{VARIANT_FOLDER}/figures/{name}.png", caption=f"captions/{caption}.rst",
                    category=VARIANT_CATEGORY, subcategory="{variant}"),
        f"{VARIANT_FOLDER}/figures/{name}.pdf",
        f"{VARIANT_FOLDER}/figures/{name}.csv",
    ]


def variant_targets():
    """What each enabled variant's runs support: tables always; generalization and its figures with fine-tuning
    runs; the Atlantis reconstruction with two-task mixes; CKA with main-grid counterparts."""
    targets = []
    for variant in VARIANT_RUNS:
        folder = VARIANT_FOLDER.format(variant=variant)
        targets += [f"{folder}/evaluation/metrics.csv", f"{folder}/probes/probe_metrics.csv"]
        if variant_mixes(variant):
            targets += [f"{folder}/generalization/deviation_matrix.csv", f"{folder}/figures/ftwb1_matrix.png",
                        f"{folder}/figures/ftwb2_matrix.png", f"{folder}/figures/deviation_matrix.png"]
        if variant_atlantis_runs(variant):
            targets += [f"{folder}/probes/atlantis_summary.csv", f"{folder}/figures/atlantis_histogram.png"]
        if variant_cka_pairs(variant):
            targets.append(f"{folder}/cka_vs_default.csv")
    return targets


# ---- planning and the claims checklist ---------------------------------------------------------------------

def warn_short_runs():
    """Planning warns (never stops: smoke and CI runs are short on purpose) about every pretraining mixture
    short of the items per city at which a map appears (docs/METHOD.md §7.4), whose runs will have no map."""
    n_real = real_city_count(config["world"]["min_population"])
    for mixture, per_city in short_runs(config, n_real).items():
        seen = ", ".join(f"{task} {value:,.0f}" if value >= 10 else f"{task} {value:.2g}"
                         for task, value in per_city.items())
        print(f"warning: runs of {mixture} see {seen} items per real city ({n_real:,} cities), below the "
              f"{MAP_ITEMS_PER_CITY:,} at which a map appears (docs/METHOD.md §7.4)", file=sys.stderr)


warn_short_runs()


def claims_input(wildcards):
    """The analysis tables the checklist reads (grid.claims_tables): only those this config plans."""
    return {key: f"results/{path}" for key, path in grid.claims_tables(config).items()}


# ---- the open questions as experiments (METHOD Appendix C; rules/subspace.smk, noise.smk, gradients.smk, scale.smk)
from worldrep import experiments

EXPERIMENT_CATEGORY = "8. Open questions"


def experiment_table(path, caption, subcategory):
    """An experiment's table, in the report's section 8."""
    return report_item(path, caption=f"captions/{caption}.rst", category=EXPERIMENT_CATEGORY, subcategory=subcategory)


def experiment_figure_output(experiment, name, caption, subcategory):
    """An experiment's figure: PNG (in the report, section 8), PDF and plotted values under results/experiments/."""
    folder = f"results/experiments/{experiment}/figures"
    return [report_item(f"{folder}/{name}.png", caption=f"captions/{caption}.rst", category=EXPERIMENT_CATEGORY,
                        subcategory=subcategory),
            f"{folder}/{name}.pdf", f"{folder}/{name}.csv"]


# Label noise and model size (METHOD Appendix C.2, C.4; rules/noise.smk, rules/scale.smk): the single-task family
# compared across conditions, label noise levels or model sizes, each a variant of worldrep/experiments.py, against
# the main grid's runs of its seeds.
from worldrep.plan import model_parameters

NOISE_CATEGORY = "2. Label noise"
SCALE_CATEGORY = "4. Model size"


def condition_group(variant, seeds, columns):
    """The single-task runs of one condition: the main grid's (variant None) or a variant's, mixture-major."""
    mixtures = experiments.single_task_mixtures(config)
    runs = {run_name(m, s, variant): m for m in mixtures for s in seeds}
    return {"runs": list(runs), "mixtures": runs, "seeds": {m: list(seeds) for m in mixtures},
            "layer": representation_settings(config, variant)["analysis_layer"], "columns": columns}


def noise_groups():
    """Clean (p = 0: the main grid's runs), then each level, in config order."""
    block = experiments.experiment(config, "noise")
    groups = {"clean": condition_group(None, block["seeds"], {"level": 0.0, "variant": "clean"})}
    for level in block["levels"]:
        name = experiments.noise_variant(level)
        groups[name] = condition_group(name, block["seeds"], {"level": level, "variant": name})
    return groups


def group_runs(groups):
    return [run for group in groups.values() for run in group["runs"]]


def noise_targets():
    if not experiments.enabled(config, "noise"):
        return []
    return ["results/experiments/noise/summary.csv", "results/experiments/noise/figures/noise_summary.png"]


def scale_groups():
    """The main model's runs at the experiment's seeds and each size's, by parameter count."""
    block = experiments.experiment(config, "scale")

    def columns(variant):
        model = model_settings(config, variant)
        return {"variant": variant or "model", "hidden_size": model["hidden_size"],
                "num_hidden_layers": model["num_hidden_layers"], "parameters": model_parameters(model)}

    groups = {"model": condition_group(None, block["seeds"], columns(None))}
    for size in block["sizes"]:
        name = experiments.scale_variant(size)
        groups[name] = condition_group(name, block["seeds"], columns(name))
    return dict(sorted(groups.items(), key=lambda item: item[1]["columns"]["parameters"]))  # smallest first


def scale_targets():
    if not experiments.enabled(config, "scale"):
        return []
    return ["results/experiments/scale/summary.csv", "results/experiments/scale/figures/scale_summary.png"]


# Update subspaces (App. C.1; rules/subspace.smk): every fine-tuned model of the main grid against its same-seed base.
SUBSPACE_RUNS = FINETUNING_RUNS if experiments.enabled(config, "subspace") else []
SUBSPACE_FOLDER = "results/experiments/subspace"
SUBSPACE_CATEGORY = "1. Fine-tuning subspace"


# Per fine-tuned run: its same-seed base run, and the base's file at the run's prompt task. A base is extracted
# once per prompt task its fine-tuned models use (the FTWB1 models of one seed use 7 prompts, every FTWB2 distance).
SUBSPACE_BASE = {r.name: run_name(config["training"]["base"], r.seed) for r in SUBSPACE_RUNS}
SUBSPACE_BASE_FILE = {r.name: f"{SUBSPACE_FOLDER}/representations/{SUBSPACE_BASE[r.name]}/{run_prompt_task(r)}.npz"
                      for r in SUBSPACE_RUNS}


def subspace_targets():
    if not SUBSPACE_RUNS:
        return []
    return [f"{SUBSPACE_FOLDER}/{name}.csv" for name in ("fractions", "summary", "correlation")] + \
        [f"{SUBSPACE_FOLDER}/figures/{name}.png" for name in ("subspace_fraction", "subspace_vs_error")]


# Gradient similarity (Appendix C.3; rules/gradients.smk): one pretraining run's first checkpoints.
GRADIENTS = experiments.experiment(config, "gradients")
GRADIENTS_RUN = grid.gradients_run(config)  # `run`, else the first seed's run of training.base
GRADIENTS_FOLDER = "results/experiments/gradients"
GRADIENTS_CATEGORY = "3. Gradient similarity"
# What the similarity is compared with, per scatter figure: its targets (the `target` values of `correlation.csv`)
# and their axis labels; a comparison is planned only with its input (the pt1 CKA family; FTWB1 runs).
GRADIENT_COMPARISONS = {}
if "pt1" in CKA_FAMILIES:
    GRADIENT_COMPARISONS["cka"] = {f"cka_{e}": f"layer-{ANALYSIS_LAYER} single-task CKA ({e})"
                                   for e in ("biased", "debiased")}
if any(len(FINETUNING_MIXTURES[r.mixture]) == 1 for r in FINETUNING_RUNS):
    GRADIENT_COMPARISONS["ftwb1"] = {"ftwb1": "FTWB1 NI on Y after fine-tuning on X"}
# The table each comparison correlates with, under the input name scripts/gradient_correlation.py looks up.
GRADIENT_TARGET_TABLES = {"cka": "results/cka/pt1/matrix.csv", "ftwb1": "results/generalization/ftwb1_matrix.csv"}


def gradients_targets():
    if not GRADIENTS["enabled"]:
        return []
    targets = [f"{GRADIENTS_FOLDER}/similarity.csv", f"{GRADIENTS_FOLDER}/figures/similarity.png"]
    targets += [f"{GRADIENTS_FOLDER}/correlation.csv"] if GRADIENT_COMPARISONS else []
    return targets + [f"{GRADIENTS_FOLDER}/figures/vs_{name}.png" for name in GRADIENT_COMPARISONS]
