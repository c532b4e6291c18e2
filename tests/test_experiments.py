"""The open questions as experiments (App. C, worldrep/experiments.py): what the noise and scale experiments add to
the grid (variants, runs, stacks, noisy mixtures and datasets), and that with every experiment off the paper grid
plans exactly as before. Their smoke-size run is in tests/test_workflow.py."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from worldrep import experiments, grid
from worldrep.grid import validate_config
from worldrep.mixtures import Source

ROOT = Path(__file__).resolve().parents[1]


def load(*names: str) -> dict:
    """Config files merged in order, as `--configfile a b` merges them."""
    config = {}
    for name in names:
        update_config(config, yaml.safe_load((ROOT / "config" / name).read_text()))
    return validate_config(config)


def test_every_experiment_is_off_in_the_paper_config_and_adds_nothing():
    config = load("config.yaml")
    assert {name: block["enabled"] for name, block in config["experiments"].items()} == {
        "subspace": False, "noise": False, "gradients": False, "scale": False}
    bare = copy.deepcopy(config)
    del bare["experiments"]
    assert grid.training_runs(config) == grid.training_runs(bare)
    assert grid.training_stacks(config) == grid.training_stacks(bare)
    assert grid.dataset_pairs(config) == grid.dataset_pairs(bare) and grid.noisy_mixtures(config) == {}
    assert grid.all_mixtures(config) == grid.all_mixtures(bare)
    for run in grid.training_runs(config):  # what a training job's params are made of
        assert grid.training_mixture(config, run) == run.mixture
        assert grid.model_settings(config, run.variant) == grid.model_settings(bare, run.variant)
        assert grid.recipe_settings(config, run.mixture, run.variant) == grid.recipe_settings(bare, run.mixture,
                                                                                                run.variant)
    assert {grid.label_noise(config, v, t) for v, t in grid.dataset_pairs(config)} == {0.0}


def test_noise_levels_are_variants_of_the_single_task_mixtures():
    config = load("config.yaml", "noise.yaml")
    singles = [f"pt1-{k}" for k in range(1, 8)]
    assert experiments.single_task_mixtures(config) == singles
    noisy = [r for r in grid.training_runs(config) if r.variant]
    assert [r.name for r in noisy] == [f"{m}-noise{p}_s42" for p in (10, 30) for m in singles]
    assert {r.kind for r in noisy} == {"pretraining"}
    for run in noisy:  # the main architecture and recipe: only the labels differ
        assert grid.model_settings(config, run.variant) == config["model"]
        recipe = grid.recipe_settings(config, run.mixture, run.variant)
        assert recipe == {**grid.recipe_settings(config, run.mixture), "checkpoint_fraction": 0.25}  # 5 checkpoints
        assert grid.training_mixture(config, run) == f"{run.mixture}-{run.variant}"
    assert grid.noisy_mixtures(config)["pt1-3-noise30"] == ("pt1-3", "noise30")
    assert grid.mixture_sources(config, "pt1-3-noise30") == [Source("pretraining-noise30", "angle")]
    assert grid.train_items(config, "pt1-3-noise30") == grid.train_items(config, "pt1-3")
    noisy_sets = {p for p in grid.dataset_pairs(config) if "-" in p[0]}
    assert noisy_sets == {(f"pretraining-noise{p}", t) for p in (10, 30) for t in grid.configured_tasks(config)}
    assert grid.dataset_base("pretraining-noise30") == "pretraining"
    assert grid.label_noise(config, "pretraining-noise30", "angle") == 0.3
    assert grid.label_noise(config, "pretraining", "angle") == 0.0
    stacks = {s.name: s for s in grid.training_stacks(config)}
    assert [r.name for r in stacks["pt1-noise10"].runs] == [f"{m}-noise10_s42" for m in singles]
    main = [r for r in grid.training_runs(config) if not r.variant]  # the main grid's runs train on clean mixtures
    assert all(grid.training_mixture(config, r) == r.mixture for r in main)


def test_a_tasks_own_label_noise_is_its_datasets():
    config = load("smoke.yaml")
    config["tasks"]["distance"] = {"label_noise": 0.2}
    validate_config(config)
    assert grid.label_noise(config, "pretraining", "distance") == 0.2
    assert grid.label_noise(config, "atlantis_required", "distance") == 0.2
    assert grid.label_noise(config, "pretraining", "perimeter") == 0.0


def test_scale_sizes_are_variants_with_their_own_layers():
    config = load("config.yaml", "scale.yaml")
    names = [experiments.scale_variant(s) for s in config["experiments"]["scale"]["sizes"]]
    assert names == ["w64d4", "w256d6", "w512d8", "w512d12"]
    small, deep = grid.model_settings(config, "w64d4"), grid.model_settings(config, "w512d12")
    # head width 32, kv = heads and MLP 4x hidden, as config.yaml's model (128, 4 heads, 512)
    assert (small["num_attention_heads"], small["num_key_value_heads"], small["intermediate_size"]) == (2, 2, 256)
    assert (deep["hidden_size"], deep["num_hidden_layers"], deep["num_attention_heads"]) == (512, 12, 16)
    assert grid.representation_settings(config, "w64d4") == {"layers": [1, 2, 3, 4], "analysis_layer": 3}
    assert grid.representation_settings(config, "w512d12") == {"layers": [9, 10, 11, 12], "analysis_layer": 11}
    assert grid.representation_settings(config, "w256d6") == config["representations"]  # the paper's 3-6 and 5
    runs = [r.name for r in grid.training_runs(config) if r.variant == "w512d8"]
    assert runs == [f"pt1-{k}-w512d8_s42" for k in range(1, 8)]
    assert grid.noisy_mixtures(config) == {}  # sizes train on the clean mixtures


def test_a_size_may_set_its_own_architecture_keys():
    size = {"hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 200}
    model = experiments.scale_model({"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     "intermediate_size": 512}, size)
    assert model == {**size, "num_key_value_heads": 2}  # grouping 2 of 4 kept
    assert experiments.scale_representations(1) == {"layers": [1], "analysis_layer": 1}


def test_gradients_run_defaults_to_the_bases_first_seed():
    assert grid.gradients_run(load("config.yaml", "gradients.yaml")) == "pt7_s42"
    assert grid.gradients_run(load("laptop.yaml", "gradients.yaml")) == "pt3-1_s42"
    config = load("smoke.yaml", "gradients.yaml")
    config["experiments"]["gradients"]["run"] = "pt1-6_s42"
    assert grid.gradients_run(validate_config(config)) == "pt1-6_s42"


@pytest.mark.parametrize("level,name", [(0.1, "noise10"), (0.05, "noise5"), (0.3, "noise30"), (0.99, "noise99")])
def test_noise_variant_names(level, name):
    assert experiments.noise_variant(level) == name
