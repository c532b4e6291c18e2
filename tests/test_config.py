"""Config validation (worldrep/config.py + config/schema.json), and the Snakefile's validation at load.

Every bad config is a deep copy of config/smoke.yaml with one mutation. A case passes only if the
ConfigError message has a line that names the offending key path *and* states the problem on that line.
"""
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from worldrep.config import ConfigError
from worldrep.grid import validate_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
V = "variants.small"


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "quick.yaml", "laptop.yaml", "paper_pt1.yaml"])
def test_shipped_configs_validate(name):
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    assert validate_config(config) is config


@pytest.mark.parametrize("name,overlay", [("config.yaml", "wide.yaml")] + [
    (base, f"{experiment}.yaml") for base in ("config.yaml", "smoke.yaml", "quick.yaml", "laptop.yaml")
    for experiment in ("subspace", "noise", "gradients", "scale")])
def test_overlays_validate_over_their_bases(name, overlay):
    """Each overlay merged over a base as Snakemake merges --configfile lists (dicts recursively, the rest replaced):
    wide.yaml turns on config.yaml's block; the experiments' overlays are whole blocks, valid over any base."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config" / name).read_text())
    update_config(config, yaml.safe_load((ROOT / "config" / overlay).read_text()))
    validate_config(config)


def setp(path, value):
    """Mutation: set the dotted key `path` (list indices allowed) to `value`."""
    def mutate(c):
        *parents, last = path.split(".")
        for p in parents:
            c = c[int(p)] if isinstance(c, list) else c[p]
        c[int(last) if isinstance(c, list) else last] = value
    return mutate


def on(mutate):
    """The mutation, then smoke.yaml's `small` variant turned on (its mixtures are checked only when it trains)."""
    def both(c):
        mutate(c)
        c["variants"]["small"]["enabled"] = True
    return both


def experiment(name, **settings):
    """Mutation: the overlay config/{name}.yaml's block, with `settings` over it."""
    def mutate(c):
        block = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())["experiments"][name]
        c.setdefault("experiments", {})[name] = {**block, **settings}
    return mutate


def delp(path):
    def mutate(c):
        *parents, last = path.split(".")
        for p in parents:
            c = c[p]
        del c[last]
    return mutate


