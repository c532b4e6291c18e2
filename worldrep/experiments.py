"""The paper's open questions as experiments (issue 14; docs/METHOD.md Appendix C): what each adds to the grid.

Two of them train: label noise (`experiments.noise`) and model size (`experiments.scale`) each add one architecture
variant per level or size (issue 13's `variants` machinery: own runs, stacks, per-run jobs, results/variants/{name}/),
over the config's single-task mixtures. The other two (subspace, gradients) only analyse runs the grid has. No torch
here: the Snakefile plans with this.
"""
from __future__ import annotations

from .config import mixture_families

# Scale variants extract the last four hidden states and analyse the one before the last, as the paper's 6-layer
# model extracts 3-6 and analyses 5 (METHOD §10).
SCALE_EXTRACTED = 4
# Experiment variants keep checkpoints at 0, 25, 50, 75 and 100% of training, not every 2.5%: no analysis reads their
# checkpoints, and at 512 wide the main recipe's 41 per run would fill a disk (`python -m worldrep.plan`).
EXPERIMENT_CHECKPOINT_FRACTION = 0.25


def experiment(config: dict, name: str) -> dict:
    """`experiments.{name}`, or an empty block (off) when the config has none."""
    return config.get("experiments", {}).get(name, {"enabled": False})


def enabled(config: dict, name: str) -> bool:
    return experiment(config, name)["enabled"]


def single_task_mixtures(config: dict) -> list[str]:
    """The config's one-task pretraining mixtures (the pt1 family), in config order."""
    return [m for m, tasks in mixture_families(config)["pretraining"].items() if len(tasks) == 1]


def noise_variant(level: float) -> str:
    """`noise10` for p = 0.1: the percentage (levels are whole percentages, `experiment_problems`)."""
    return f"noise{round(100 * level)}"


def scale_variant(size: dict) -> str:
    """`w64d4`: width (hidden size) and depth (blocks)."""
    return f"w{size['hidden_size']}d{size['num_hidden_layers']}"


