# Linear probes of the city coordinates (METHOD §11) and the Atlantis reconstruction.


rule probes:
    """OLS probes of x and y on the standard city split, per layer, with a ridge probe beside them and both on the
    control task (shuffled coordinates); for the curve runs also per checkpoint.
    Also the analysis layer's (5) PCA and probe ("mixed") 3-D views the figures draw (final and dynamics checkpoints)."""
    input:
        final="results/representations/{mixture}_s{seed}/final.npz",
        checkpoints=lambda w: [f"results/representations/{w.mixture}_s{w.seed}/checkpoints"]
        if f"{w.mixture}_s{w.seed}" in CURVE_RUNS
        else [],
        cities="results/world/cities.csv",
    output:
        metrics="results/probes/{mixture}_s{seed}.csv",
        views="results/views/{mixture}_s{seed}.csv.gz",
    params:
        seed=config["probes"]["seed"],
        layer=run_analysis_layer,
        ridge_alphas=config["probes"]["ridge_alphas"],
        control_seed=config["probes"]["control_seed"],
    log:
        "results/logs/probes/{mixture}_s{seed}.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/probes.py"


rule probe_table:
    """Every run's probe metrics in one table, with the run's mixture, kind and seed."""
    input:
        [f"results/probes/{r.name}.csv" for r in RUNS],
    output:
        "results/probes/probe_metrics.csv",
    params:
        runs=[{"run": r.name, "mixture": r.mixture, "kind": r.kind, "seed": r.seed} for r in RUNS],
    log:
        "results/logs/probes/probe_metrics.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/run_table.py"


rule atlantis_reconstruction:
    """Layer-5 probes trained on 4,000 real cities (`probes.atlantis_train`) of each two-task fine-tuned model
    (and the with-Atlantis control): per-city errors on 100 held-out real cities and on every Atlantis city, pooled by whether the
    pair contains distance, with a Mann–Whitney U test (§11)."""
    input:
        representations=[f"results/representations/{name}/final.npz" for name in ATLANTIS_RUNS],
        controls=[f"results/representations/{name}/final.npz" for name in CONTROL_RUNS],
        cities="results/world/cities.csv",
    output:
        errors="results/probes/atlantis_errors.csv.gz",
        summary=table_output("probes/atlantis_summary", "atlantis_summary", "5. Atlantis"),
    params:
        runs=ATLANTIS_RUNS,
        includes_distance=[("distance" in FINETUNING_MIXTURES[RUN_BY_NAME[n].mixture]) for n in ATLANTIS_RUNS],
        controls=CONTROL_RUNS,
        seed=config["probes"]["seed"],
        n_train=config["probes"]["atlantis_train"],
        n_baseline=config["probes"]["atlantis_baseline"],
        layer=ANALYSIS_LAYER,
    log:
        "results/logs/probes/atlantis_reconstruction.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/atlantis_reconstruction.py"