FT = "mixtures.finetuning"
BAD = {  # id: (mutation, key path named in the message, problem text on the same line)
    "unknown-top-level-key": (setp("extras", 1), "<top level>", "'extras' was unexpected"),
    "unknown-nested-key-typo": (setp("datasets.pretraining.n_trian", 5), "datasets.pretraining",
                                "'n_trian' was unexpected"),
    "string-n_train": (setp("datasets.pretraining.n_train", "2000"), "datasets.pretraining.n_train",
                       "is not of type 'integer'"),
    "fractional-float-seed": (setp("datasets.seed", 42.5), "datasets.seed", "is not of type 'integer'"),
    # YAML `seed: 42.0` loads as a float; numpy's SeedSequence / default_rng reject it with TypeError.
    "integral-float-seed": (setp("datasets.seed", 42.0), "datasets.seed", "is not of type 'integer'"),
    # A float size breaks slicing (`a[:2000.0]` is a TypeError) inside a job, long after load.
    "integral-float-n_train": (setp("datasets.pretraining.n_train", 2000.0), "datasets.pretraining.n_train",
                               "is not of type 'integer'"),
    "bool-n_test": (setp("datasets.atlantis_required.n_test", True), "datasets.atlantis_required.n_test",
                    "is not of type 'integer'"),
    "zero-n_val": (setp("datasets.pretraining.n_val", 0), "datasets.pretraining.n_val",
                   "less than the minimum of 1"),
    "negative-buffer_items": (setp(f"{FT}.buffer_items", -5), f"{FT}.buffer_items", "less than the minimum of 1"),
    "zero-atlantis-std": (setp("world.atlantis.std", 0), "world.atlantis.std", "less than or equal to the minimum"),
    "nan-atlantis-center": (setp("world.atlantis.center.0", float("nan")), "world.atlantis.center", "is not finite"),
    "infinite-atlantis-std": (setp("world.atlantis.std", float("inf")), "world.atlantis.std", "is not finite"),
    "negative-seed": (setp("mixtures.seed", -1), "mixtures.seed", "less than the minimum of 0"),
    "unknown-task-under-tasks": (setp("tasks.distanse", {}), "tasks", "'distanse' is not one of"),
    "settings-on-settingless-task": (setp("tasks.distance", {"k": 2}), "tasks.distance", "'k' was unexpected"),
    "unknown-task-in-mixture": (setp("mixtures.pretraining.pt2-1", ["distance", "distanse"]),
                                "mixtures.pretraining.pt2-1.1", "'distanse' is not one of"),
    "duplicate-task-in-mixture": (setp(f"{FT}.mixes.ftwb2-2", ["angle", "angle"]), f"{FT}.mixes.ftwb2-2",
                                  "non-unique elements"),
    "empty-mixture": (setp("mixtures.pretraining.pt1-1", []), "mixtures.pretraining.pt1-1", "should be non-empty"),
    "mixture-task-not-configured": (delp("tasks.crossing"), "mixtures.pretraining.pt1-7",
                                    "['crossing'] are not configured under 'tasks'"),
    "replay-exceeds-pretraining-n_train": (setp(f"{FT}.replay_items", 251), f"{FT}.replay_items",
                                           "'datasets.pretraining.n_train' is only 250"),
    "buffer-exceeds-atlantis-required-n_train": (setp(f"{FT}.buffer_items", 101), f"{FT}.buffer_items",
                                                 "'datasets.atlantis_required.n_train' is only 100"),
    "mixture-name-in-two-families": (setp(f"{FT}.mixes.pt7", ["distance"]), f"{FT}.mixes.pt7",
                                     "also defined at 'mixtures.pretraining.pt7'"),
    "inside-hull-size-2": (setp("tasks.inside.hull_sizes", [2, 3]), "tasks.inside.hull_sizes.0",
                           "less than the minimum of 3"),
    "perimeter-city-count-1": (setp("tasks.perimeter.city_counts", [1, 2]), "tasks.perimeter.city_counts.0",
                               "less than the minimum of 2"),
    "atlantis-count-over-10000": (setp("world.atlantis.count", 10001), "world.atlantis.count",
                                  "greater than the maximum of 10000"),
    "center-latitude-out-of-range": (setp("world.atlantis.center.1", 91.0), "world.atlantis.center.1",
                                     "greater than the maximum of 90"),
    "center-longitude-out-of-range": (setp("world.atlantis.center.0", -180.5), "world.atlantis.center.0",
                                      "less than the minimum of -180"),
    "min-population-below-package-floor": (setp("world.min_population", 1000), "world.min_population",
                                           "less than the minimum of 15000"),
    "missing-datasets-seed": (delp("datasets.seed"), "datasets", "'seed' is a required property"),
    "with-atlantis-mixtures-without-dataset": (delp("datasets.with_atlantis"), "datasets.with_atlantis",
                                               "required because 'mixtures.with_atlantis' is not empty"),
    "mixture-name-with-slash": (setp("mixtures.pretraining.pt/1", ["distance"]), "mixtures.pretraining",
                                "'pt/1' does not match"),
    "mixture-name-uppercase": (setp(f"{FT}.mixes.FTWB1-1", ["distance"]), f"{FT}.mixes", "'FTWB1-1' does not match"),
    # training, evaluation, gpu
    "seeds-for-unknown-mixture": (setp("training.seeds.pt9", [1]), "training.seeds.pt9", "no mixture is named 'pt9'"),
    "seeds-without-default": (delp("training.seeds.default"), "training.seeds", "'default' is a required property"),
    "duplicate-seed": (setp("training.seeds.default", [42, 42]), "training.seeds.default", "non-unique elements"),
    "negative-seed-in-training": (setp("training.seeds.pt7", [-1]), "training.seeds.pt7.0", "less than the minimum of 0"),
    "finetuning-seed-without-base": (setp("training.seeds.ftwb1-1", [7]), "training.seeds.ftwb1-1",
                                     "seeds [7] have no 'pt7' base model"),
    "base-not-a-pretraining-mixture": (setp("training.base", "ftwb1-1"), "training.base",
                                       "'ftwb1-1' is not a configured pretraining mixture"),
    "epochs-missing-for-task-count": (lambda c: c["training"]["pretraining"]["epochs"].pop(3), "training.pretraining.epochs",
                                      "no entry for 3 task(s), needed by mixture 'pt3-2'"),
    "epochs-key-not-a-count": (setp("training.pretraining.epochs.two", 5), "training.pretraining.epochs",
                               "keys ['two'] are not task counts"),
    "zero-epochs": (setp("training.finetuning.epochs", 0), "training.finetuning.epochs", "less than the minimum of 1"),
    "negative-lr": (setp("training.pretraining.peak_lr", -1e-3), "training.pretraining.peak_lr",
                    "less than or equal to the minimum of 0"),
    "beta-of-one": (setp("training.betas.1", 1.0), "training.betas.1", "greater than or equal to the maximum of 1"),
    "unknown-precision": (setp("training.precision.cuda", "fp8"), "training.precision.cuda", "'fp8' is not one of"),
    "fp16-on-cpu": (setp("training.precision.cpu", "fp16"), "training.precision.cpu", "'fp16' is not one of"),
    "checkpoint-fraction-over-one": (setp("training.checkpoint_fraction", 1.5), "training.checkpoint_fraction",
                                     "greater than the maximum of 1"),
    "compile-not-boolean": (setp("training.compile", "yes"), "training.compile", "'yes' is not of type 'boolean'"),
    "unplanned-checkpoint-run": (setp("evaluation.checkpoint_runs", ["pt7_s1"]), "evaluation.checkpoint_runs",
                                 "'pt7_s1' is not a planned pretraining run"),
    "zero-slots-per-device": (setp("gpu.slots_per_device", 0), "gpu.slots_per_device", "less than the minimum of 1"),
    "missing-gpu-section": (delp("gpu"), "<top level>", "'gpu' is a required property"),
    "negative-probe-seed": (setp("probes.seed", -3), "probes.seed", "less than the minimum of 0"),
    "zero-atlantis-baseline": (setp("probes.atlantis_baseline", 0), "probes.atlantis_baseline",
                               "less than the minimum of 1"),
    # model and representations (METHOD §6, §10)
    "heads-not-dividing-hidden": (setp("model.num_attention_heads", 3), "model.num_attention_heads",
                                  "3 heads do not divide hidden_size 128"),
    "odd-head-dim": (setp("model.hidden_size", 132), "model.num_attention_heads",
                     "head_dim 33 (hidden_size / heads) must be even"),
    "kv-heads-not-dividing-heads": (setp("model.num_key_value_heads", 3), "model.num_key_value_heads",
                                    "3 kv-heads do not divide 4 attention heads"),
    "zero-layers": (setp("model.num_hidden_layers", 0), "model.num_hidden_layers", "less than the minimum of 1"),
    "layer-beyond-depth": (setp("model.num_hidden_layers", 4), "representations.layers",
                           "[5, 6] lie beyond the model's depth (model.num_hidden_layers = 4"),
    "analysis-layer-not-extracted": (setp("representations.analysis_layer", 2), "representations.analysis_layer",
                                     "2 is not one of the extracted layers [3, 4, 5, 6]"),
    "zero-init-std": (setp("model.init_std", 0), "model.init_std", "less than or equal to the minimum of 0"),
    "unknown-model-key": (setp("model.hidden", 64), "model", "'hidden' was unexpected"),
    "missing-model-section": (delp("model"), "<top level>", "'model' is a required property"),
    # architecture variants (METHOD Appendix B): smoke.yaml's `small` (hidden 64, 4 heads, 4 layers, layers 2-4)
    "variant-heads-not-dividing-hidden": (setp(f"{V}.model.num_attention_heads", 3), f"{V}.model.num_attention_heads",
                                          "3 heads do not divide hidden_size 64"),
    "variant-odd-head-dim": (setp(f"{V}.model.hidden_size", 68), f"{V}.model.num_attention_heads",
                             "head_dim 17 (hidden_size / heads) must be even"),
    "variant-kv-heads-not-dividing-heads": (setp(f"{V}.model.num_key_value_heads", 3), f"{V}.model.num_key_value_heads",
                                            "3 kv-heads do not divide 4 attention heads"),
    "variant-zero-layers": (setp(f"{V}.model.num_hidden_layers", 0), f"{V}.model.num_hidden_layers",
                            "less than the minimum of 1"),
    "variant-layer-beyond-depth": (setp(f"{V}.model.num_hidden_layers", 3), f"{V}.representations.layers",
                                   "[4] lie beyond the model's depth (variants.small.model.num_hidden_layers = 3"),
    "variant-inherited-layers-beyond-depth": (delp(f"{V}.representations"), f"{V}.representations.layers",
                                              "[5, 6] lie beyond the model's depth"),
    "variant-analysis-layer-not-extracted": (setp(f"{V}.representations.analysis_layer", 1),
                                             f"{V}.representations.analysis_layer",
                                             "1 is not one of the extracted layers [2, 3, 4]"),
    "variant-unknown-model-key": (setp(f"{V}.model.hidden", 64), f"{V}.model", "'hidden' was unexpected"),
    "variant-zero-hidden": (setp(f"{V}.model.hidden_size", 0), f"{V}.model.hidden_size", "less than the minimum of 1"),
    "variant-zero-init-std": (setp(f"{V}.model.init_std", 0), f"{V}.model.init_std",
                              "less than or equal to the minimum of 0"),
    "variant-named-default": (setp("variants.default", {"enabled": False, "model": {}, "pretraining": {"pt7": {
        "seeds": [42]}}, "finetuning": []}), "variants", "'default' should not be valid"),
    "variant-unknown-mixture": (on(setp(f"{V}.pretraining.pt9", {"seeds": [1]})), f"{V}.pretraining.pt9",
                                "no pretraining mixture is named 'pt9'"),
    "variant-unknown-mix": (on(setp(f"{V}.finetuning", ["ftwb9-1"])), f"{V}.finetuning", "no fine-tuning mix is named"),
    "variant-finetuning-without-base": (on(setp(f"{V}.pretraining", {"pt1-1": {"seeds": [42]}})), f"{V}.pretraining",
                                        "fine-tuning needs the variant's own base 'pt7'"),
    "variant-without-seeds": (setp(f"{V}.pretraining.pt7", {"epochs": 2}), f"{V}.pretraining.pt7",
                              "'seeds' is a required property"),
    "variant-ftwb1-only": (on(setp(f"{V}.finetuning", ["ftwb1-1"])), f"{V}.finetuning",
                           "needs both one-task (FTWB1) and two-task (FTWB2) mixes"),
    "variant-pair-without-teacher": (on(setp(f"{V}.finetuning", ["ftwb1-1", "ftwb2-13"])), f"{V}.finetuning",
                                     "ftwb2-13 (perimeter, distance) needs the FTWB1 mixes of perimeter"),
    "variant-stack-name-taken": (lambda c: c["variants"].update(atl={**c["variants"].pop("small"), "enabled": True,
                                                                      "pretraining": {"pt7": {"seeds": [7]}}}),
                                 "variants", "stack 'pt7-atl' would train runs of architectures ['atl', 'main grid']"),
    "variant-run-name-taken": (lambda c: c["variants"].update(atl={**c["variants"].pop("small"), "enabled": True}),
                               "variants.atl", "its run name 'pt7-atl_s42' is also the name of another planned run"),
    # the open questions as experiments (METHOD Appendix C): the overlays' blocks over smoke.yaml
    "noise-level-not-a-percentage": (experiment("noise", levels=[0.125]), "experiments.noise.levels",
                                     "[0.125] are not whole percentages"),
    "noise-level-one": (experiment("noise", levels=[1.0]), "experiments.noise.levels.0",
                        "1.0 is greater than or equal to the maximum of 1"),
    "noise-seed-without-clean-run": (experiment("noise", seeds=[7]), "experiments.noise.seeds",
                                     "the main grid has no runs ['pt1-1_s7', 'pt1-6_s7', 'pt1-7_s7'] to compare with"),
    "noise-without-single-task-mixtures": (lambda c: (experiment("noise")(c), [c["mixtures"]["pretraining"].pop(m)
                                                                               for m in ("pt1-1", "pt1-6", "pt1-7")]),
                                           "experiments.noise", "needs single-task pretraining mixtures"),
    "scale-repeated-size": (experiment("scale", sizes=[{"hidden_size": 64, "num_hidden_layers": 2}] * 2),
                            "experiments", "levels or sizes repeat the variants ['w64d2']"),
    "scale-heads-not-dividing-hidden": (experiment("scale", sizes=[{"hidden_size": 64, "num_hidden_layers": 2,
                                                                    "num_attention_heads": 3}]),
                                        "experiments.scale.sizes.0 (keys it does not set follow model's head "
                                        "width and ratios).num_attention_heads",
                                        "3 heads do not divide hidden_size 64"),
    "scale-zero-depth": (experiment("scale", sizes=[{"hidden_size": 64, "num_hidden_layers": 0}]),
                         "experiments.scale.sizes.0.num_hidden_layers", "less than the minimum of 1"),
    "variant-named-like-an-experiment": (lambda c: (experiment("noise")(c), c["variants"].update(
        noise10=c["variants"].pop("small"))), "variants", "['noise10'] are the names of experiment variants"),
    "gradients-run-not-planned": (experiment("gradients", run="pt2-1_s1"), "experiments.gradients.run",
                                  "'pt2-1_s1' is not a planned pretraining run"),
    "gradients-missing-key": (lambda c: (experiment("gradients")(c), c["experiments"]["gradients"].pop("seed")),
                              "experiments.gradients", "'seed' is a required property"),
    "gradients-more-checkpoints-than-saved": (experiment("gradients", checkpoints=6), "experiments.gradients.checkpoints",
                                              "6 asked, but pt7_s42 saves 5"),
    "gradients-batch-beyond-the-split": (experiment("gradients", batch_size=251), "experiments.gradients.batch_size",
                                         "251 items per batch, but a task's train split has 250"),
    "subspace-without-finetuning": (lambda c: (experiment("subspace")(c), c["mixtures"]["finetuning"]["mixes"].clear()),
                                    "experiments.subspace", "needs fine-tuning mixes"),
    "label-noise-negative": (setp("tasks.distance", {"label_noise": -0.1}), "tasks.distance.label_noise",
                             "less than the minimum of 0"),
    "subspace-components-fill-the-width": (experiment("subspace", components=256), "experiments.subspace.components",
                                           "256 principal components of 256-wide representations"),
    "noise-over-a-noisy-task": (lambda c: (experiment("noise")(c), c["tasks"].update(perimeter={
        "city_counts": [2, 3], "label_noise": 0.2})), "tasks.perimeter.label_noise", "set it to 0 while"),
    "gradients-on-the-control": (experiment("gradients", run="pt7-atl_s42"), "experiments.gradients.run",
                                 "'pt7-atl_s42' trained on the with-Atlantis sets"),
}


