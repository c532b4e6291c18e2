# Do the findings need clean supervision? (docs/METHOD.md Appendix C.2; `experiments.noise`, overlay
# config/noise.yaml). Each level p is the variant noise{100p} (worldrep/experiments.py): the single-task mixtures
# retrained, at the experiment's seeds, on label-noise copies of their datasets (results/datasets/pretraining-noise10/
# ...; val and test clean), trained, evaluated, extracted and probed by the per-run rules like every run. Here the
# clean main-grid runs of the same seeds and each level's runs are compared: the single-task CKA summary (distance's
# mean off-diagonal CKA against the other tasks, and the other tasks' among themselves) and the probe R², against p.
# rules/scale.smk runs the same comparison over model sizes.
# Their runs and targets: rules/common.smk (`noise_groups`, `noise_targets`).


localrules:
    noise_summary, figure_noise_summary,


rule noise_summary:
    """Per condition (clean, each noise level): the single-task family's CKA matrix of its runs at the analysis
    layer (mean over seeds), its summary, and every run's final probe R²."""
    input:
        representations=lambda w: [f"results/representations/{run}/final.npz" for run in group_runs(noise_groups())],
        probes=lambda w: [f"results/probes/{run}.csv" for run in group_runs(noise_groups())],
        cities="results/world/cities.csv",
    output:
        summary=experiment_table("results/experiments/noise/summary.csv", "noise_summary", NOISE_CATEGORY),
        matrices="results/experiments/noise/matrices.csv",
        probes="results/experiments/noise/probe_r2.csv",
    params:
        groups=lambda w: canonical(noise_groups()),
        order=lambda w: list(noise_groups()),
        variant_task={m: PRETRAINING_MIXTURES[m][0] for m in experiments.single_task_mixtures(config)},
    log:
        "results/logs/experiments/noise_summary.log",
    benchmark:
        "results/benchmarks/experiments/noise_summary.tsv"
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/condition_summary.py"


rule figure_noise_summary:
    """The CKA summary and the probe R² against the label noise p (0: the clean runs)."""
    input:
        summary="results/experiments/noise/summary.csv",
        probes="results/experiments/noise/probe_r2.csv",
    output:
        experiment_figure_output("noise", "noise_summary", "noise_summary", NOISE_CATEGORY),
    log:
        "results/logs/experiments/figures/noise_summary.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"
