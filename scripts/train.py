"""Snakemake adapter: a generated pretrain_* / finetune_* rule -> results/models/{run}/ for every run of its stack."""
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
from worldrep.grid import training_runs  # noqa: E402
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.provenance import provenance  # noqa: E402
from worldrep.stack import from_hf_models  # noqa: E402
from worldrep.training import (Recipe, StackRun, Validation, fingerprint, publish, save_hf_model,  # noqa: E402
                               train_stack)

torch.set_num_threads(snakemake.threads)
runs = snakemake.params.runs  # run name -> its mixture and training params, in stack order
planned = {run.name: run for run in training_runs(snakemake.config)}
stack_name, finetuning = snakemake.params.stack, snakemake.params.kind == "finetuning"
device = torch.device(lease.device)
# CUDA graphs change how fast an update runs, not what it computes (same kernels), so, like the lease, they are
# read from the config rather than params: switching them never retrains.
cuda_graphs = bool(snakemake.config["training"]["cuda_graphs"])
tokenizer_dir = Path(snakemake.input.tokenizer[0]).parent
code = {path: sha256_file(path) for path in snakemake.input.code}  # a state of an older trainer is never resumed
print(f"stack {stack_name}: {len(runs)} run(s) on {device}: {', '.join(runs)}", file=log, flush=True)

recipes = {name: Recipe(**{**p["recipe"], "betas": tuple(p["recipe"]["betas"]),
                           "precision": resolve_device_precision(device, p["precision"])})
           for name, p in runs.items()}
if len({json.dumps(vars(r), sort_keys=True) for r in recipes.values()}) != 1:
    raise SystemExit(f"stack {stack_name}: its runs have different recipes: {sorted(recipes)}")
recipe = next(iter(recipes.values()))

mixtures, models, stack_runs, metadata = {}, [], [], {}
for name, p in runs.items():
    mixture_dir = Path(f"results/mixtures/{p['mixture']}")
    if p["mixture"] not in mixtures:  # runs of one mixture share its arrays (and the stack its token matrix)
        val = load_split(mixture_dir, "val")
        task_names = json.loads((mixture_dir / "metadata.json").read_text())["task_names"]
        mixtures[p["mixture"]] = (load_split(mixture_dir, "train")["tokens"],
                                  Validation(val["tokens"], val["task"], val["answers"], task_names),
                                  {"train": sha256_file(mixture_dir / "train.npz"),
                                   "val": sha256_file(mixture_dir / "val.npz")})
    train_tokens, validation, inputs = mixtures[p["mixture"]]
    inputs = dict(inputs)
    base = p["base"]  # the same-seed base model's final directory (fine-tuning), else None
    if base:
        from transformers import AutoModelForCausalLM

        inputs["base"] = sha256_file(Path(base) / "model.safetensors")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # weights only (§7.1)
        built = {key: getattr(model.config, key) for key in p["model"] if key != "init_std"}
        wanted = {key: value for key, value in p["model"].items() if key != "init_std"}
        if built != wanted:
            raise SystemExit(f"base model {base} has architecture {built}, but the config's model section is {wanted}")
    else:
        model = build_model(ModelSettings(**p["model"]), p["seed"])
    models.append(model)
    run_fingerprint = fingerprint({"model": p["model"], "recipe": vars(recipe), "seed": p["seed"], "inputs": inputs,
                                   "code": code})
    run_dir = Path(f"results/models/{name}")
    work = run_dir / "in_progress"
    keep_checkpoints = not finetuning

    def save_checkpoint(model, step, work=work, keep=keep_checkpoints):
        if keep:
            (work / "checkpoints").mkdir(exist_ok=True)
            save_hf_model(model, work / "checkpoints" / f"step-{step:06d}", tokenizer_dir)

    stack_runs.append(StackRun(name, p["seed"], train_tokens, validation, work, run_fingerprint, save_checkpoint))
    metadata[name] = {
        # Which `training.seeds` entry planned this run (§7.3 overrides). Read from the config, not params: adding
        # an override for a failed seed must not retrain the healthy seeds of that mixture.
        "run": name, "mixture": p["mixture"], "seed": p["seed"],
        "seeds_entry": planned[name].seeds_entry,
        **({"variant": planned[name].variant} if planned[name].variant else {}),  # an architecture variant's run
        "base_model": base, "model": p["model"], "recipe": vars(recipe), "n_train": len(train_tokens),
        "weight_decay_groups": "weight matrices and embeddings; no decay on biases and RMSNorm gains",
        "fingerprint": run_fingerprint, "inputs_sha256": inputs,
    }

stack = from_hf_models(models)
del models
summary = train_stack(stack, stack_runs, recipe, device, log, cuda_graphs=cuda_graphs, name=stack_name)
shared = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
          "cuda_graphs": cuda_graphs and device.type == "cuda", **summary, "provenance": provenance()}
view = stack.hf_model(0)
for index, run in enumerate(stack_runs):
    stack.export(index, view)
    save_hf_model(view, run.work / "final", tokenizer_dir, {**metadata[run.name], **shared})
# Only once every run has its final model in its work folder: a kill before this point resumes all of them.
for run in stack_runs:
    outputs = {Path(path).name: Path(path) for key, path in snakemake.output.items() if key.startswith(f"{run.name}.")}
    publish(run.work, outputs)  # work/final -> .../final, etc.
lease.release()
