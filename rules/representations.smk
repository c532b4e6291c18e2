# Representation extraction (METHOD §10): for every eligible city (4-digit ID), the residual stream at the
# last ID digit and the following delimiter of the task's partial prompt, the config's
# `representations.layers` (3–6 of 6 for the paper; a variant may list its own), 2 × hidden_size dims per layer.


rule representations:
    """A model's final checkpoint: one compact .npz with the city IDs and one float32 array per layer."""
    input:
        model="results/models/{mixture}_s{seed}/final",
        cities="results/world/cities.csv",
    output:
        "results/representations/{mixture}_s{seed}/final.npz",
    params:
        tasks=lambda w: mixture_tasks(run_of(w).mixture),
        finetuning=lambda w: run_of(w).kind == "finetuning",
        configured_tasks=CONFIGURED_TASKS,
        layers=run_layers,
        # the script, and the prompt task's module: it spells the prompt's function name and delimiter
        code=lambda w: RECIPES.code("scripts/representations.py", f"worldrep/tasks/{run_prompt_task(run_of(w))}.py"),
    log:
        "results/logs/representations/{mixture}_s{seed}.log",
    benchmark:
        "results/benchmarks/representations/{mixture}_s{seed}.tsv"
    conda:
        ENV_TRAINING
    script:
        "../scripts/representations.py"


use rule representations as checkpoint_representations with:
    input:
        checkpoints="results/models/{mixture}_s{seed}/checkpoints",
        cities="results/world/cities.csv",
    output:
        directory("results/representations/{mixture}_s{seed}/checkpoints"),
    log:
        "results/logs/representations/{mixture}_s{seed}.checkpoints.log",
    benchmark:
        "results/benchmarks/representations/{mixture}_s{seed}.checkpoints.tsv"
