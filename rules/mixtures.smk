rule pretraining_mixture:
    """Whole train/val/test splits of the listed tasks, concatenated and shuffled (METHOD §4.1)."""
    input:
        datasets=mixture_input,
    output:
        arrays=expand("results/mixtures/{{mixture}}/{split}.npz", split=SPLITS),
        metadata="results/mixtures/{mixture}/metadata.json",
    wildcard_constraints:
        mixture=one_of(mixtures_of_kind(PRETRAINING_MIXTURES)),
    params:
        **{key: (lambda w, key=key: recipes.mixture_params(config, w.mixture)[key]) for key in ("sources", "seed")},
    log:
        "results/logs/mixtures/{mixture}.log",
    benchmark:
        "results/benchmarks/mixtures/{mixture}.tsv"
    conda:
        ENV_DATA
    script:
        "../scripts/mixture.py"


# Same script: the sources (replay slice + Atlantis-required set per fine-tuned task, plus the buffer from
# every task's Atlantis-required set, METHOD §4.2) come from mixture_sources() through `params`.
use rule pretraining_mixture as finetuning_mixture with:
    wildcard_constraints:
        mixture=one_of(mixtures_of_kind(FINETUNING_MIXTURES)),