@pytest.mark.parametrize("mutate,key,problem", BAD.values(), ids=BAD.keys())
def test_bad_config_names_key_and_problem(mutate, key, problem):
    config = copy.deepcopy(SMOKE)
    mutate(config)
    with pytest.raises(ConfigError) as excinfo:
        validate_config(config)
    lines = str(excinfo.value).splitlines()
    assert any(f"config key '{key}':" in line and problem in line for line in lines), (
        f"no line names key {key!r} with problem {problem!r}:\n{excinfo.value}")


def test_all_problems_are_listed_at_once():
    config = copy.deepcopy(SMOKE)
    config["datasets"]["seed"] = "x"
    config["world"]["atlantis"]["count"] = 0
    message = str(pytest.raises(ConfigError, validate_config, config).value)
    assert "config key 'datasets.seed':" in message and "config key 'world.atlantis.count':" in message


def undescribed_keys(node: dict, schema: dict, path: str = "") -> list[str]:
    """Every key a config may set, at any depth, that has no `description` of its own or through its `$ref`."""
    missing = []
    for key, sub in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        target = sub
        if "$ref" in sub and "description" not in sub:
            for part in sub["$ref"].removeprefix("#/").split("/"):
                target = schema if target is sub else target
                target = target[part]
        if "description" not in sub and "description" not in target:
            missing.append(here)
        missing += undescribed_keys(sub, schema, here)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            missing += undescribed_keys(node[key], schema, f"{path}[]")
    return missing