def scale_model(model: dict, size: dict) -> dict:
    """A size's architecture: its width and depth, the main model's head width, grouping and MLP ratio, unless the
    size names them."""
    hidden = size["hidden_size"]
    heads = size.get("num_attention_heads", max(1, hidden * model["num_attention_heads"] // model["hidden_size"]))
    derived = {"num_attention_heads": heads,
               "num_key_value_heads": max(1, heads * model["num_key_value_heads"] // model["num_attention_heads"]),
               "intermediate_size": hidden * model["intermediate_size"] // model["hidden_size"]}
    return {**derived, **size}


def scale_representations(depth: int) -> dict:
    layers = list(range(max(1, depth - SCALE_EXTRACTED + 1), depth + 1))
    return {"layers": layers, "analysis_layer": depth - 1 if depth > 1 else depth}


def gradients_run(config: dict) -> str:
    """The run whose checkpoints the gradient experiment uses: `run`, else the first seed's run of training.base."""
    from .grid import run_name, seeds_entry  # grid.py builds on this module

    base = config["training"]["base"]
    seeds = config["training"]["seeds"].get(seeds_entry(config, base), [])
    return experiment(config, "gradients").get("run") or (run_name(base, seeds[0]) if seeds else f"{base} (no seeds)")


def experiment_variants(config: dict) -> dict[str, dict]:
    """The `variants` blocks the noise and scale experiments add, in the shape of a config's own (on or off as the
    experiment): the single-task mixtures at the experiment's seeds, no fine-tuning."""
    blocks = {}
    pretraining = single_task_mixtures(config)
    noise = experiment(config, "noise")
    for level in noise.get("levels", []):
        blocks[noise_variant(level)] = {
            "enabled": noise["enabled"], "model": {}, "label_noise": level, "finetuning": [],
            "checkpoint_fraction": EXPERIMENT_CHECKPOINT_FRACTION,
            "pretraining": {m: {"seeds": list(noise["seeds"])} for m in pretraining}}
    scale = experiment(config, "scale")
    for size in scale.get("sizes", []):
        blocks[scale_variant(size)] = {
            "enabled": scale["enabled"], "model": scale_model(config["model"], size), "finetuning": [],
            "checkpoint_fraction": EXPERIMENT_CHECKPOINT_FRACTION,
            "representations": scale_representations(size["num_hidden_layers"]),
            "pretraining": {m: {"seeds": list(scale["seeds"])} for m in pretraining}}
    return blocks


def experiment_problems(config: dict, pretraining_runs: set[str]) -> list[str]:
    """Checks the schema cannot express; every message names its key. `pretraining_runs`: the planned pretraining
    runs' names (each keeps its checkpoints)."""
    problems = []
    own = config.get("variants", {})
    noise, scale = experiment(config, "noise"), experiment(config, "scale")
    levels = noise.get("levels", [])
    odd = [p for p in levels if abs(100 * p - round(100 * p)) > 1e-9]
    if odd:
        problems.append(f"config key 'experiments.noise.levels': {odd} are not whole percentages (each level names "
                        "its variant noise{100p})")
    names = [noise_variant(p) for p in levels] + [scale_variant(s) for s in scale.get("sizes", [])]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice and not odd:
        problems.append(f"config key 'experiments': levels or sizes repeat the variants {twice}")
    taken = sorted(set(names) & set(own))
    if taken:
        problems.append(f"config key 'variants': {taken} are the names of experiment variants; rename them")
    for name in ("noise", "scale"):
        if enabled(config, name) and not single_task_mixtures(config):
            problems.append(f"config key 'experiments.{name}': needs single-task pretraining mixtures (pt1-k)")
    for name in ("noise", "scale"):  # each level or size is compared with the main grid's runs of the same seeds
        block = experiment(config, name)
        missing = sorted({f"{m}_s{seed}" for m in single_task_mixtures(config) for seed in block.get("seeds", [])}
                         - pretraining_runs) if block["enabled"] else []
        if missing:
            problems.append(f"config key 'experiments.{name}.seeds': the main grid has no runs {missing} to compare "
                            "with (training.seeds)")
    problems += gradients_problems(config, pretraining_runs) if enabled(config, "gradients") else []
    if enabled(config, "subspace") and not mixture_families(config)["finetuning.mixes"]:
        problems.append("config key 'experiments.subspace': needs fine-tuning mixes (mixtures.finetuning.mixes)")
    width = 2 * config["model"]["hidden_size"]  # a §10 vector: two positions of the residual stream
    if enabled(config, "subspace") and experiment(config, "subspace")["components"] >= width:
        problems.append(f"config key 'experiments.subspace.components': {experiment(config, 'subspace')['components']} "
                        f"principal components of {width}-wide representations leave no room outside them")
    noisy = [t for m in single_task_mixtures(config) for t in mixture_families(config)["pretraining"][m]
             if config["tasks"][t].get("label_noise")]
    if enabled(config, "noise") and noisy:  # its clean condition would not be clean
        problems.append(f"config key 'tasks.{noisy[0]}.label_noise': experiments.noise compares with the main grid's "
                        "runs as the clean condition; set it to 0 while the experiment is on")
    return problems


def gradients_problems(config: dict, pretraining_runs: set[str]) -> list[str]:
    """The run is planned and saves enough checkpoints; a batch fits in a train split; there are tasks to pair."""
    from .grid import RUN_NAME, checkpoint_count, configured_tasks, recipe_settings, step_counts  # builds on this

    block, run, key = experiment(config, "gradients"), gradients_run(config), "config key 'experiments.gradients"
    problems = []
    if len(configured_tasks(config)) < 2:
        problems.append(f"{key}': needs at least two configured tasks to pair")
    if block["batch_size"] > config["datasets"]["pretraining"]["n_train"]:
        problems.append(f"{key}.batch_size': {block['batch_size']} items per batch, but a task's train split has "
                        f"{config['datasets']['pretraining']['n_train']} (datasets.pretraining.n_train)")
    if run not in pretraining_runs:
        return problems + [f"{key}.run': {run!r} is not a planned pretraining run (its checkpoints are the ones used)"]
    mixture = RUN_NAME.match(run)["mixture"]
    if mixture not in mixture_families(config)["pretraining"]:  # the batches come from the pretraining sets
        return problems + [f"{key}.run': {run!r} trained on the with-Atlantis sets, not the pretraining sets whose "
                           "batches the gradients are taken on"]
    epochs, per_epoch = step_counts(config, mixture)
    saved = checkpoint_count(epochs * per_epoch, recipe_settings(config, mixture)["checkpoint_fraction"])
    if block["checkpoints"] > saved:
        problems.append(f"{key}.checkpoints': {block['checkpoints']} asked, but {run} saves {saved} "
                        "(training.checkpoint_fraction)")
    return problems
