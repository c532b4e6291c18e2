"""Architecture variants (METHOD App. B) on the paper config: the `wide` block of the appendix, off by default, plans
nothing; turned on (config/wide.yaml) it adds exactly its 14 runs, their per-run jobs and its analyses. The
smoke-size variant that runs through every stage is in tests/test_workflow.py (it shares the smoke folder)."""
import copy
from pathlib import Path

import pytest
import yaml

from test_workflow import planned_jobs
from worldrep.archive import copy_workflow
from worldrep.grid import validate_config
from worldrep.grid import model_settings, recipe_settings, representation_settings, training_runs, training_stacks

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config/config.yaml").read_text())
# The appendix: FTWB1 x7 and the FTWB2 mixes A,Co; D,Cr; T,Co; I,Cr; D,P; D,Co on pt7-wide_s42.
WIDE_PAIRS = [{"angle", "compass"}, {"distance", "crossing"}, {"trianglearea", "compass"}, {"inside", "crossing"},
              {"distance", "perimeter"}, {"distance", "compass"}]


def wide_on(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["variants"]["wide"]["enabled"] = True
    return validate_config(config)


def test_the_wide_block_is_the_appendix_experiment():
    config = wide_on(PAPER)
    wide = [r for r in training_runs(config) if r.variant == "wide"]
    mixes = config["mixtures"]["finetuning"]["mixes"]
    assert [r.name for r in wide if r.kind == "pretraining"] == ["pt7-wide_s42"]
    finetuned = [r for r in wide if r.kind == "finetuning"]
    assert {r.seed for r in finetuned} == {42} and len(finetuned) == 13
    assert sorted(m for m in (r.mixture for r in finetuned) if m.startswith("ftwb1-")) == [f"ftwb1-{k}" for k in range(1, 8)]
    assert [set(mixes[r.mixture]) for r in finetuned if r.mixture.startswith("ftwb2-")] == WIDE_PAIRS
    assert model_settings(config, "wide") == {**PAPER["model"], "hidden_size": 256, "num_attention_heads": 8,
                                             "num_key_value_heads": 8, "intermediate_size": 1024}
    assert representation_settings(config, "wide") == PAPER["representations"]
    assert recipe_settings(config, "pt7", "wide")["epochs"] == 3 and recipe_settings(config, "pt7")["epochs"] == 6
    assert recipe_settings(config, "ftwb2-2", "wide") == recipe_settings(config, "ftwb2-2")  # the main recipe
    # ~6.35M parameters (hidden 256, 6 layers, intermediate 1024)
    from worldrep.plan import model_parameters
    assert round(model_parameters(model_settings(config, "wide")) / 1e6, 2) == 6.35
    # Stacks keep one architecture each: the main grid's six, then the variant's three.
    assert [s.rule for s in training_stacks(config)][-3:] == ["pretrain_pt7_wide", "finetune_ftwb1_wide",
                                                             "finetune_ftwb2_wide"]
    assert all({r.variant for r in s.runs} == {s.runs[0].variant} for s in training_stacks(config))


def test_off_it_changes_nothing_of_the_main_grid():
    without = copy.deepcopy(PAPER)
    del without["variants"]
    assert training_runs(PAPER) == training_runs(validate_config(without))
    assert training_stacks(PAPER) == training_stacks(without)
    on = wide_on(PAPER)
    assert [r for r in training_runs(on) if r.variant is None] == training_runs(PAPER)


@pytest.fixture(scope="module")
def paper_workflow(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("paper"))
    without = copy.deepcopy(PAPER)
    del without["variants"]
    (workdir / "no_variants.yaml").write_text(yaml.safe_dump(without))
    return workdir


def test_paper_dry_run_is_unchanged_with_the_block_off_and_grows_by_its_runs_when_on(paper_workflow):
    """Off: exactly the jobs of a config with no `variants` at all (179 runs). On: those plus the wide stacks, the
    14 runs' publishing, evaluation, extraction and probes, and the variant's analyses and figures; nothing else."""
    off = planned_jobs(paper_workflow, "config/config.yaml")  # what the Snakefile loads when given no config file
    assert off == planned_jobs(paper_workflow, "no_variants.yaml")
    assert sum(job.startswith("evaluate[") for job in off) == 179
    on = planned_jobs(paper_workflow, ("config/config.yaml", "config/wide.yaml"))
    runs = [r for r in training_runs(wide_on(PAPER)) if r.variant == "wide"]
    per_run = {f"{rule}[mixture={r.mixture}-wide,seed={r.seed}]" for r in runs
               for rule in ("evaluate", "representations", "probes",
                            "pretrained_model" if r.kind == "pretraining" else "finetuned_model")}
    analyses = {f"{rule}[variant=wide]" for rule in (
        "variant_evaluation_table", "variant_probe_table", "variant_generalization", "variant_atlantis_reconstruction",
        "variant_cka", "variant_figure_ftwb1_matrix", "variant_figure_ftwb2_matrix", "variant_figure_deviation_matrix",
        "variant_figure_atlantis_histogram")}
    assert on - off == {"pretrain_pt7_wide", "finetune_ftwb1_wide", "finetune_ftwb2_wide"} | per_run | analyses
    assert off <= on and len(per_run) == 56
