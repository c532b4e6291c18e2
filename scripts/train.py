"""Snakemake adapter: rules pretrain / finetune -> results/models/{mixture}_s{seed}/."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import json
import sys
from pathlib import Path

from worldrep.lease import job_lease

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
# Before torch touches CUDA: the lease narrows CUDA_VISIBLE_DEVICES to this job's device. The `gpu` section
# decides where a job runs, never what it computes, so it is read here rather than passed as params.
lease = job_lease(snakemake.config["gpu"], log=lambda line: print(line, file=log, flush=True))

import torch  # noqa: E402

from worldrep.artifacts import sha256_file  # noqa: E402
from worldrep.datasets import load_split  # noqa: E402
from worldrep.evaluation import resolve_device_precision  # noqa: E402
from worldrep.grid import seeds_entry  # noqa: E402
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.provenance import provenance  # noqa: E402
from worldrep.training import Recipe, Validation, fingerprint, publish, save_hf_model, train  # noqa: E402

torch.set_num_threads(snakemake.threads)
p = snakemake.params.training
device = torch.device(lease.device)
recipe = Recipe(**{**p["recipe"], "betas": tuple(p["recipe"]["betas"]),
                   "precision": resolve_device_precision(device, p["precision"])})
seed = p["seed"]
mixture_dir = Path(snakemake.input.metadata).parent
run_dir = Path(snakemake.output.final).parent
work = run_dir / "in_progress"
tokenizer_dir = Path(snakemake.input.tokenizer[0]).parent
base = snakemake.input.get("base")
task_names = json.loads(Path(snakemake.input.metadata).read_text())["task_names"]

inputs = {"train": sha256_file(mixture_dir / "train.npz"), "val": sha256_file(mixture_dir / "val.npz")}
if base:
    inputs["base"] = sha256_file(Path(base) / "model.safetensors")
# The code too: a state saved by an older trainer must not be finished by a newer one.
code = {path: sha256_file(path) for path in snakemake.input.code}
run_fingerprint = fingerprint({"model": p["model"], "recipe": vars(recipe), "seed": seed, "inputs": inputs,
                               "code": code})

if base:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # weights only (§7.1)
    built = {key: getattr(model.config, key) for key in p["model"] if key != "init_std"}
    wanted = {key: value for key, value in p["model"].items() if key != "init_std"}
    if built != wanted:
        raise SystemExit(f"base model {base} has architecture {built}, but the config's model section is {wanted}")
else:
    model = build_model(ModelSettings(**p["model"]), seed)
train_tokens = load_split(mixture_dir, "train")["tokens"]
val = load_split(mixture_dir, "val")
validation = Validation(val["tokens"], val["task"], val["answers"], task_names)
keep_checkpoints = "checkpoints" in snakemake.output.keys()


def save_checkpoint(model, step):
    if keep_checkpoints:
        (work / "checkpoints").mkdir(exist_ok=True)
        save_hf_model(model, work / "checkpoints" / f"step-{step:06d}", tokenizer_dir)


summary = train(model, train_tokens, validation, recipe, seed, device, work, run_fingerprint, save_checkpoint, log)
metadata = {
    # Which `training.seeds` entry planned this run (§7.3 overrides). Read from the config, not params: adding
    # an override for a failed seed must not retrain the healthy seeds of that mixture.
    "run": run_dir.name, "mixture": snakemake.wildcards.mixture, "seed": seed,
    "seeds_entry": seeds_entry(snakemake.config, snakemake.wildcards.mixture),
    "base_model": base, "model": p["model"], "recipe": vars(recipe),
    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "weight_decay_groups": "weight matrices and embeddings; no decay on biases and RMSNorm gains",
    "fingerprint": run_fingerprint, "inputs_sha256": inputs, **summary, "provenance": provenance(),
}
save_hf_model(model, work / "final", tokenizer_dir, metadata)
publish(work, {Path(path).name: Path(path) for path in snakemake.output})  # work/final -> .../final, etc.
lease.release()
