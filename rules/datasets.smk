rule dataset:
    """One task's dataset in one variant: train/val/test as text and token arrays (METHOD §3).

    The task's own module is an input and its resolved settings are params, so editing one task replans
    exactly that task's datasets and the mixtures that contain them.
    """
    input:
        cities="results/world/cities.csv",
        task_code="worldrep/tasks/{task}.py",
        code=DATASET_CODE,
    output:
        text=expand("results/datasets/{{variant}}/{{task}}/{split}.txt", split=SPLITS),
        arrays=expand("results/datasets/{{variant}}/{{task}}/{split}.npz", split=SPLITS),
        metadata="results/datasets/{variant}/{task}/metadata.json",
    params:
        city_counts=city_counts,
        sizes=lambda w: canonical(config["datasets"][dataset_base(w.variant)]),
        seed=config["datasets"]["seed"],
        # the task's own `label_noise`, or for a copy `{variant}-{noise variant}` that variant's level (issue 14.2)
        label_noise=lambda w: grid.label_noise(config, w.variant, w.task),
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
