"""Recipes, the store and its entries (docs/METHOD.md §7.5): which runs an edit reaches, what a training job trains,
how an entry is written and published, and what `gc` and `adopt` do."""
from __future__ import annotations

import json
import os
import shutil
from copy import deepcopy
from pathlib import Path

import pytest
import yaml

from worldrep import entry, store
from worldrep.grid import validate_config
from worldrep.grid import training_runs
from worldrep.recipes import Recipes, digest

REPO = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return validate_config(yaml.safe_load((REPO / f"config/{name}.yaml").read_text()))


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """A copy of the workflow's code (worldrep/, scripts/, envs/) to edit: the recipes read code from their root."""
    root = tmp_path_factory.mktemp("code")
    for folder in ("worldrep", "scripts", "envs"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def edited(copy: Path, relative: str, text: str):
    """A context: `relative` in the copy with `text` appended (or, when `text` ends with a space, put at the start of
    the module's docstring), restored after."""
    class Edit:
        def __enter__(self):
            self.path = copy / relative
            self.original = self.path.read_text()
            quotes = self.original[:3]
            new = quotes + text + self.original[3:] if text.endswith(" ") else self.original + text
            self.path.write_text(new)

        def __exit__(self, *exc):
            self.path.write_text(self.original)
    return Edit()


def changed_runs(config: dict, copy: Path, relative: str, text: str) -> set[str]:
    before = Recipes(config, copy).run_hashes()
    with edited(copy, relative, text):
        after = Recipes(config, copy).run_hashes()
    return {run for run in before if before[run] != after[run]}


def test_recipe_hashes_are_those_of_the_repository_from_a_copy(copy):
    config = load("smoke")
    assert Recipes(config, copy).run_hashes() == Recipes(config, REPO).run_hashes()


def test_every_run_has_its_own_hash():
    hashes = Recipes(load("config")).run_hashes()
    assert len(hashes) == 179 and len(set(hashes.values())) == 179


@pytest.mark.parametrize("task, reached", [("distance", 134), ("crossing", 134)])
def test_a_task_edit_reaches_exactly_the_runs_that_train_on_it(copy, task, reached):
    """The paper grid: a real code change of one task module changes the recipe of every run whose mixture holds that
    task, of every run fine-tuned from such a base, and of no other (worked out by hand below); a comment does
    nothing. Fine-tuning mixes draw every task's Atlantis-required set (the buffer), so all 48 of them follow."""
    config = load("config")
    runs = training_runs(config)
    pretraining = {**config["mixtures"]["pretraining"], **config["mixtures"]["with_atlantis"]}
    expected = {r.name for r in runs if r.kind == "finetuning" or task in pretraining[r.mixture]}
    assert changed_runs(config, copy, f"worldrep/tasks/{task}.py", "\n_EDIT = 1\n") == expected
    assert len(expected) == reached
    assert changed_runs(config, copy, f"worldrep/tasks/{task}.py", "\n# a comment\n") == set()


def test_training_code_reaches_every_run_and_a_comment_none(copy):
    config = load("smoke")
    every = {r.name for r in training_runs(config)}
    assert changed_runs(config, copy, "worldrep/stack.py", "\n# a comment\n") == set()
    assert changed_runs(config, copy, "worldrep/stack.py", "Edited docstring. ") == set()
    assert changed_runs(config, copy, "worldrep/stack.py", "\n_EDIT = 1\n") == every
    assert changed_runs(config, copy, "worldrep/plan.py", "\n_EDIT = 1\n") == set()  # planning code trains nothing


def test_a_setting_reaches_the_runs_it_shapes():
    config = load("smoke")
    before = Recipes(config).run_hashes()
    more = yaml.safe_load(yaml.safe_dump(config))
    more["training"]["finetuning"]["epochs"] += 1
    after = Recipes(more).run_hashes()
    assert {r for r in before if before[r] != after[r]} == {"ftwb1-1_s42", "ftwb1-6_s42", "ftwb2-13_s42"}
    lease = {**config, "gpu": {"slots_per_device": 4, "lock_dir": "/elsewhere"}}  # where, not what
    speed = {**config, "training": {**config["training"], "stack": "mixture", "cuda_graphs": False}}
    assert Recipes(lease).run_hashes() == Recipes(speed).run_hashes() == before


def test_digest_ignores_key_order():
    assert digest({"a": 1, "b": [1, {"c": 2, "d": 3}]}) == digest({"b": [1, {"d": 3, "c": 2}], "a": 1})


def complete(results: Path, recipe_hash: str) -> None:
    path = entry.marker_path(results, recipe_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


@pytest.mark.parametrize("mode", ["family", "mixture", "whole-family"])
def test_training_jobs_train_what_is_missing(tmp_path, mode):
    config = load("smoke")
    config["training"]["stack"] = mode
    hashes = Recipes(config).run_hashes()
    every = [job.stack.rule for job in store.training_jobs(config, hashes, tmp_path)]
    for run, recipe_hash in hashes.items():
        if run != "pt1-6_s42":
            complete(tmp_path, recipe_hash)
    [job] = store.training_jobs(config, hashes, tmp_path)
    assert job.stale == ("pt1-6_s42",)
    trained = [r.name for r in job.stack.runs]
    if mode == "mixture":
        assert job.stack.rule == "pretrain_pt1_6" and trained == ["pt1-6_s42"] and len(every) == 10
    elif mode == "family":
        assert job.stack.rule == "pretrain_pt1" and trained == ["pt1-6_s42"] and len(every) == 7
    else:  # the whole family trains, so that on a GPU the stale run rounds as in a clean build
        assert job.stack.rule == "pretrain_pt1" and trained == ["pt1-1_s42", "pt1-6_s42", "pt1-7_s42"]
    complete(tmp_path, hashes["pt1-6_s42"])
    assert store.training_jobs(config, hashes, tmp_path) == []


def test_a_missing_product_plans_its_stack_to_compute_it_from_the_stored_weights(tmp_path):
    """Every model stored and every product but pt1-6's representations and pt7's checkpoint evaluation: two jobs
    that train nothing, read those runs' entries and write exactly those products."""
    config = load("smoke")
    recipes = Recipes(config)
    hashes, products = recipes.run_hashes(), recipes.product_hashes()
    assert {p for (_, p) in products} == {"evaluation", "representations", "checkpoint_evaluation",
                                          "checkpoint_representations"}
    assert products[("pt7_s42", "checkpoint_evaluation")] not in hashes.values()
    missing = {("pt1-6_s42", "representations"), ("pt7_s42", "checkpoint_evaluation")}
    for recipe_hash in [*hashes.values(), *(h for key, h in products.items() if key not in missing)]:
        complete(tmp_path, recipe_hash)
    jobs = store.training_jobs(config, hashes, tmp_path, products)
    assert [(j.stack.rule, j.stack.runs, j.stale, j.products, j.loaded) for j in jobs] == [
        ("pretrain_pt1", (), (), (("pt1-6_s42", "representations"),), ("pt1-6_s42",)),
        ("pretrain_pt7", (), (), (("pt7_s42", "checkpoint_evaluation"),), ("pt7_s42",))]
    complete(tmp_path, products[("pt1-6_s42", "representations")])
    hashes = {**hashes, "pt1-6_s42": "0" * 16}  # its model missing too (an edit): trained, its products with it
    [pt1, _] = store.training_jobs(config, hashes, tmp_path, products)
    assert pt1.stale == ("pt1-6_s42",) and [r.name for r in pt1.stack.runs] == ["pt1-6_s42"] and pt1.loaded == ()


def test_product_recipes_change_with_their_own_params_only():
    """The evaluation's batch size changes every evaluation's recipe and nothing else; the extracted layers every
    representation's; a run's training seed its model and all its products."""
    config = load("smoke")
    base = Recipes(config).product_hashes()
    runs = Recipes(config).run_hashes()

    def changed(edit):
        edited = deepcopy(config)
        edit(edited)
        recipes = Recipes(edited)
        return ({key for key, h in recipes.product_hashes().items() if base[key] != h},
                {run for run, h in recipes.run_hashes().items() if runs[run] != h})

    products, models = changed(lambda c: c["evaluation"].update(batch_size=7))
    assert models == set() and products == {key for key in base if key[1].endswith("evaluation")}
    products, models = changed(lambda c: c["representations"].update(layers=[1, 2]))
    assert models == set() and products == {key for key in base if key[1].endswith("representations")}


def work_folder(tmp_path: Path) -> Path:
    work = tmp_path / "store/abc.work"
    (work / "final").mkdir(parents=True)
    (work / "final/model.safetensors").write_bytes(b"weights")
    (work / "checkpoints/step-000000").mkdir(parents=True)
    (work / "checkpoints/step-000000/model.safetensors").write_bytes(b"w0")
    (work / "training_log.csv").write_text("step\n")
    (work / "validation_log.csv").write_text("step\n")
    (work / "resume_state.pt").write_bytes(b"state")
    return work


def test_an_entry_appears_whole_with_its_marker_written_last(tmp_path):
    work = work_folder(tmp_path)
    target = tmp_path / "store/abc"
    target.mkdir()  # as Snakemake makes the folder of the marker before the job runs
    entry.finish_entry(work, target, entry.PRETRAINING_FILES, {"run": "r", "inputs_sha256": {}})
    assert sorted(p.name for p in target.iterdir()) == sorted([*entry.PRETRAINING_FILES, entry.MARKER])
    assert json.loads((target / entry.MARKER).read_text()) == {"run": "r", "inputs_sha256": {}}
    assert (target / "checkpoints/step-000000/model.safetensors").read_bytes() == b"w0"
    assert not list((tmp_path / "store").glob("*.partial"))
    assert (work / "resume_state.pt").exists()  # its job removes it once all of its entries exist


def test_a_kill_before_the_rename_leaves_no_entry_and_the_work_folder_whole(tmp_path, monkeypatch):
    work = work_folder(tmp_path)
    target = tmp_path / "store/abc"

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        entry.finish_entry(work, target, entry.PRETRAINING_FILES, {"run": "r"})
    assert not entry.is_complete(tmp_path, "abc")
    assert (work / "resume_state.pt").read_bytes() == b"state" and (work / "final/model.safetensors").exists()


def test_publish_links_the_entry_final_last_and_refuses_other_inputs(tmp_path, monkeypatch):
    from worldrep.artifacts import sha256_file

    mixture = tmp_path / "train.npz"
    mixture.write_bytes(b"tokens")
    work = work_folder(tmp_path)
    target = tmp_path / "store/abc"
    entry.finish_entry(work, target, entry.PRETRAINING_FILES, {"run": "r", "inputs_sha256": {"train": sha256_file(mixture)}})
    outputs = {name: tmp_path / "models/r" / name for name in entry.PRETRAINING_FILES}
    order = []
    original = entry.link_tree
    monkeypatch.setattr(entry, "link_tree", lambda source, target: (order.append(source.name), original(source, target)))
    entry.publish(target, outputs, {"train": mixture})
    assert order[-1] == "final" and sorted(order) == sorted(outputs)
    published, stored = outputs["final"] / "model.safetensors", target / "final/model.safetensors"
    assert published.read_bytes() == b"weights" and os.path.samefile(published, stored)  # a hard link, not a copy
    mixture.write_bytes(b"other tokens")
    with pytest.raises(entry.StaleEntry, match=r"train input .* same recipe, other bytes"):
        entry.publish(target, outputs, {"train": mixture})


def test_gc_keeps_what_a_config_names(tmp_path):
    config = load("smoke")
    hashes = Recipes(config).run_hashes()
    keep = hashes["pt7_s42"]
    for name in (keep, f"{keep}.work", "0123456789abcdef", "0123456789abcdef.work", "fedcba9876543210.partial"):
        (tmp_path / "store" / name).mkdir(parents=True)
    removed = store.garbage(set(hashes.values()), tmp_path)
    assert [p.name for p in removed] == ["0123456789abcdef", "0123456789abcdef.work", "fedcba9876543210.partial"]
    complete(tmp_path, keep)  # a work folder beside a complete entry is a leftover
    assert {p.name for p in store.garbage(set(hashes.values()), tmp_path)} == {
        "0123456789abcdef", "0123456789abcdef.work", f"{keep}.work", "fedcba9876543210.partial"}
    shutil.rmtree(tmp_path / "store" / keep)
    (tmp_path / "store" / keep).mkdir()
    smoke = tmp_path / "smoke.yaml"
    smoke.write_text((REPO / "config/smoke.yaml").read_text())
    assert store.main(["gc", "--configfile", str(smoke), "--results", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [keep, f"{keep}.work"]


def test_a_published_product_is_checked_against_its_params_before_adoption(tmp_path):
    """What adoption can read off a published product: an evaluation's test sets (in order, per step for the
    checkpoint curves) and precision; the layers of every representation file; files that are missing."""
    import numpy as np

    np.savez(tmp_path / "final.npz", city_ids=np.arange(3), layer_convention=np.array("x"), layer_2=np.zeros((3, 4)),
             layer_3=np.zeros((3, 4)))
    assert store.product_problems("representations", {"layers": [3, 2]}, tmp_path) == []
    assert store.product_problems("representations", {"layers": [3]}, tmp_path) == ["layers"]
    (tmp_path / "checkpoints").mkdir()
    for step, layers in (("000000", (2, 3)), ("000010", (2,))):
        np.savez(tmp_path / f"checkpoints/step-{step}.npz", **{f"layer_{k}": np.zeros(1) for k in layers})
    assert store.product_problems("checkpoint_representations", {"layers": [2, 3]}, tmp_path) == ["layers"]
    rows = "step,test_set,task,metric,value,n,failures,precision\n" + "".join(
        f"{s},standard,{t},accuracy,0.5,10,0,fp32\n" for s in (0, 10) for t in ("distance", "angle"))
    (tmp_path / "checkpoints.csv").write_text(rows)
    params = {"test_sets": ["pretraining/distance", "pretraining/angle"], "precision": {"cpu": "fp32", "cuda": "fp16"}}
    assert store.product_problems("checkpoint_evaluation", params, tmp_path) == []
    assert store.product_problems("checkpoint_evaluation", {**params, "test_sets": params["test_sets"][::-1]},
                                  tmp_path) == ["test sets"]
    assert store.product_problems("checkpoint_evaluation", {**params, "precision": {"cpu": "bf16"}},
                                  tmp_path) == ["precision"]
    assert store.product_problems("evaluation", params, tmp_path) == ["files"]
