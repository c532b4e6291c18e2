# Where fine-tuning puts a new city (METHOD Appendix C.1; on with config/subspace.yaml): for every
# fine-tuned model of the main grid, each Atlantis city's update (fine-tuned minus same-seed base representation at
# the analysis layer) split into its part inside the fine-tuned model's world subspace (probe x/y span; top-k PCs of
# its real cities) and the rest, pooled by whether the mix contains distance and set against the model's Atlantis
# reconstruction error. Everything under results/experiments/subspace/, in the report's "8. Open questions".
# Its runs, base files and targets: rules/common.smk (`SUBSPACE_RUNS`, `subspace_targets`).


localrules:
    figure_subspace_fraction, figure_subspace_vs_error,


rule subspace_representations:
    """A base model's final checkpoint at the prompt of a task its fine-tuned models were extracted with: its own
    file (results/representations/) uses distance's, so an FTWB1 model of another task would differ from it by the
    prompt as well as by the fine-tuning. Only the analysis layer."""
    input:
        model="results/models/{run}/final",
        cities="results/world/cities.csv",
    output:
        f"{SUBSPACE_FOLDER}/representations/{{run}}/{{task}}.npz",
    wildcard_constraints:
        run=one_of(sorted(set(SUBSPACE_BASE.values()))),
    params:
        layers=[ANALYSIS_LAYER],
        code=lambda w: RECIPES.code("scripts/subspace_representations.py", f"worldrep/tasks/{w.task}.py"),
    log:
        "results/logs/experiments/subspace/representations/{run}_{task}.log",
    benchmark:
        "results/benchmarks/experiments/subspace/representations/{run}_{task}.tsv"
    conda:
        ENV_TRAINING
    script:
        "../scripts/subspace_representations.py"


rule subspace:
    """Per fine-tuned model, the fractions of its Atlantis updates inside its two world subspaces and its mean
    Atlantis reconstruction error (§11 protocol); the with/without-distance groups (Mann–Whitney U) and the
    fraction-error correlations (Pearson, Spearman)."""
    input:
        finetuned=[f"results/representations/{r.name}/final.npz" for r in SUBSPACE_RUNS],
        bases=[SUBSPACE_BASE_FILE[r.name] for r in SUBSPACE_RUNS],  # aligned with `finetuned`: a base may repeat
        cities="results/world/cities.csv",
    output:
        fractions=experiment_table(f"{SUBSPACE_FOLDER}/fractions.csv", "subspace_fractions", SUBSPACE_CATEGORY),
        summary=experiment_table(f"{SUBSPACE_FOLDER}/summary.csv", "subspace_summary", SUBSPACE_CATEGORY),
        correlation=experiment_table(f"{SUBSPACE_FOLDER}/correlation.csv", "subspace_correlation", SUBSPACE_CATEGORY),
    params:
        runs=[{"run": r.name, "mixture": r.mixture, "seed": r.seed, "base": SUBSPACE_BASE[r.name],
               "prompt_task": run_prompt_task(r), "includes_distance": "distance" in mixture_tasks(r.mixture)}
              for r in SUBSPACE_RUNS],
        components=experiments.experiment(config, "subspace").get("components"),
        layer=ANALYSIS_LAYER,
        seed=config["probes"]["seed"],
        n_train=config["probes"]["atlantis_train"],
        n_baseline=config["probes"]["atlantis_baseline"],
    log:
        "results/logs/experiments/subspace/subspace.log",
    benchmark:
        "results/benchmarks/experiments/subspace/subspace.tsv"
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/subspace.py"


rule figure_subspace_fraction:
    """Per model, the pooled fraction of its Atlantis updates in each world subspace, by whether the mix contains
    distance, with the group means and the chance level."""
    input:
        fractions=f"{SUBSPACE_FOLDER}/fractions.csv",
        summary=f"{SUBSPACE_FOLDER}/summary.csv",
    output:
        experiment_figure_output("subspace", "subspace_fraction", "subspace_fraction", SUBSPACE_CATEGORY),
    log:
        "results/logs/experiments/subspace/figures/subspace_fraction.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"


rule figure_subspace_vs_error:
    """Per model, the pooled fraction against its mean Atlantis reconstruction error, with the correlations."""
    input:
        fractions=f"{SUBSPACE_FOLDER}/fractions.csv",
        correlation=f"{SUBSPACE_FOLDER}/correlation.csv",
    output:
        experiment_figure_output("subspace", "subspace_vs_error", "subspace_vs_error", SUBSPACE_CATEGORY),
    log:
        "results/logs/experiments/subspace/figures/subspace_vs_error.log",
    conda:
        ENV_PLOTTING
    script:
        "../scripts/figures.py"
