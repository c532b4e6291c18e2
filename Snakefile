# worldrep: "Convergent World Representations and Divergent Tasks" (arXiv 2602.00533), end to end.
# The pipeline reads off rules/: world -> tokenizer, datasets -> mixtures -> training -> evaluation
# -> representations -> probes, CKA, generalization -> figures, claims checklist.
# Method: docs/METHOD.md (the source of truth for formats, formulas, hyperparameters and the grid).
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The rules import the `worldrep` package of this workflow copy (jobs do the same via scripts/_workflow.py),
# never another installed one, so that a code edit here is what runs and what each rule's code hash covers.
sys.path.insert(0, workflow.basedir)

from worldrep.grid import slurm_resources, validate_config


# The paper grid unless the user names config files. Snakemake would deep-merge a `--configfile` into this
# default, so a smaller config's mixture tables would keep the paper's entries: load the default only alone.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


# Named files, so that an overlay given alone is refused with the base-plus-overlay command.
validate_config(config, files=workflow.config_settings.configfiles)


report: "rules/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/world.smk"
include: "rules/tokenizer.smk"
include: "rules/datasets.smk"
include: "rules/mixtures.smk"
include: "rules/training.smk"
include: "rules/evaluation.smk"
include: "rules/representations.smk"
include: "rules/probes.smk"
include: "rules/cka.smk"
include: "rules/generalization.smk"
include: "rules/figures.smk"
include: "rules/claims.smk"
include: "rules/variants.smk"
# The paper's open questions as experiments (docs/METHOD.md Appendix C), each off unless `experiments.{name}.enabled`.
include: "rules/subspace.smk"
include: "rules/noise.smk"
include: "rules/gradients.smk"
include: "rules/scale.smk"


# Every rule's code identity (worldrep.codehash): the hash of its script's import closure, normalised so that comments
# and docstrings do not count, passed as a param. A job reruns when code it runs changes, and never for a comment, a
# checkout or a `touch`; the rerun triggers (profiles/default) leave out the mtime of code. Set here, once for all
# rules, so that no rule can forget it; a rule whose script loads more by name (a dataset: its task) sets its own.
for _rule in workflow.rules:
    if _rule.script and "code" not in _rule.params.keys():
        _rule.set_params(code=RECIPES.code(f"scripts/{Path(_rule.script).name}"))


# Before the first job of a local run, the plan (worldrep/plan.py, also `python -m worldrep.plan`): runs, steps,
# disk and projected time here; it stops a run that would take more than a day on a CPU, or that the disk cannot
# hold. Snakemake calls onstart only when jobs are to run: never in a dry run, --report or --lint, nor inside a
# cluster job (they get --no-hooks). A cluster executor or --touch only hears the plan.
onstart:
    from snakemake.exceptions import WorkflowError

    from worldrep.plan import report, visible_gpus

    try:
        to_train = {job.rule.name for job in workflow.dag.needrun_jobs()}
    except AttributeError:  # a Snakemake whose DAG says otherwise: count the stacks with a missing store entry
        to_train = None
    local = workflow.local_exec and not workflow.touch
    # A cluster executor runs without --cores (workflow.cores would raise): project for this machine's cores.
    cores = workflow.resource_settings.cores or os.cpu_count() or 1
    text, reason = report(config, Path("results"), cores, visible_gpus() if local else 0, to_train)
    print(text if local else f"{text}\n  (jobs go to {'--touch' if workflow.touch else 'a cluster executor'}: "
          "the projection is for this machine, and nothing stops)", file=sys.stderr)
    if reason and local:
        raise WorkflowError(reason)


# Run by Snakemake itself, never submitted to a cluster (profiles/slurm): each takes seconds on small tables
# or arrays, less than a job's wait in a queue. Datasets, mixtures, training, evaluation, representations and
# probes are the cluster's (tests/test_slurm.py checks which rules were submitted).
localrules:
    all, world, tokenizer, pretrained_model, finetuned_model,
    evaluate, evaluate_checkpoints, representations, checkpoint_representations,
    evaluation_table, trivial_baselines, health_report, probe_table, generalization,
    cka_family, cka_task_count, cka_vs_generalization, claims,
    figure_world_map, figure_representation_views, figure_two_task_views, figure_model_views,
    figure_pca_gallery, figure_dynamics_views, figure_cka_matrix, figure_cka_estimators, figure_cka_task_count,
    figure_cka_task_count_estimators, figure_training_curves, figure_checkpoint_metrics, figure_ftwb1_matrix,
    figure_cka_vs_generalization, figure_cka_vs_generalization_estimators,
    figure_deviation_matrix, figure_deviation_histogram, figure_atlantis_histogram, figure_atlantis_predictions,
    variant_evaluation_table, variant_probe_table, variant_generalization, variant_cka, variant_figure_ftwb1_matrix,
    variant_figure_ftwb2_matrix, variant_figure_deviation_matrix, variant_figure_atlantis_histogram,


rule all:
    input:
        "results/world/cities.csv",
        "results/tokenizer/tokenizer.json",
        dataset_targets(),
        mixture_targets(),
        model_targets(),
        evaluation_targets(),
        analysis_targets(),
        figure_targets(),
        variant_targets(),
        subspace_targets(),
        noise_targets(),
        gradients_targets(),
        scale_targets(),
        ["results/claims.csv"] if RUNS else [],
    default_target: True


# Under SLURM, the `slurm` block of the config sends the GPU jobs (the rules that ask for `gpu`: the generated stack
# rules) and every other job to their own partition and account (worldrep.grid.slurm_resources). It wins over
# --default-resources; local jobs ignore it; resources are never a reason to rerun. Last in this file, so that
# every rule is defined.
for _rule in workflow.rules:
    _rule.resources.update(slurm_resources(config, gpu="gpu" in _rule.resources))
