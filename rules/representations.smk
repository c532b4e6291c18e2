# Representation extraction (METHOD §10): for every eligible city (4-digit ID), the residual stream at the
# last ID digit and the following delimiter of the task's partial prompt, the config's
# `representations.layers` (3–6 of 6 for the paper; a variant may list its own), 2 × hidden_size dims per layer.
# The run's stack job extracts them, with the weights still in memory (rules/training.smk); these rules publish.


rule representations:
    """A model's final checkpoint: one compact .npz with the city IDs and one float32 array per layer. Extracted by
    the run's stack job (rules/training.smk), published here."""
    input:
        entry=lambda w: product_marker(run_of(w).name, "representations"),
        checked="results/world/cities.csv",
    output:
        "results/representations/{mixture}_s{seed}/final.npz",
    params:
        recipe=lambda w: PRODUCT_HASH[(run_of(w).name, "representations")],
    log:
        "results/logs/representations/{mixture}_s{seed}.log",
    conda:
        ENV_DATA
    script:
        "../scripts/model.py"


use rule representations as checkpoint_representations with:
    input:
        entry=lambda w: product_marker(run_of(w).name, "checkpoint_representations"),
        checked="results/world/cities.csv",
    output:
        directory("results/representations/{mixture}_s{seed}/checkpoints"),
    params:
        recipe=lambda w: PRODUCT_HASH[(run_of(w).name, "checkpoint_representations")],
    log:
        "results/logs/representations/{mixture}_s{seed}.checkpoints.log",
