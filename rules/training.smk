# Training grid (METHOD §7): results/models/{mixture}_s{seed}/ per run. A run works in its `in_progress/`
# folder (resume state, checkpoints, logs) and moves its outputs into place only when it has finished, the
# final model last; rerunning a killed job resumes from its last checkpoint.


rule pretrain:
    """A pretraining run from the spec's random init: all checkpoints (the training curves need them)."""
    input:
        mixture=expand("results/mixtures/{{mixture}}/{split}.npz", split=("train", "val")),
        metadata="results/mixtures/{mixture}/metadata.json",
        tokenizer=TOKENIZER_FILES,
        code=TRAINING_CODE,
    output:
        final=directory("results/models/{mixture}_s{seed}/final"),
        checkpoints=directory("results/models/{mixture}_s{seed}/checkpoints"),
        training_log="results/models/{mixture}_s{seed}/training_log.csv",
        validation_log="results/models/{mixture}_s{seed}/validation_log.csv",
    wildcard_constraints:
        mixture=one_of(PRETRAINING_MIXTURES),
    params:
        training=training_params,
    resources:
        gpu=1,
    log:
        "results/logs/models/{mixture}_s{seed}.log",
    benchmark:
        "results/benchmarks/models/{mixture}_s{seed}.tsv"
    conda:
        ENV_TRAINING
    script:
        "../scripts/train.py"


rule finetune:
    """A fine-tuning run from the same-seed base model's final weights (no optimizer state, §7.1). Only its
    final model is kept."""
    input:
        base=lambda w: f"{model_dir(config['training']['base'], w.seed)}/final",
        mixture=expand("results/mixtures/{{mixture}}/{split}.npz", split=("train", "val")),
        metadata="results/mixtures/{mixture}/metadata.json",
        tokenizer=TOKENIZER_FILES,
        code=TRAINING_CODE,
    output:
        final=directory("results/models/{mixture}_s{seed}/final"),
        training_log="results/models/{mixture}_s{seed}/training_log.csv",
        validation_log="results/models/{mixture}_s{seed}/validation_log.csv",
    wildcard_constraints:
        mixture=one_of(FINETUNING_MIXTURES),
    params:
        training=training_params,
    resources:
        gpu=1,
    log:
        "results/logs/models/{mixture}_s{seed}.log",
    benchmark:
        "results/benchmarks/models/{mixture}_s{seed}.tsv"
    conda:
        ENV_TRAINING
    script:
        "../scripts/train.py"
