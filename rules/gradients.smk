# Can divergence be predicted before training? (METHOD Appendix C.3; on with config/gradients.yaml): the
# cosine similarity of every pair of tasks' loss gradients (all parameters; the digit tokens' embedding rows) at the
# first checkpoints of one pretraining run (step 0 = its initialization), set against the single-task CKA (§12) and
# the FTWB1 generalization (§9) where the config plans them. Everything under results/experiments/gradients/, in the
# report's "8. Open questions".
# Its run, comparisons and targets: rules/common.smk (`GRADIENTS_RUN`, `gradients_targets`).


localrules:
    gradient_correlation, figure_gradient_similarity, figure_gradient_scatter,


rule gradient_similarity:
    """Per checkpoint and parameter set, the mean over batches of the cosine between two tasks' loss gradients on
    their b-th batches, for every pair of configured tasks (CPU, fp32)."""
    input:
        checkpoints=f"results/models/{GRADIENTS_RUN}/checkpoints",
        train=[f"results/datasets/pretraining/{task}/train.npz" for task in CONFIGURED_TASKS],
    output:
        f"{GRADIENTS_FOLDER}/similarity.csv",
    params:
        run=GRADIENTS_RUN,
        tasks=CONFIGURED_TASKS,  # aligned with `train`
        checkpoints=GRADIENTS.get("checkpoints"),
        batches=GRADIENTS.get("batches"),
        batch_size=GRADIENTS.get("batch_size"),
        seed=GRADIENTS.get("seed"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        "results/logs/experiments/gradients/similarity.log",
    benchmark:
        "results/benchmarks/experiments/gradients/similarity.tsv"
    conda:
        ENV_TRAINING
    script:
        "../scripts/gradients.py"


rule gradient_correlation:
    """Per checkpoint, parameter set and target, Pearson and Spearman of the similarity against the single-task CKA
    (unordered pairs) and the FTWB1 NI (ordered pairs, trained cells left out), with and without crossing."""
    input:
        similarity=f"{GRADIENTS_FOLDER}/similarity.csv",
        **{name: GRADIENT_TARGET_TABLES[name] for name in GRADIENT_COMPARISONS},
    output:
        points=f"{GRADIENTS_FOLDER}/points.csv",
        correlation=experiment_table(f"{GRADIENTS_FOLDER}/correlation.csv", "gradients_correlation", GRADIENTS_CATEGORY),
    params:
        variant_task={m: PRETRAINING_MIXTURES[m][0] for m in CKA_FAMILIES.get("pt1", [])},
        layer=ANALYSIS_LAYER,
        run=GRADIENTS_RUN,  # named in the caption
    log:
        "results/logs/experiments/gradients/correlation.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/gradient_correlation.py"


rule figure_gradient_similarity:
    """The similarity matrices: one panel per checkpoint, one row per parameter set."""
    input:
        similarity=f"{GRADIENTS_FOLDER}/similarity.csv",
    output:
        experiment_figure_output("gradients", "similarity", "gradients_similarity", GRADIENTS_CATEGORY),
    params:
        run=GRADIENTS_RUN,  # named in the caption
    log:
        "results/logs/experiments/gradients/figures/similarity.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_gradient_scatter:
    """The similarity of each pair against its CKA or FTWB1 NI, one series per checkpoint with its Pearson r and
    Spearman ρ."""
    input:
        points=f"{GRADIENTS_FOLDER}/points.csv",
        correlation=f"{GRADIENTS_FOLDER}/correlation.csv",
    output:
        experiment_figure_output("gradients", "vs_{comparison}", "gradients_scatter", GRADIENTS_CATEGORY),
    wildcard_constraints:
        comparison=one_of(GRADIENT_COMPARISONS),
    params:
        labels=lambda w: GRADIENT_COMPARISONS[w.comparison],
        run=GRADIENTS_RUN,  # named in the caption
    log:
        "results/logs/experiments/gradients/figures/vs_{comparison}.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"
