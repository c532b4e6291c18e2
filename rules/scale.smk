# Does it hold at other sizes? (docs/METHOD.md Appendix C.4; `experiments.scale`, overlay config/scale.yaml).
# Each size is the variant w{hidden}d{layers} (worldrep/experiments.py): the single-task mixtures at the experiment's
# seeds, with the main model's head width, grouping and MLP ratio, extracting its last four hidden states and analysing
# the one before the last. The comparison is rules/noise.smk's, over sizes, with the main model (`model`) as the
# reference: per size the single-task CKA summary and the mean probe R².
# Their runs and targets: rules/common.smk (`scale_groups`, `scale_targets`).


localrules:
    scale_summary, figure_scale_summary,


use rule noise_summary as scale_summary with:
    input:
        representations=lambda w: [f"results/representations/{run}/final.npz" for run in group_runs(scale_groups())],
        probes=lambda w: [f"results/probes/{run}.csv" for run in group_runs(scale_groups())],
        cities="results/world/cities.csv",
    output:
        summary=experiment_table("results/experiments/scale/summary.csv", "scale_summary", SCALE_CATEGORY),
        matrices="results/experiments/scale/matrices.csv",
        probes="results/experiments/scale/probe_r2.csv",
    params:
        groups=lambda w: canonical(scale_groups()),
        order=lambda w: list(scale_groups()),
        variant_task={m: PRETRAINING_MIXTURES[m][0] for m in experiments.single_task_mixtures(config)},
    log:
        "results/logs/experiments/scale_summary.log",
    benchmark:
        "results/benchmarks/experiments/scale_summary.tsv"


use rule figure_noise_summary as figure_scale_summary with:
    input:
        summary="results/experiments/scale/summary.csv",
        probes="results/experiments/scale/probe_r2.csv",
    output:
        experiment_figure_output("scale", "scale_summary", "scale_summary", SCALE_CATEGORY),
    log:
        "results/logs/experiments/figures/scale_summary.log",