def test_every_schema_key_is_described():
    schema = json.loads((ROOT / "config" / "schema.json").read_text())
    assert undescribed_keys(schema, schema) == []
    assert json.dumps(schema).count("\"description\"") > 140  # the walk above really had the whole schema to walk


def test_undescribed_keys_finds_a_missing_description():
    schema = {"properties": {"a": {"description": "x", "properties": {"b": {"type": "integer"}}},
                             "c": {"$ref": "#/$defs/d"}, "e": {"items": {"properties": {"f": {}}}}},
              "$defs": {"d": {"description": "described where it is defined"}}}
    assert undescribed_keys(schema, schema) == ["a.b", "e", "e[].f"]


def test_every_config_is_a_base_or_an_overlay_refused_alone():
    """Each file in config/ either validates alone (a base, listed in worldrep.config.BASES) or is an overlay: given
    alone it is refused with a base-plus-overlay command, and that command's configs validate. The example base is
    the first of BASES the overlay fits: quick for the experiments, the paper grid for wide.yaml (its block)."""
    from worldrep.config import BASES
    from worldrep.grid import load_config

    files = sorted(f"config/{p.name}" for p in (ROOT / "config").glob("*.yaml"))
    overlays = [f for f in files if f not in BASES]
    assert set(BASES) <= set(files) and len(overlays) >= 5, files
    for base in BASES:
        load_config([ROOT / base])
    offered = {}
    for overlay in overlays:
        with pytest.raises(ConfigError) as caught:
            load_config([ROOT / overlay])
        message = str(caught.value).replace(str(ROOT) + "/", "")
        assert "an overlay changes a base config and cannot run alone" in message, message
        command = re.search(r"snakemake --cores 8 --configfile (\S+) (\S+)\n", message)
        assert command and command[2] == overlay, message
        offered[overlay] = command[1]
        load_config([ROOT / command[1], ROOT / overlay])
    assert offered["config/wide.yaml"] == "config/config.yaml"
    assert offered["config/noise.yaml"] == "config/quick.yaml"


