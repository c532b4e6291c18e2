"""The experiment grid (METHOD §7.3, §8) from the shipped configs: runs, seeds, recipes and test sets, and the
exact training and evaluation jobs Snakemake plans for the paper grid."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from worldrep.archive import copy_workflow
from worldrep.config import ConfigError
from worldrep.grid import validate_config
from worldrep.grid import evaluation_sets, recipe_settings, stack_problems, training_runs, training_stacks
from worldrep.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config/config.yaml").read_text())
SMOKE = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())


def family(mixture: str) -> str:
    return mixture.split("-")[0] if mixture != "pt7-atl" else mixture


def test_paper_grid_is_179_runs_with_the_spec_seeds():
    runs = training_runs(PAPER)
    assert len(runs) == 179 and len({r.name for r in runs}) == 179
    per_family = Counter(family(r.mixture) for r in runs)
    assert per_family == {"pt1": 21, "pt2": 21, "pt3": 21, "pt7": 4, "ftwb1": 28, "ftwb2": 84}
    seeds = {f: sorted({r.seed for r in runs if family(r.mixture) == f}) for f in per_family}
    assert seeds == {"pt1": [1, 2, 42], "pt2": [1, 2, 42], "pt3": [1, 2, 42], "pt7": [1, 2, 3, 42],
                     "ftwb1": [1, 2, 3, 42], "ftwb2": [1, 2, 3, 42]}
    assert Counter(r.kind for r in runs) == {"pretraining": 67, "finetuning": 112}


def test_optional_control_and_seed_override():
    """[42] for pt7-atl adds the 180th run; a per-mixture entry replaces a failed seed and is recorded."""
    config = copy.deepcopy(PAPER)
    config["training"]["seeds"]["pt7-atl"] = [42]
    config["training"]["seeds"]["pt1-5"] = [42, 1, 3]
    runs = {r.name: r for r in training_runs(config)}
    assert len(runs) == 180 and "pt7-atl_s42" in runs
    assert {"pt1-5_s3", "pt1-5_s42"} <= set(runs) and "pt1-5_s2" not in runs
    assert runs["pt1-5_s3"].seeds_entry == "pt1-5" and runs["pt1-4_s2"].seeds_entry == "default"
    assert runs["ftwb2-7_s3"].seeds_entry == "pt7"


@pytest.mark.parametrize("mixture, epochs, lr", [("pt1-4", 42, 3e-4), ("pt2-6", 21, 3e-4), ("pt3-1", 14, 3e-4),
                                                 ("pt7", 6, 3e-4), ("pt7-atl", 6, 3e-4), ("ftwb1-2", 30, 1e-5),
                                                 ("ftwb2-21", 30, 1e-5)])
def test_recipes_follow_the_spec(mixture, epochs, lr):
    recipe = recipe_settings(PAPER, mixture)
    assert (recipe["epochs"], recipe["peak_lr"]) == (epochs, lr)
    assert recipe["batch_size"] == 128 and recipe["warmup_steps"] == 50 and recipe["grad_clip"] == 1.0
    assert recipe["betas"] == [0.9, 0.999] and recipe["eps"] == 1e-8 and recipe["weight_decay"] == 0.01


def test_evaluation_sets_follow_the_spec():
    """§8: 7-task and fine-tuned models on all 14 sets; 1-3 task models on their own standard sets."""
    every = [("pretraining", t) for t in TASK_NAMES] + [("atlantis_required", t) for t in TASK_NAMES]
    assert evaluation_sets(PAPER, "pt7") == every
    assert evaluation_sets(PAPER, "pt7-atl") == every
    assert evaluation_sets(PAPER, "ftwb1-3") == every
    assert evaluation_sets(PAPER, "pt2-4") == [("pretraining", "distance"), ("pretraining", "crossing")]
    assert evaluation_sets(PAPER, "pt1-3") == [("pretraining", "angle")]


def test_paper_dry_run_plans_exactly_the_grid(tmp_path):
    """`snakemake -n` on the paper config: one job per run and per evaluation, named as the grid says."""
    copy_workflow(tmp_path)  # a copy: no results/ of ours
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules"], cwd=tmp_path, text=True,
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out.stdout, re.M)}
    # training.stack: family -> one training job per family (pt7-atl has no runs), each training all its runs; the
    # 179 runs' outputs are listed under --summary below
    assert {rule: n for rule, n in counts.items() if rule.startswith(("pretrain_", "finetune_"))} == {
        "pretrain_pt1": 1, "pretrain_pt2": 1, "pretrain_pt3": 1, "pretrain_pt7": 1, "finetune_ftwb1": 1,
        "finetune_ftwb2": 1}
    assert counts["evaluate"] == 179 and counts["evaluate_checkpoints"] == 1 and counts["evaluation_table"] == 1
    listing = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--summary"], cwd=tmp_path, text=True,
                             capture_output=True)
    assert listing.returncode == 0, listing.stderr
    finals = set(re.findall(r"results/models/([a-z0-9-]+_s\d+)/final\b", listing.stdout))
    assert finals == {r.name for r in training_runs(PAPER)}


def test_stacks_group_the_paper_grid_by_family_or_by_mixture():
    """`training.stack: family`: the six families of METHOD §7.3, every run in exactly one, fine-tuning apart from
    pretraining; `mixture`: every seed of one mixture together (3 each, 4 for pt7 and its fine-tuning mixes)."""
    family_stacks = training_stacks(PAPER)
    assert [(s.rule, s.kind, len(s.runs)) for s in family_stacks] == [
        ("pretrain_pt1", "pretraining", 21), ("pretrain_pt2", "pretraining", 21), ("pretrain_pt3", "pretraining", 21),
        ("pretrain_pt7", "pretraining", 4), ("finetune_ftwb1", "finetuning", 28), ("finetune_ftwb2", "finetuning", 84)]
    runs = [run for stack in family_stacks for run in stack.runs]
    assert sorted(r.name for r in runs) == sorted(r.name for r in training_runs(PAPER))
    assert all({family(r.mixture) for r in s.runs} == {s.name} for s in family_stacks)
    by_mixture = training_stacks({**PAPER, "training": {**PAPER["training"], "stack": "mixture"}})
    assert len(by_mixture) == 22 + 28 and all({r.mixture for r in s.runs} == {s.name} for s in by_mixture)
    assert Counter(len(s.runs) for s in by_mixture) == {3: 21, 4: 29}
    assert by_mixture[0].rule == "pretrain_pt1_1" and by_mixture[-1].rule == "finetune_ftwb2_21"


def test_a_family_of_different_step_counts_is_refused_at_planning(monkeypatch):
    """A stack shares one step count. With today's config every mixture of a family has the same size (one train
    size per dataset variant), so a larger pt1-6 is made by hand: planning names the stack and each mixture's
    step counts, under `family` only, before any job."""
    from worldrep import grid

    sizes = grid.train_items
    monkeypatch.setattr(grid, "train_items", lambda config, m: sizes(config, m) * (2 if m == "pt1-6" else 1))
    problems = stack_problems(SMOKE)
    assert problems == ["config key 'training.stack': stack 'pt1' (pretraining) groups runs of different step counts "
                        "(pt1-1: 2 epochs x 2 steps, pt1-6: 2 epochs x 4 steps, pt1-7: 2 epochs x 2 steps); use "
                        "`training.stack: mixture` or equal sizes"]
    with pytest.raises(ConfigError, match="stack 'pt1'"):
        validate_config(copy.deepcopy(SMOKE))
    assert stack_problems({**SMOKE, "training": {**SMOKE["training"], "stack": "mixture"}}) == []


def test_smoke_grid_has_every_kind_of_run():
    runs = training_runs(SMOKE)
    assert {family(r.mixture) for r in runs} == {"pt1", "pt2", "pt3", "pt7", "pt7-atl", "ftwb1", "ftwb2"}
    assert all(r.seed == 42 for r in runs)


def test_quick_grid_has_what_each_claim_needs():
    """config/quick.yaml: every single-task and two-task run, pt7, every FTWB1 teacher, and FTWB2
    pairs with and without distance, one seed each."""
    quick = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    runs = training_runs(quick)
    names = {r.mixture for r in runs}
    assert {f"pt1-{k}" for k in range(1, 8)} | {f"pt2-{k}" for k in range(1, 8)} | {"pt7"} <= names
    assert {f"ftwb1-{k}" for k in range(1, 8)} <= names
    pairs = {m: quick["mixtures"]["finetuning"]["mixes"][m] for m in names if m.startswith("ftwb2-")}
    with_distance = [m for m, tasks in pairs.items() if "distance" in tasks]
    assert len(with_distance) >= 3 and len(pairs) - len(with_distance) >= 3
    assert {r.seed for r in runs} == {42} and len(runs) == 30
    steps = recipe_settings(quick, "pt1-1")["epochs"] * -(-quick["datasets"]["pretraining"]["n_train"] // 128)
    assert steps < 328_146 / 10  # a tenth of a paper run at most


# ---- items per city (docs/METHOD.md §7.4) ---------------------------------------------------------------------

def test_every_paper_pretraining_run_sees_42m_items():
    """METHOD §7.1 'Budget': 1M × 42 = 2M × 21 = 3M × 14 = 7M × 6 sequences, each task its share."""
    from worldrep.grid import items_seen, pretraining_mixtures

    for mixture, tasks in pretraining_mixtures(PAPER).items():
        seen = items_seen(PAPER, mixture)
        assert list(seen) == tasks and sum(seen.values()) == 42_000_000, mixture
        assert set(seen.values()) == {42_000_000 // len(tasks)}, mixture


def test_short_runs_are_counted_per_task_against_the_rule():
    from worldrep.grid import items_per_city, short_runs

    laptop = yaml.safe_load((ROOT / "config/laptop.yaml").read_text())
    assert items_per_city(laptop, "pt1-1", 564) == {"distance": 20 * 100_000 / 564}
    assert items_per_city(laptop, "pt3-1", 564) == {t: 8 * 100_000 / 564 for t in ("distance", "trianglearea", "angle")}
    short = short_runs(laptop, 564, rule=2000)
    assert list(short) == ["pt3-1"]  # 1,418 per task, though 4,255 pooled: the rule counts per task
    assert short_runs(laptop, 564, rule=1400) == {}
    assert set(short_runs(SMOKE, 6204)) == set(SMOKE["mixtures"]["pretraining"]) | {"pt7-atl"}
    assert "pt7-atl" in PAPER["mixtures"]["with_atlantis"] and list(short_runs(PAPER, 6204)) == ["pt7"]  # no seeds


def test_planning_warns_about_each_short_run_and_carries_on():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/smoke.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warned = re.findall(r"warning: runs of (\S+) see (.*?) items per real city \(([\d,]+) cities\)", proc.stderr)
    assert sorted(m for m, _, _ in warned) == sorted([*SMOKE["mixtures"]["pretraining"], "pt7-atl"])
    seen = {m: items for m, items, _ in warned}
    assert seen["pt1-1"] == "distance 0.081" and seen["pt2-1"] == "distance 0.04, trianglearea 0.04"
    assert {cities for _, _, cities in warned} == {"6,204"}
