# Greedy evaluation (METHOD §8): one tidy table per model, one combined table, and the checkpoint curves.


rule evaluate:
    """A model's final checkpoint on its test sets (§8): every metric with its failure count, plus every
    item's generation and score. Computed by the run's stack job (rules/training.smk), published here."""
    input:
        entry=lambda w: product_marker(run_of(w).name, "evaluation"),
        checked=lambda w: product_reads(run_of(w).name, "evaluation"),
    output:
        metrics="results/evaluation/{mixture}_s{seed}/metrics.csv",
        predictions="results/evaluation/{mixture}_s{seed}/predictions.csv.gz",
    params:
        recipe=lambda w: PRODUCT_HASH[(run_of(w).name, "evaluation")],
    log:
        "results/logs/evaluation/{mixture}_s{seed}.log",
    conda:
        ENV_DATA
    script:
        "../scripts/model.py"


rule evaluate_checkpoints:
    """Every saved checkpoint of a pretraining run on the standard test sets (§8, the training curves), computed by
    the run's stack job."""
    input:
        entry=lambda w: product_marker(run_of(w).name, "checkpoint_evaluation"),
        checked=lambda w: product_reads(run_of(w).name, "checkpoint_evaluation"),
    output:
        metrics="results/evaluation/{mixture}_s{seed}/checkpoints.csv",
    params:
        recipe=lambda w: PRODUCT_HASH[(run_of(w).name, "checkpoint_evaluation")],
    log:
        "results/logs/evaluation/{mixture}_s{seed}.checkpoints.log",
    conda:
        ENV_DATA
    script:
        "../scripts/model.py"


rule evaluation_table:
    """All models' metrics in one table, with the run's mixture, kind and seed as columns."""
    input:
        metrics=lambda w: [f"results/evaluation/{r.name}/metrics.csv" for r in RUNS],
    output:
        table_output("evaluation/metrics", "evaluation_metrics", "6. Run health"),
    params:
        runs=[{"run": r.name, "mixture": r.mixture, "kind": r.kind, "seed": r.seed} for r in RUNS],
    log:
        "results/logs/evaluation/metrics.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/run_table.py"


rule trivial_baselines:
    """The metric of answering every test item with the training set's majority class or median answer
    (§14): the floor a healthy run must beat."""
    input:
        train=lambda w: [f"results/datasets/pretraining/{t}/train.npz" for t in CONFIGURED_TASKS],
        test_sets=lambda w: [f"results/datasets/{v}/{t}/test.npz" for v in ("pretraining", "atlantis_required")
                             for t in CONFIGURED_TASKS],
    output:
        "results/evaluation/trivial_baselines.csv",
    log:
        "results/logs/evaluation/trivial_baselines.log",
    conda:
        ENV_TRAINING
    script:
        "../scripts/trivial_baselines.py"


rule health_report:
    """§14: each pretraining run's final metrics against the trivial predictor, with its final layer-5 probe
    R² (informational, not a gate)."""
    input:
        metrics="results/evaluation/metrics.csv",
        baselines="results/evaluation/trivial_baselines.csv",
        probes="results/probes/probe_metrics.csv",
    output:
        table_output("evaluation/health_report", "health_report", "6. Run health"),
    params:
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/evaluation/health_report.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/health_report.py"