def test_a_base_missing_one_key_gets_the_schema_message():
    config = copy.deepcopy(SMOKE)
    del config["gpu"]
    with pytest.raises(ConfigError, match="config key '<top level>': 'gpu' is a required property"):
        validate_config(config, files=["config/mine.yaml"])


def test_snakemake_refuses_an_overlay_alone_with_the_command():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/noise.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "config/noise.yaml sets none of 'world'" in out, out
    assert "snakemake --cores 8 --configfile config/quick.yaml config/noise.yaml" in out, out
    assert "Building DAG of jobs" not in out, out


def dry_run(configfile):
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(configfile)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_snakefile_rejects_bad_config_at_load(tmp_path):
    bad = copy.deepcopy(SMOKE)
    bad["mixtures"]["finetuning"]["replay_items"] = 999_999
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    proc = dry_run(path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "ConfigError" in out and "config key 'mixtures.finetuning.replay_items':" in out, out
    assert "Building DAG of jobs" not in out, out  # failed while loading the Snakefile, before any job


def test_a_checkout_runs_into_another_directory(tmp_path):
    """`snakemake -d DIR`: results, store and Snakemake's records go to DIR (config files are read from the working
    directory the command started in), so one checkout can serve several results folders."""
    work = tmp_path / "elsewhere"
    targets = ["results/world/cities.csv", "results/tokenizer/tokenizer.json"]
    proc = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "1", "-d", str(work),
                           "--configfile", "config/smoke.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all((work / target).stat().st_size > 0 for target in targets)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-d", str(work), "--configfile",
                           "config/smoke.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "pretrain_pt1" in out and not re.search(r"^\s*(world|tokenizer)\s+1$", out, flags=re.M), out


def test_the_slurm_block_routes_gpu_jobs_and_the_rest_to_their_partitions(tmp_path):
    """The config's `slurm` block becomes each planned job's slurm_partition / slurm_account resources: the
    generated stack rules (they ask for `gpu`) get gpu_jobs', every other rule cpu_jobs', over --default-resources."""
    from worldrep.grid import slurm_resources

    block = {"slurm": {"gpu_jobs": {"partition": "gpu", "account": "lab-gpu"}, "cpu_jobs": {"partition": "cpu"}}}
    assert slurm_resources(block, gpu=True) == {"slurm_account": "lab-gpu", "slurm_partition": "gpu"}
    assert slurm_resources(block, gpu=False) == {"slurm_partition": "cpu"}
    assert slurm_resources({}, gpu=True) == {}
    overlay = tmp_path / "partitions.yaml"
    overlay.write_text(yaml.safe_dump(block))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--default-resources", "slurm_partition=default",
                           "--configfile", "config/smoke.yaml", str(overlay)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:.*\n)*?\s+resources: (.*)$", proc.stdout, flags=re.M)
    partitions = {rule: re.search(r"slurm_partition=(\w+)", resources)[1] for rule, resources in jobs}
    gpu_rules = {rule for rule, resources in jobs if "gpu=1" in resources}
    assert gpu_rules == {r for r in partitions if r.startswith(("pretrain_", "finetune_"))} and len(gpu_rules) >= 5
    assert {partitions[r] for r in gpu_rules} == {"gpu"}
    assert {partitions[r] for r in set(partitions) - gpu_rules} == {"cpu"} and "dataset" in partitions
    accounts = {rule for rule, resources in jobs if "slurm_account=lab-gpu" in resources}
    assert accounts == gpu_rules


def test_snakefile_dry_runs_smoke_config():
    proc = dry_run(ROOT / "config" / "smoke.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefile_dry_runs_laptop_config(tmp_path):
    """config/laptop.yaml plans its whole DAG: 3 pretraining and 5 fine-tuning runs, through the claims checklist
    (in a fresh copy of the workflow: a results folder here would plan less)."""
    from worldrep.archive import copy_workflow

    workdir = copy_workflow(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/laptop.yaml"],
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.MULTILINE))
    # one training job per mixture (training.stack: mixture): pretrain_pt1_1, ..., finetune_ftwb2_5
    assert sorted(rule for rule in counts if rule.startswith(("pretrain_", "finetune_"))) == [
        "finetune_ftwb1_1", "finetune_ftwb1_2", "finetune_ftwb1_3", "finetune_ftwb2_1", "finetune_ftwb2_5",
        "pretrain_pt1_1", "pretrain_pt1_3", "pretrain_pt3_1"], counts
    assert counts["claims"] == "1"
    assert counts["checkpoint_representations"] == "3"  # pt1-1, pt1-3 and the checkpoint run pt3-1
