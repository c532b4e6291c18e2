rule dataset:
    """One task's dataset in one variant: train/val/test as text and token arrays (METHOD §3).

    Its params are its recipe (worldrep.recipes.dataset_params): only the settings that reach this (task, variant),
    and the code it runs with this task's own module, so editing one task replans exactly that task's datasets and
    the mixtures that contain them.
    """
    input:
        cities="results/world/cities.csv",
    output:
        text=expand("results/datasets/{{variant}}/{{task}}/{split}.txt", split=SPLITS),
        arrays=expand("results/datasets/{{variant}}/{{task}}/{split}.npz", split=SPLITS),
        metadata="results/datasets/{variant}/{task}/metadata.json",
    params:
        **{key: (lambda w, key=key: recipes.dataset_params(config, w.variant, w.task)[key])
           for key in ("city_counts", "sizes", "seed", "label_noise")},
        code=lambda w: RECIPES.dataset_code(w.task),
    resources:
        # A bound on work, not a data setting: a job that succeeds gives the same bytes under any bound, so
        # raising it after a failure must not replan finished datasets (params would).
        max_draw_rounds=config["datasets"]["max_draw_rounds"],
    log:
        "results/logs/datasets/{variant}/{task}.log",
    benchmark:
        "results/benchmarks/datasets/{variant}/{task}.tsv"
    conda:
        ENV_DATA
    script:
        "../scripts/dataset.py"
