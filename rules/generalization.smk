# Normalized improvement of every fine-tuned model against its same-seed base (METHOD §9): the FTWB1 and
# FTWB2 generalization matrices and the best-teacher deviations, as tidy tables.


rule generalization:
    """NI per (fine-tuned run, evaluated task), the FTWB1 7×7 and FTWB2 21×7 matrices per seed and averaged,
    the best-teacher prediction and its deviation."""
    input:
        metrics="results/evaluation/metrics.csv",
    output:
        ni="results/generalization/normalized_improvement.csv",
        ftwb1="results/generalization/ftwb1_matrix.csv",
        ftwb2="results/generalization/ftwb2_matrix.csv",
        deviation="results/generalization/best_teacher_deviation.csv",
        deviation_matrix="results/generalization/deviation_matrix.csv",
    params:
        mixes=canonical(FINETUNING_MIXTURES),
        base=config["training"]["base"],
    log:
        "results/logs/generalization.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/generalization.py"
