# Training (METHOD §7; how rebuilds stay exact: §7.5). Runs are trained in stacks (§7.1) into the store,
# results/store/{recipe hash}/ (worldrep.store), and published per run into results/models/{run}/.
#
# - A run's recipe hash covers its training params, its mixture's recipe, its base run's hash and the training code
#   (worldrep.recipes). Equal hash, equal run: an entry is never trained twice.
# - One rule per stack with a missing entry (pretrain_pt1, finetune_ftwb2_13, ...), generated while the Snakefile is
#   parsed: it trains exactly the stale runs (`training.stack: whole-family`: their whole family) and writes their
#   entries, each marker last. A killed job leaves work folders that the rerun resumes from.
# - The same job then computes, from each run's weights in memory (or from its entry, when only they are missing), the
#   run's products: evaluation, checkpoint evaluation, representations, checkpoint representations (worldrep.grid
#   .run_products), each a store entry under its own recipe hash: one process per stack pays for start-up and model
#   loading once (METHOD §7.5).
# - One small rule per run publishes its entry as hard links. Downstream rules read results/models/{run}/ as they
#   always did, and Snakemake decides per run: a run whose entry exists is not retrained, and its files keep their
#   bytes and mtimes, so nothing downstream of it reruns.
# Threads and resources of the generated rules are set here, not in profiles/default, whose per-rule lists cannot
# name rules that depend on the config.


for _job in TRAINING_JOBS:
    _stack = _job.stack

    rule:
        name:
            _stack.rule
        input:
            data=stack_inputs(_stack),
            tokenizer=TOKENIZER_FILES,
            models=[store_marker(run) for run in _job.loaded],  # weights it only reads: products are missing
            **product_inputs(_job.products),
        output:
            **{run: store_marker(run) for run in _job.stale},
            **{f"{run}.{product}": product_marker(run, product) for run, product in _job.products},
        params:
            # Per run: its recipe hash (the entry it writes, and its resume state's key), mixture, base model, variant,
            # seeds entry (§7.3), architecture, recipe, seed, precisions. The outputs already name the hashes: these
            # params are what the job reads, never a reason to rerun it.
            runs=canonical({run.name: {"hash": RUN_HASH[run.name], "mixture": grid.training_mixture(config, run),
                                       "base": base_final(run), "variant": run.variant,
                                       "seeds_entry": run.seeds_entry, **recipes.training_params(config, run)}
                            for run in _stack.runs}),
            stale=list(_job.stale),
            # Per run with a missing product: its recipe hash (its stored weights, unless trained here), then each
            # missing product's recipe hash and params (worldrep.recipes.product_params).
            products=product_params(_job.products),
            stack=_stack.name,
            kind=_stack.kind,
        threads: 1
        resources:
            gpu=1,
            # Per job at paper scale: a pt7 mixture is ~7M items; every seed of one mixture shares its matrix.
            mem_mb=(16000 if _stack.kind == "pretraining" else 8000) + 2000 * max(0, len(_stack.mixtures) - 1),
            runtime=720 if _stack.kind == "pretraining" else 240,  # minutes; a killed stack resumes
        log:
            f"results/logs/stacks/{_stack.name}.log",
        benchmark:
            f"results/benchmarks/stacks/{_stack.name}.tsv"
        conda:
            ENV_TRAINING
        script:
            "../scripts/train.py"


rule pretrained_model:
    """A pretraining run's store entry, published: final model, every checkpoint (the curves need them), logs."""
    input:
        entry=lambda w: store_marker(run_of(w).name),
        **{split: (lambda w, split=split: mixture_splits(run_of(w))[split]) for split in ("train", "val")},
    output:
        final=directory("results/models/{mixture}_s{seed}/final"),
        checkpoints=directory("results/models/{mixture}_s{seed}/checkpoints"),
        training_log="results/models/{mixture}_s{seed}/training_log.csv",
        validation_log="results/models/{mixture}_s{seed}/validation_log.csv",
    wildcard_constraints:
        mixture=one_of(RUN_PREFIXES["pretraining"]),
    params:
        recipe=lambda w: RUN_HASH[run_of(w).name],
        code=RECIPES.code("scripts/model.py"),
    log:
        "results/logs/models/{mixture}_s{seed}.log",
    conda:
        ENV_DATA
    script:
        "../scripts/model.py"


use rule pretrained_model as finetuned_model with:
    input:
        entry=lambda w: store_marker(run_of(w).name),
        **{split: (lambda w, split=split: mixture_splits(run_of(w))[split]) for split in ("train", "val")},
        base=lambda w: base_final(run_of(w)),
    output:
        final=directory("results/models/{mixture}_s{seed}/final"),
        training_log="results/models/{mixture}_s{seed}/training_log.csv",
        validation_log="results/models/{mixture}_s{seed}/validation_log.csv",
    wildcard_constraints:
        mixture=one_of(RUN_PREFIXES["finetuning"]),
