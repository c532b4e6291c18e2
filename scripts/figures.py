"""Snakemake adapter: every rule figure_* -> results/figures/{name}.png, .pdf and .csv (the plotted values); every
rule variant_figure_* -> results/variants/{variant}/figures/{name}.png, ... likewise.

Reads tables and draws (worldrep/figures.py); computes nothing."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys

import pandas as pd

from worldrep import figures
from worldrep.world import read_cities

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
inp, w, p = snakemake.input, snakemake.wildcards, snakemake.params


def views(keys=None):
    """The rule's view tables in input order, keyed by run (or by the `keys` given, in the same order)."""
    return dict(zip(keys or p.runs, map(pd.read_csv, inp.views)))


def final_r2():
    """run -> (R² x, R² y) of its final probe at the analysis layer, from the rule's per-run probe tables."""
    r2 = {}
    for run, path in zip(p.runs, inp.probes):
        table = pd.read_csv(path)
        row = table[(table["step"].astype(str) == "final") & (table["layer"] == p.layer)].iloc[0]
        r2[run] = (row["r2_x"], row["r2_y"])
    return r2


DRAW = {
    "figure_world_map": lambda: figures.world_map(read_cities(inp.cities)),
    "figure_cka_matrix": lambda: figures.cka_matrix(
        pd.read_csv(inp.matrix), p.layer, w.estimator, labels=figures.mixture_labels(p.task_sets),
        task_sets=p.task_sets if w.family != "pt1" else None, with_sem=True),
    "figure_cka_estimators": lambda: figures.cka_estimators(
        pd.read_csv(inp.matrix), p.layer, labels=figures.mixture_labels(p.task_sets),
        task_sets=p.task_sets if w.family != "pt1" else None),
    "figure_cka_task_count_estimators": lambda: figures.cka_task_count_estimators(
        pd.read_csv(inp.values), pd.read_csv(inp.summary), p.layer),
    "figure_cka_vs_generalization_estimators": lambda: figures.cka_vs_generalization_estimators(
        pd.read_csv(inp.points), pd.read_csv(inp.fit)),
    "figure_cka_task_count": lambda: figures.cka_vs_task_count(
        pd.read_csv(inp.values), pd.read_csv(inp.summary), w.estimator),
    "figure_ftwb1_matrix": lambda: figures.ftwb1_matrix(pd.read_csv(inp.ftwb1)),
    "figure_cka_vs_generalization": lambda: figures.cka_vs_generalization(
        pd.read_csv(inp.points), pd.read_csv(inp.fit), w.estimator),
    "figure_deviation_matrix": lambda: figures.deviation_matrix(pd.read_csv(inp.table)),
    "figure_ftwb2_matrix": lambda: figures.ftwb2_matrix(pd.read_csv(inp.ftwb2)),
    "figure_deviation_histogram": lambda: figures.deviation_histogram(pd.read_csv(inp.deviation), p.mixes),
    "figure_atlantis_histogram": lambda: figures.atlantis_histogram(
        pd.read_csv(inp.errors), pd.read_csv(inp.summary), p.layer),
    "figure_representation_views": lambda: figures.representation_views(views(), p.labels, final_r2(), p.layer),
    "figure_two_task_views": lambda: figures.two_task_views(views(), p.labels, p.insets),
    "figure_pca_gallery": lambda: figures.pca_gallery(views([tuple(k) for k in p.runs]), p.labels),
    "figure_dynamics_views": lambda: figures.dynamics_views(views(), p.labels),
    "figure_model_views": lambda: figures.model_views(pd.read_csv(inp.views[0]), p.label),
    "figure_training_curves": lambda: figures.training_curves(
        pd.read_csv(inp.training_log), pd.read_csv(inp.validation_log), pd.read_csv(inp.probes), p.task,
        f"{w.run}: training", p.layer),
    "figure_checkpoint_metrics": lambda: figures.checkpoint_metrics(pd.read_csv(inp.checkpoints), f"{w.run}: every task"),
    "figure_atlantis_predictions": lambda: figures.atlantis_predictions(pd.read_csv(inp.errors), views(), p.labels),
    "figure_subspace_fraction": lambda: figures.subspace_fraction(pd.read_csv(inp.fractions), pd.read_csv(inp.summary)),
    "figure_subspace_vs_error": lambda: figures.subspace_vs_error(
        pd.read_csv(inp.fractions), pd.read_csv(inp.correlation)),
    # label noise, METHOD Appendix C.2 (rules/noise.smk)
    "figure_noise_summary": lambda: figures.condition_summary(
        pd.read_csv(inp.summary), pd.read_csv(inp.probes), "label noise p of the training answers"),
    "figure_gradient_similarity": lambda: figures.gradient_similarity(pd.read_csv(inp.similarity)),
    "figure_gradient_scatter": lambda: figures.gradient_scatter(
        pd.read_csv(inp.points), pd.read_csv(inp.correlation), p.labels),
    # model size, METHOD Appendix C.4 (rules/scale.smk)
    "figure_scale_summary": lambda: figures.condition_summary(
        pd.read_csv(inp.summary), pd.read_csv(inp.probes), "model size (hidden × blocks, parameters)"),
}
# An architecture variant's figure (rules/variants.smk) is drawn as the main grid's of the same name.
fig, data = DRAW[snakemake.rule.removeprefix("variant_")]()
written = figures.save_figure(fig, snakemake.output[0].removesuffix(".png"), data)
print("\n".join(map(str, written)), file=log)
