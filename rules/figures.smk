# The paper's figures (METHOD §13), each by its own rule from the analysis tables: PNG + PDF + the plotted
# values as CSV under results/figures/. Every PNG is registered for `snakemake --report` with a caption, in a
# report category per section of the paper: 1. World, 2. Representations, 3. Convergence (CKA),
# 4. Fine-tuning generalization, 5. Atlantis, 6. Run health (the tables of rules/evaluation.smk etc.).

rule figure_world_map:
    """§13.1: every city by region, Atlantis circled."""
    input:
        cities="results/world/cities.csv",
    output:
        figure_output("world_map", "world_map", "1. World"),
    log:
        "results/logs/figures/world_map.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_cka_matrix:
    """§13.3–4: a family's CKA matrix at the analysis layer (5) (mean over seed pairs), biased or debiased."""
    input:
        matrix="results/cka/{family}/matrix.csv",
    output:
        figure_output("cka_{family}_{estimator}", "cka_matrix", "3. Convergence (CKA)", "{family} matrices"),
    wildcard_constraints:
        family=one_of(CKA_FAMILIES),
        estimator="biased|debiased",
    params:
        task_sets=lambda w: {m: PRETRAINING_MIXTURES[m] for m in CKA_FAMILIES[w.family]},
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/figures/cka_{family}_{estimator}.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_cka_estimators:
    """Project addition (§12): a family's matrix at the analysis layer once per estimator, side by side (biased,
    debiased, calibrated CKA, mutual k-NN), so a reader sees which conclusions survive which estimator."""
    input:
        matrix="results/cka/{family}/matrix.csv",
    output:
        figure_output("cka_{family}_estimators", "cka_estimators", "3. Convergence (CKA)", "{family} matrices"),
    wildcard_constraints:
        family=one_of(CKA_FAMILIES),
    params:
        task_sets=lambda w: {m: PRETRAINING_MIXTURES[m] for m in CKA_FAMILIES[w.family]},
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/figures/cka_{family}_estimators.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_cka_task_count:
    """§13.5: CKA of task-disjoint models against their number of training tasks, per layer."""
    input:
        values="results/cka/task_count.csv",
        summary="results/cka/task_count_summary.csv",
    output:
        figure_output("cka_task_count_{estimator}", "cka_task_count", "3. Convergence (CKA)", "CKA vs number of tasks"),
    wildcard_constraints:
        estimator="biased|debiased",
    log:
        "results/logs/figures/cka_task_count_{estimator}.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_cka_task_count_estimators:
    """Project addition (§12): the task-count figure at the analysis layer, one panel per estimator."""
    input:
        values="results/cka/task_count.csv",
        summary="results/cka/task_count_summary.csv",
    output:
        figure_output("cka_task_count_estimators", "cka_task_count_estimators", "3. Convergence (CKA)",
                      "CKA vs number of tasks"),
    params:
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/figures/cka_task_count_estimators.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_ftwb1_matrix:
    """§13.7: the FTWB1 generalization matrix (seed-mean NI)."""
    input:
        ftwb1="results/generalization/ftwb1_matrix.csv",
    output:
        figure_output("ftwb1_matrix", "ftwb1_matrix", "4. Fine-tuning generalization"),
    log:
        "results/logs/figures/ftwb1_matrix.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_cka_vs_generalization:
    """§13.8: single-task CKA against FTWB1 generalization, with the Pearson fit."""
    input:
        points="results/cka/cka_vs_generalization.csv",
        fit="results/cka/cka_vs_generalization_fit.csv",
    output:
        figure_output("cka_vs_generalization_{estimator}", "cka_vs_generalization", "4. Fine-tuning generalization"),
    wildcard_constraints:
        estimator="biased|debiased",
    log:
        "results/logs/figures/cka_vs_generalization_{estimator}.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_cka_vs_generalization_estimators:
    """Project addition (§12): single-task similarity against FTWB1 generalization, one panel per estimator."""
    input:
        points="results/cka/cka_vs_generalization.csv",
        fit="results/cka/cka_vs_generalization_fit.csv",
    output:
        figure_output("cka_vs_generalization_estimators", "cka_vs_generalization_estimators",
                      "4. Fine-tuning generalization"),
    log:
        "results/logs/figures/cka_vs_generalization_estimators.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_deviation_matrix:
    """§13.9: FTWB2 deviation from the best-teacher prediction, distance rows in red."""
    input:
        table="results/generalization/deviation_matrix.csv",
    output:
        figure_output("deviation_matrix", "deviation_matrix", "4. Fine-tuning generalization"),
    log:
        "results/logs/figures/deviation_matrix.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_deviation_histogram:
    """§13.10: per-seed deviations, pairs with and without distance."""
    input:
        deviation="results/generalization/best_teacher_deviation.csv",
    output:
        figure_output("deviation_histogram", "deviation_histogram", "4. Fine-tuning generalization"),
    params:
        mixes=canonical(FINETUNING_MIXTURES),
    log:
        "results/logs/figures/deviation_histogram.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_atlantis_histogram:
    """§13.11: Atlantis reconstruction errors of the two-task fine-tuned models."""
    input:
        errors="results/probes/atlantis_errors.csv.gz",
        summary="results/probes/atlantis_summary.csv",
    output:
        figure_output("atlantis_histogram", "atlantis_histogram", "5. Atlantis"),
    params:
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/figures/atlantis_histogram.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_representation_views:
    """§13.2 (Fig. 2a, 3a–b): PCA, mixed and rotated mixed views of the distance, angle, compass and inside
    single-task models (those the config has)."""
    input:
        views=[view_file(run) for run in VIEW_RUNS],
        probes=[f"results/probes/{run}.csv" for run in VIEW_RUNS],
    output:
        figure_output("representation_views", "representation_views", "2. Representations"),
    params:
        runs=VIEW_RUNS,
        labels=run_labels(VIEW_RUNS),
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/figures/representation_views.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_two_task_views:
    """§13.2 (Fig. 3a–b): mixed views of pt2-1 (D,T) and pt2-3 (I,P), single-task models as insets."""
    input:
        views=[view_file(run) for run in dict.fromkeys(TWO_TASK_RUNS + sum(TWO_TASK_INSETS.values(), []))],
    output:
        figure_output("two_task_views", "two_task_views", "2. Representations"),
    params:
        runs=list(dict.fromkeys(TWO_TASK_RUNS + sum(TWO_TASK_INSETS.values(), []))),
        labels=run_labels(dict.fromkeys(TWO_TASK_RUNS + sum(TWO_TASK_INSETS.values(), []))),
        insets=TWO_TASK_INSETS,
    log:
        "results/logs/figures/two_task_views.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_pca_gallery:
    """§13.2 appendix: raw 3-D PCA of the six non-crossing single-task models, every seed."""
    input:
        views=[view_file(run) for run in GALLERY_RUNS],
    output:
        figure_output("pca_gallery", "pca_gallery", "2. Representations"),
    params:
        runs=[[RUN_BY_NAME[run].mixture, RUN_BY_NAME[run].seed] for run in GALLERY_RUNS],
        labels={RUN_BY_NAME[run].mixture: label for run, label in run_labels(GALLERY_RUNS).items()},
    log:
        "results/logs/figures/pca_gallery.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_dynamics_views:
    """§13.2 appendix: raw 3-D PCA of the distance, angle and compass models at checkpoints s, 3s, 6s, 15s,
    23s and the final one."""
    input:
        views=[view_file(run) for run in DYNAMICS_RUNS],
    output:
        figure_output("dynamics_views", "dynamics_views", "2. Representations"),
    params:
        runs=DYNAMICS_RUNS,
        labels=run_labels(DYNAMICS_RUNS),
    log:
        "results/logs/figures/dynamics_views.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_model_views:
    """§13.2 (Fig. 4a; pt7-atl appendix): raw PCA and mixed view of the seven-task models."""
    input:
        views=lambda w: [view_file(w.run)],
    output:
        figure_output("views_{run}", "model_views", "2. Representations"),
    wildcard_constraints:
        run=one_of(MODEL_VIEW_RUNS),
    params:
        label=lambda w: RUN_BY_NAME[w.run].mixture,  # pt7 and pt7-atl share a task set: name the mixture
    log:
        "results/logs/figures/views_{run}.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_training_curves:
    """§13.6 (Fig. 1 bottom, appendix): loss, task metric with probe R², probe error over training."""
    input:
        training_log=lambda w: f"{model_dir(RUN_BY_NAME[w.run].mixture, RUN_BY_NAME[w.run].seed)}/training_log.csv",
        validation_log=lambda w: f"{model_dir(RUN_BY_NAME[w.run].mixture, RUN_BY_NAME[w.run].seed)}/validation_log.csv",
        probes="results/probes/{run}.csv",
    output:
        figure_output("training_curves_{run}", "training_curves", "2. Representations", "Training curves"),
    wildcard_constraints:
        run=one_of(CURVE_FIGURE_RUNS),
    params:
        task=lambda w: mixture_tasks(RUN_BY_NAME[w.run].mixture)[0],
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/figures/training_curves_{run}.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_checkpoint_metrics:
    """§13.6 (Fig. 4b): every task's standard-test metric at every checkpoint of a seven-task run."""
    input:
        checkpoints="results/evaluation/{run}/checkpoints.csv",
    output:
        figure_output("checkpoint_metrics_{run}", "checkpoint_metrics", "3. Convergence (CKA)"),
    wildcard_constraints:
        run=one_of(config["evaluation"]["checkpoint_runs"]),
    log:
        "results/logs/figures/checkpoint_metrics_{run}.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_atlantis_predictions:
    """§13.12 (Fig. 6b): Atlantis probe predictions against truth for ftwb2-2 (A,Co) and ftwb2-13 (D,P)."""
    input:
        errors="results/probes/atlantis_errors.csv.gz",
        views=[view_file(run) for run in PREDICTION_RUNS],
    output:
        figure_output("atlantis_predictions", "atlantis_predictions", "5. Atlantis"),
    params:
        runs=PREDICTION_RUNS,
        labels=run_labels(PREDICTION_RUNS),
    log:
        "results/logs/figures/atlantis_predictions.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"
