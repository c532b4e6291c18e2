# CKA between models (METHOD §12): per family the model×model values and the seed-averaged matrices, CKA vs
# number of tasks on task-disjoint pairs, and CKA vs fine-tuning generalization.


rule cka_family:
    """All model pairs of one family (pt1, pt2 or pt3) at every extracted layer, biased and debiased CKA, calibrated
    CKA and mutual k-NN (the config's `cka` block), on the eligible non-Atlantis cities; and the variant×variant
    matrices (mean ± SEM over seed pairs, diagonal from cross-seed pairs only)."""
    input:
        representations=lambda w: [f"results/representations/{run}/final.npz" for run in family_runs(w.family)],
        cities="results/world/cities.csv",
    output:
        pairs="results/cka/{family}/pairs.csv",
        matrix="results/cka/{family}/matrix.csv",
    wildcard_constraints:
        family=one_of(CKA_FAMILIES),
    params:
        runs=lambda w: family_runs(w.family),
        variants=lambda w: CKA_FAMILIES[w.family],
        seeds=lambda w: {m: [r.seed for r in PRETRAINING_RUNS if r.mixture == m] for m in CKA_FAMILIES[w.family]},
        similarity=config["cka"],
    log:
        "results/logs/cka/{family}.log",
    benchmark:
        "results/benchmarks/cka/{family}.tsv"
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/cka_family.py"


rule cka_task_count:
    """CKA of task-disjoint variant pairs (variant 7 of each family left out, §12) against the number of
    tasks per model: every value, the pooled mean ± SEM and the same-seed means per seed."""
    input:
        pairs=expand("results/cka/{family}/pairs.csv", family=CKA_FAMILIES),
    output:
        values="results/cka/task_count.csv",
        summary=table_output("cka/task_count_summary", "task_count_summary", "3. Convergence (CKA)"),
    params:
        task_sets={f: {m: PRETRAINING_MIXTURES[m] for m in CKA_FAMILIES[f] if not m.endswith("-7")} for f in CKA_FAMILIES},
    log:
        "results/logs/cka/task_count.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/cka_task_count.py"


rule cka_vs_generalization:
    """Layer-5 single-task CKA of (X, Y) against the seed-mean FTWB1 NI of fine-tuning on X and evaluating on
    Y, over ordered pairs of the non-crossing tasks (§12): points and the Pearson fit per estimator."""
    input:
        cka="results/cka/pt1/matrix.csv",
        ftwb1="results/generalization/ftwb1_matrix.csv",
    output:
        points="results/cka/cka_vs_generalization.csv",
        fit=table_output("cka/cka_vs_generalization_fit", "cka_vs_generalization_fit", "4. Fine-tuning generalization"),
    params:
        variant_task={m: PRETRAINING_MIXTURES[m][0] for m in CKA_FAMILIES.get("pt1", [])},
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/cka/cka_vs_generalization.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/cka_vs_generalization.py"
