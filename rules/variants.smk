# Architecture variants (METHOD App. B): a variant's runs ({mixture}-{variant}_s{seed}, config `variants`) are trained,
# evaluated, extracted and probed by the per-run rules like the main grid's, then analysed apart, under
# results/variants/{variant}/: its evaluation and probe tables, its fine-tuning generalization (FTWB1, FTWB2 and the
# best-teacher deviations), its Atlantis reconstruction, CKA of its models against the main grid's model of the same
# mixture and seed, and its figures, in the report's section "7. Other architectures". Each rule is the main grid's
# rule with the variant's inputs, outputs and params (`use rule ... with:`): one body serves both. What each variant
# gets (`variant_targets`) and the helpers are in rules/common.smk.

use rule evaluation_table as variant_evaluation_table with:
    input:
        metrics=lambda w: [f"results/evaluation/{r.name}/metrics.csv" for r in variant_runs(w.variant)],
    output:
        report_item(f"{VARIANT_FOLDER}/evaluation/metrics.csv", caption="captions/evaluation_metrics.rst",
                    category=VARIANT_CATEGORY, subcategory="{variant}"),
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    params:
        runs=variant_table_params,
    log:
        "results/logs/variants/{variant}/evaluation_table.log",


use rule probe_table as variant_probe_table with:
    input:
        lambda w: [f"results/probes/{r.name}.csv" for r in variant_runs(w.variant)],
    output:
        f"{VARIANT_FOLDER}/probes/probe_metrics.csv",
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    params:
        runs=variant_table_params,
    log:
        "results/logs/variants/{variant}/probe_table.log",


use rule generalization as variant_generalization with:
    input:
        metrics=f"{VARIANT_FOLDER}/evaluation/metrics.csv",
    output:
        ni=f"{VARIANT_FOLDER}/generalization/normalized_improvement.csv",
        ftwb1=f"{VARIANT_FOLDER}/generalization/ftwb1_matrix.csv",
        ftwb2=f"{VARIANT_FOLDER}/generalization/ftwb2_matrix.csv",
        deviation=f"{VARIANT_FOLDER}/generalization/best_teacher_deviation.csv",
        deviation_matrix=f"{VARIANT_FOLDER}/generalization/deviation_matrix.csv",
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    params:
        mixes=lambda w: canonical(variant_mixes(w.variant)),
        base=config["training"]["base"],
    log:
        "results/logs/variants/{variant}/generalization.log",


use rule atlantis_reconstruction as variant_atlantis_reconstruction with:
    input:
        representations=lambda w: [f"results/representations/{name}/final.npz" for name in variant_atlantis_runs(w.variant)],
        controls=[],
        cities="results/world/cities.csv",
    output:
        errors=f"{VARIANT_FOLDER}/probes/atlantis_errors.csv.gz",
        summary=report_item(f"{VARIANT_FOLDER}/probes/atlantis_summary.csv", caption="captions/atlantis_summary.rst",
                            category=VARIANT_CATEGORY, subcategory="{variant}"),
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    params:
        runs=lambda w: variant_atlantis_runs(w.variant),
        includes_distance=lambda w: ["distance" in FINETUNING_MIXTURES[RUN_BY_NAME[n].mixture]
                                     for n in variant_atlantis_runs(w.variant)],
        controls=[],
        seed=config["probes"]["seed"],
        n_train=config["probes"]["atlantis_train"],
        n_baseline=config["probes"]["atlantis_baseline"],
        layer=variant_layer,
    log:
        "results/logs/variants/{variant}/atlantis_reconstruction.log",


rule variant_cka:
    """Each variant pretraining model against the main grid's model of the same mixture and seed: every layer
    against every layer, biased and debiased, on the eligible non-Atlantis cities (widths may differ)."""
    input:
        representations=lambda w: [f"results/representations/{run}/final.npz"
                                   for pair in variant_cka_pairs(w.variant) for run in pair],
        cities="results/world/cities.csv",
    output:
        report_item(f"{VARIANT_FOLDER}/cka_vs_default.csv", caption="captions/variant_cka.rst",
                    category=VARIANT_CATEGORY, subcategory="{variant}"),
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    params:
        pairs=lambda w: [list(pair) for pair in variant_cka_pairs(w.variant)],
    log:
        "results/logs/variants/{variant}/cka.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/cka_variant.py"


use rule figure_ftwb1_matrix as variant_figure_ftwb1_matrix with:
    input:
        ftwb1=f"{VARIANT_FOLDER}/generalization/ftwb1_matrix.csv",
    output:
        variant_figure_output("ftwb1_matrix", "ftwb1_matrix"),
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    log:
        "results/logs/variants/{variant}/figures/ftwb1_matrix.log",


use rule figure_ftwb1_matrix as variant_figure_ftwb2_matrix with:
    input:
        ftwb2=f"{VARIANT_FOLDER}/generalization/ftwb2_matrix.csv",
    output:
        variant_figure_output("ftwb2_matrix", "ftwb2_matrix"),
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    log:
        "results/logs/variants/{variant}/figures/ftwb2_matrix.log",


use rule figure_deviation_matrix as variant_figure_deviation_matrix with:
    input:
        table=f"{VARIANT_FOLDER}/generalization/deviation_matrix.csv",
    output:
        variant_figure_output("deviation_matrix", "deviation_matrix"),
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    log:
        "results/logs/variants/{variant}/figures/deviation_matrix.log",


use rule figure_atlantis_histogram as variant_figure_atlantis_histogram with:
    input:
        errors=f"{VARIANT_FOLDER}/probes/atlantis_errors.csv.gz",
        summary=f"{VARIANT_FOLDER}/probes/atlantis_summary.csv",
    output:
        variant_figure_output("atlantis_histogram", "atlantis_histogram"),
    wildcard_constraints:
        variant=one_of(VARIANT_RUNS),
    params:
        layer=variant_layer,
    log:
        "results/logs/variants/{variant}/figures/atlantis_histogram.log",
