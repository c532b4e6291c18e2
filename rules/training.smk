# Training grid (METHOD §7): results/models/{mixture}_s{seed}/ per run ({mixture}-{variant}_s{seed} for a variant), trained in stacks (issue 16). One job per
# stack: `training.stack: mixture` puts every seed of a mixture in one job, `family` every run of a family
# (worldrep.grid.training_stacks). A stack lists every output of every run it trains, so downstream rules see the
# per-run files they always saw. Each run works in its own `in_progress/` folder (resume state, checkpoints, logs)
# and moves its outputs into place only when the whole stack has finished, each run's final model last; rerunning a
# killed job resumes every run from its last checkpoint.
#
# Rules are generated, one per stack (pretrain_pt1, finetune_ftwb2_13, ...): a job's outputs are fixed lists, not
# wildcard patterns, since a family's runs share no pattern. Threads and resources are set here, not in
# profiles/default, whose per-rule lists cannot name rules that depend on the config.


def stack_outputs(stack):
    """Every run's outputs: final model, logs, and (pretraining) all checkpoints, which the curves need."""
    names = ["final", "checkpoints"] if stack.kind == "pretraining" else ["final"]
    names += ["training_log.csv", "validation_log.csv"]
    return {f"{run.name}.{name.removesuffix('.csv')}": f"results/models/{run.name}/{name}"
            for run in stack.runs for name in names}


def stack_base(stack, run):
    """A fine-tuning run's starting point: the same-seed final model of `training.base` (§7.1); None otherwise."""
    base = config["training"]["base"]
    return f"{model_dir(base, run.seed, run.variant)}/final" if stack.kind == "finetuning" else None


def stack_inputs(stack):
    """Every run's mixture (train and val splits, metadata; a label-noise variant's noisy copy) and, for
    fine-tuning, its same-seed base model."""
    mixtures = dict.fromkeys(grid.training_mixture(config, run) for run in stack.runs)
    files = [f"results/mixtures/{m}/{name}" for m in mixtures for name in ("train.npz", "val.npz", "metadata.json")]
    if stack.kind == "finetuning":
        files += sorted({stack_base(stack, run) for run in stack.runs})
    return files


for _stack in STACKS:

    rule:
        name:
            _stack.rule
        input:
            data=stack_inputs(_stack),
            tokenizer=TOKENIZER_FILES,
            code=TRAINING_CODE,
        output:
            **{key: (directory(path) if path.endswith(("final", "checkpoints")) else path)
               for key, path in stack_outputs(_stack).items()},
        params:
            # One entry per run (name -> mixture, base model, architecture, recipe, seed, precisions): editing one
            # run retrains its stack.
            runs=canonical({run.name: {"mixture": grid.training_mixture(config, run), "base": stack_base(_stack, run),
                                       **training_params(run)} for run in _stack.runs}),
            stack=_stack.name,
            kind=_stack.kind,
        threads: 1
        resources:
            gpu=1,
            # Per job at paper scale: a pt7 mixture is ~7M items; every seed of one mixture shares its matrix.
            mem_mb=(16000 if _stack.kind == "pretraining" else 8000) + 2000 * (len(_stack.mixtures) - 1),
            runtime=720 if _stack.kind == "pretraining" else 240,  # minutes; a killed stack resumes
        log:
            f"results/logs/stacks/{_stack.name}.log",
        benchmark:
            f"results/benchmarks/stacks/{_stack.name}.tsv"
        conda:
            ENV_TRAINING
        script:
            "../scripts/train.py"
