"""Config checks that need nothing of the grid: the JSON schema, and checks across keys a schema cannot express.
Every message names its key. The whole validation, with the grid's checks, is `worldrep.grid.validate_config`."""
from __future__ import annotations

import math
import os
from pathlib import Path

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config" / "schema.json"


class ConfigError(ValueError):
    pass


def key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


# JSON Schema counts 42.0 as an integer; YAML's `seed: 42.0` would then pass and crash inside a job.
_STRICT_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
StrictValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT_TYPES)


# The configs that run alone; the rest of config/ are overlays, merged over one of these (config/README.md).
# In the order an overlay given alone is offered them: the first it validates over is the message's example.
BASES = ("config/quick.yaml", "config/laptop.yaml", "config/smoke.yaml", "config/config.yaml", "config/paper_pt1.yaml")


def merged(base: dict, update: dict) -> dict:
    """`update` over `base`, dicts merged key by key: what Snakemake does with several --configfile."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def shown_path(path: str | Path) -> str:
    """`path` relative to the working directory when it lies under it (Snakemake passes config files absolute)."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def overlay_problem(config: dict, required: list[str], files: list[str | Path], base: str | None = None) -> str | None:
    """A config without most of the keys every base sets is an overlay given alone (`--configfile
    config/noise.yaml`): say so, with the base-plus-overlay command, instead of a schema error about the first missing
    key. A base that lacks only a few keys is left to the schema, which names them. `base`: one it fits over."""
    missing = [key for key in required if key not in config]
    if len(missing) * 2 <= len(required):
        return None
    given = " ".join(shown_path(f) for f in files)
    subject = f"{given} {'sets' if len(files) == 1 else 'set'}" if files else "the config sets"
    return (f"{subject} none of {', '.join(repr(k) for k in missing)}: an overlay changes a base config and "
            f"cannot run alone. Give a base config first and the overlay after it, e.g.\n"
            f"  snakemake --cores 8 --configfile {base or 'BASE.yaml'} {given or 'OVERLAY.yaml'}\n"
            f"(bases: {', '.join(BASES)}; config/README.md says which is which)")


def schema_problems(config: dict, schema: dict) -> list[str]:
    validator = StrictValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [f"config key '{key_path(e.absolute_path)}': {e.message}" for e in errors]


def mixture_families(config: dict) -> dict[str, dict[str, list[str]]]:
    """Config key under `mixtures` -> {mixture name: tasks} for each family of mixtures."""
    mixtures = config["mixtures"]
    return {"pretraining": mixtures["pretraining"], "with_atlantis": mixtures.get("with_atlantis", {}),
            "finetuning.mixes": mixtures["finetuning"]["mixes"]}


def semantic_problems(config: dict) -> list[str]:
    """Checks across keys: mixtures name configured tasks, slices fit in their sources, names are unique."""
    problems = []
    tasks, datasets, mixtures = config["tasks"], config["datasets"], config["mixtures"]
    seen: dict[str, str] = {}
    for family, mixes in mixture_families(config).items():
        for name, listed in mixes.items():
            key = f"mixtures.{family}.{name}"
            if name in seen:
                problems.append(f"config key '{key}': mixture name {name!r} is also defined at '{seen[name]}'")
            seen[name] = key
            missing = [t for t in listed if t not in tasks]
            if missing:
                problems.append(f"config key '{key}': task(s) {missing} are not configured under 'tasks'")
    if mixtures.get("with_atlantis") and "with_atlantis" not in datasets:
        problems.append("config key 'datasets.with_atlantis': required because 'mixtures.with_atlantis' is not empty")
    atlantis = config["world"]["atlantis"]
    for key, value in (("center", atlantis["center"]), ("std", [atlantis["std"]])):
        if not all(math.isfinite(v) for v in value):
            problems.append(f"config key 'world.atlantis.{key}': {value} is not finite")
    ft = mixtures["finetuning"]
    for item_key, variant in (("replay_items", "pretraining"), ("buffer_items", "atlantis_required")):
        have = datasets[variant]["n_train"]
        if ft[item_key] > have:
            problems.append(f"config key 'mixtures.finetuning.{item_key}': asks for {ft[item_key]} items per task, "
                            f"but 'datasets.{variant}.n_train' is only {have}")
    return problems


def architecture_problems(model: dict, reps: dict, model_key: str, reps_key: str) -> list[str]:
    """One architecture and its layers; messages name the keys given (`model_key`.field, `reps_key`.field)."""
    problems = []
    hidden, heads, kv = model["hidden_size"], model["num_attention_heads"], model["num_key_value_heads"]
    if hidden % heads:
        problems.append(f"config key '{model_key}.num_attention_heads': {heads} heads do not divide hidden_size "
                        f"{hidden}")
    elif (hidden // heads) % 2:
        problems.append(f"config key '{model_key}.num_attention_heads': head_dim {hidden // heads} (hidden_size / "
                        "heads) must be even for the rotary embedding")
    if heads % kv:
        problems.append(f"config key '{model_key}.num_key_value_heads': {kv} kv-heads do not divide {heads} "
                        "attention heads")
    depth = model["num_hidden_layers"]
    beyond = [layer for layer in reps["layers"] if layer > depth]
    if beyond:
        problems.append(f"config key '{reps_key}.layers': {beyond} lie beyond the model's depth "
                        f"({model_key}.num_hidden_layers = {depth}; hidden_states[{depth}] is the last, after the "
                        "final norm)")
    if reps["analysis_layer"] not in reps["layers"]:
        problems.append(f"config key '{reps_key}.analysis_layer': {reps['analysis_layer']} is not one of "
                        f"the extracted layers {reps['layers']}")
    return problems
