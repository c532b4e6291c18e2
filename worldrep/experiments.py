"""The paper's open questions as experiments (docs/METHOD.md Appendix C): what each adds to the grid.

Two of them train: label noise (`experiments.noise`) and model size (`experiments.scale`) each add one architecture
variant per level or size (Appendix B's `variants` machinery: own runs, stacks, per-run jobs, results/variants/{name}/),
over the config's single-task mixtures. The other two (subspace, gradients) only analyse runs the grid has. No torch
here: the Snakefile plans with this. The grid (worldrep.grid) builds on these blocks; the checks that need its runs
live there (`experiment_problems`, `gradients_run`).
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
