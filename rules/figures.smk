# The paper's figures (METHOD §13), each by its own rule from the analysis tables: PNG + PDF + the plotted
# values as CSV under results/figures/. Every PNG is registered for `snakemake --report` with a caption.

rule figure_world_map:
    """§13.1: every city by region, Atlantis circled."""
    input:
        cities="results/world/cities.csv",
        code=FIGURE_CODE,
    output:
        figure_output("world_map", "world_map", "1. World"),
    log:
        "results/logs/figures/world_map.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule figure_cka_matrix:
    """§13.3–4: a family's layer-5 CKA matrix (mean over seed pairs), biased or debiased."""
    input:
        matrix="results/cka/{family}/matrix.csv",
        code=FIGURE_CODE,
    output:
        figure_output("cka_{family}_{estimator}", "cka_matrix", "2. Representations", "CKA matrices"),
    wildcard_constraints:
        family=one_of(CKA_FAMILIES),
        estimator="biased|debiased",
    params:
        task_sets=lambda w: {m: PRETRAINING_MIXTURES[m] for m in CKA_FAMILIES[w.family]},
    log:
        "results/logs/figures/cka_{family}_{estimator}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule figure_cka_task_count:
    """§13.5: CKA of task-disjoint models against their number of training tasks, per layer."""
    input:
        values="results/cka/task_count.csv",
        summary="results/cka/task_count_summary.csv",
        code=FIGURE_CODE,
    output:
        figure_output("cka_task_count_{estimator}", "cka_task_count", "2. Representations", "CKA vs tasks"),
    wildcard_constraints:
        estimator="biased|debiased",
    log:
        "results/logs/figures/cka_task_count_{estimator}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule figure_ftwb1_matrix:
    """§13.7: the FTWB1 generalization matrix (seed-mean NI)."""
    input:
        ftwb1="results/generalization/ftwb1_matrix.csv",
        code=FIGURE_CODE,
    output:
        figure_output("ftwb1_matrix", "ftwb1_matrix", "3. Fine-tuning"),
    log:
        "results/logs/figures/ftwb1_matrix.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule figure_cka_vs_generalization:
    """§13.8: single-task CKA against FTWB1 generalization, with the Pearson fit."""
    input:
        points="results/cka/cka_vs_generalization.csv",
        fit="results/cka/cka_vs_generalization_fit.csv",
        code=FIGURE_CODE,
    output:
        figure_output("cka_vs_generalization_{estimator}", "cka_vs_generalization", "3. Fine-tuning"),
    wildcard_constraints:
        estimator="biased|debiased",
    log:
        "results/logs/figures/cka_vs_generalization_{estimator}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule figure_deviation_matrix:
    """§13.9: FTWB2 deviation from the best-teacher prediction, distance rows in red."""
    input:
        table="results/generalization/deviation_matrix.csv",
        code=FIGURE_CODE,
    output:
        figure_output("deviation_matrix", "deviation_matrix", "3. Fine-tuning"),
    log:
        "results/logs/figures/deviation_matrix.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule figure_deviation_histogram:
    """§13.10: per-seed deviations, pairs with and without distance."""
    input:
        deviation="results/generalization/best_teacher_deviation.csv",
        code=FIGURE_CODE,
    output:
        figure_output("deviation_histogram", "deviation_histogram", "3. Fine-tuning"),
    params:
        mixes=canonical(FINETUNING_MIXTURES),
    log:
        "results/logs/figures/deviation_histogram.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule figure_atlantis_histogram:
    """§13.11: Atlantis reconstruction errors of the two-task fine-tuned models."""
    input:
        errors="results/probes/atlantis_errors.csv.gz",
        summary="results/probes/atlantis_summary.csv",
        code=FIGURE_CODE,
    output:
        figure_output("atlantis_histogram", "atlantis_histogram", "3. Fine-tuning"),
    log:
        "results/logs/figures/atlantis_histogram.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"
