"""Snakemake adapter: a generated pretrain_* / finetune_* rule -> results/store/{hash}/ for every stale run of its
stack, then for every missing product of its runs (evaluation, representations and their checkpoint versions;
worldrep.store; the per-run rules `pretrained_model`, `finetuned_model`, `evaluate`, `representations`, ... then
publish them)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import importlib
import json
import sys
from pathlib import Path

from worldrep.lease import job_lease

sys.stderr = sys.stdout = log = open(snakemake.log[0], "w")
# Before torch touches CUDA: the lease narrows CUDA_VISIBLE_DEVICES to this job's device. The `gpu` section
# decides where a job runs, never what it computes, so it is read here rather than passed as params.
lease = job_lease(snakemake.config["gpu"], log=lambda line: print(line, file=log, flush=True))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from worldrep.artifacts import sha256_file  # noqa: E402
from worldrep.datasets import load_split  # noqa: E402
from worldrep.evaluation import (evaluate_stack, load_model, resolve_device_precision, test_set_paths,  # noqa: E402
                                 write_checkpoint_evaluation, write_evaluation, write_evaluation_tables)
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.provenance import provenance  # noqa: E402
from worldrep.stack import from_hf_models  # noqa: E402
from worldrep.entry import (CHECKPOINT_STACK, entry_dir, entry_files, finish_entry,  # noqa: E402
                            product_reads, remove, work_dir)
from worldrep.training import (Recipe, StackRun, Validation, fingerprint, fused_by_default, save_hf_model,  # noqa: E402
                               train_stack)

torch.set_num_threads(snakemake.threads)
# Run name -> its recipe hash, mixture, base, training params, variant and `training.seeds` entry, in stack order.
# A stack job exists only while an entry it writes is missing, so its params never replan anything: they are what
# the job reads, and this script imports nothing of the planning code (its import closure is its code identity).
runs = snakemake.params.runs
stale = set(snakemake.params.stale)  # the runs whose entries this job writes (all, but under whole-family)
stack_name, finetuning = snakemake.params.stack, snakemake.params.kind == "finetuning"
results = Path("results")
device = torch.device(lease.device)
# CUDA graphs change how fast an update runs, not what it computes (same kernels), so, like the lease, they are
# read from the config rather than params: switching them never retrains.
cuda_graphs = bool(snakemake.config["training"]["cuda_graphs"])
tokenizer_dir = Path(snakemake.input.tokenizer[0]).parent
missing = ", ".join(f"{run} {'/'.join(p['products'])}" for run, p in snakemake.params.products.items())
print(f"stack {stack_name} on {device}: training {len(runs)} run(s) ({', '.join(runs) or 'none'}), writing the entries "
      f"of {', '.join(r for r in runs if r in stale) or 'none'}; products: {missing or 'none'}", file=log, flush=True)

recipes = {name: Recipe(**{**p["recipe"], "betas": tuple(p["recipe"]["betas"]),
                           "precision": resolve_device_precision(device, p["precision"])})
           for name, p in runs.items()}
if len({json.dumps(vars(r), sort_keys=True) for r in recipes.values()}) > 1:
    raise SystemExit(f"stack {stack_name}: its runs have different recipes: {sorted(recipes)}")
recipe = next(iter(recipes.values()), None)  # None: nothing to train, only products to compute

mixtures, models, stack_runs, metadata = {}, [], [], {}
for name, p in runs.items():
    mixture_dir = results / "mixtures" / p["mixture"]
    if p["mixture"] not in mixtures:  # runs of one mixture share its arrays (and the stack its token matrix)
        val = load_split(mixture_dir, "val")
        task_names = json.loads((mixture_dir / "metadata.json").read_text())["task_names"]
        mixtures[p["mixture"]] = (load_split(mixture_dir, "train")["tokens"],
                                  Validation(val["tokens"], val["task"], val["answers"], task_names),
                                  {"train": sha256_file(mixture_dir / "train.npz"),
                                   "val": sha256_file(mixture_dir / "val.npz")})
    train_tokens, validation, inputs = mixtures[p["mixture"]]
    inputs = dict(inputs)
    base = p["base"]  # the same-seed base model's published final directory (fine-tuning), else None
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
    # The recipe hash covers the code (the training script's import closure, stack.py included), so a resume state
    # that older code wrote lives in another work folder; the input hashes guard against rebuilt mixtures.
    run_fingerprint = fingerprint({"recipe_hash": p["hash"], "inputs": inputs})
    work = work_dir(results, p["hash"])
    keep_checkpoints = not finetuning

    def save_checkpoint(model, step, work=work, keep=keep_checkpoints):
        if keep:
            (work / "checkpoints").mkdir(exist_ok=True)
            save_hf_model(model, work / "checkpoints" / f"step-{step:06d}", tokenizer_dir)

    stack_runs.append(StackRun(name, p["seed"], train_tokens, validation, work, run_fingerprint, save_checkpoint))
    # What the published model carries: everything that shaped it, nothing about the stack it trained in (that is
    # in the store's marker), so that a run rebuilt alone has the bytes of a clean build.
    metadata[name] = {
        "run": name, "mixture": p["mixture"], "seed": p["seed"], "recipe_hash": p["hash"],
        **({"variant": p["variant"]} if p["variant"] else {}),  # an architecture variant's run
        "base_model": base, "model": p["model"], "recipe": vars(recipe), "n_train": len(train_tokens),
        "weight_decay_groups": "weight matrices and embeddings; no decay on biases and RMSNorm gains",
        "fingerprint": run_fingerprint, "inputs_sha256": inputs,
    }

if stack_runs:
    stack = from_hf_models(models)
    del models
    summary = train_stack(stack, stack_runs, recipe, device, log, cuda_graphs=cuda_graphs, name=stack_name)
    trained_in = {key: summary.pop(key) for key in ("stack", "stack_runs", "stack_fused")}
    shared = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "cuda_graphs": cuda_graphs and device.type == "cuda", **summary, "provenance": provenance()}
    view = stack.hf_model(0)
    for index, run in enumerate(stack_runs):
        if run.name in stale:
            stack.export(index, view)
            save_hf_model(view, run.work / "final", tokenizer_dir, {**metadata[run.name], **shared})
    del stack, view
    # Only once every run has its final model in its work folder: a kill before this point resumes all of them. Each
    # entry appears in one rename, its marker inside; a run trained only as a partner (whole-family) is dropped. A
    # failure after this point (in the products below) makes Snakemake delete the markers: the work folders, kept to
    # the end, then resume at the last step and write the entries again.
    kind = "finetuning" if finetuning else "pretraining"
    for run in stack_runs:
        if run.name in stale:
            record = {"run": run.name, "recipe_hash": runs[run.name]["hash"],
                      "seeds_entry": runs[run.name]["seeds_entry"],
                      "inputs_sha256": metadata[run.name]["inputs_sha256"], **trained_in}
            finish_entry(run.work, entry_dir(results, runs[run.name]["hash"]), entry_files(kind), record)

# The products (evaluation, checkpoint evaluation, representations, checkpoint representations) of each run that
# misses one, from its entry: the weights just written (page cache, no retraining) or an earlier job's, read exactly
# as a published model is. The extraction module is loaded by name, so that it is not part of every run's code
# identity: the representations' recipes name it (worldrep.recipes.Recipes.product). The evaluation module is part of
# it anyway: validation decodes with it.
products = snakemake.params.products
# Where the stack trains fused (a GPU), its runs are evaluated fused too: all final models in one stacked greedy
# decode, and a run's checkpoints up to CHECKPOINT_STACK at a time, both evaluated (worldrep.evaluation.evaluate_stack)
# and extracted (worldrep.representations.extract_stack). On a CPU, model after model, which is the per-run path byte
# for byte.
fused = fused_by_default(device)


def finish_product(name: str, product: str, p: dict, work: Path) -> None:
    reads = {path: sha256_file(path) for path in product_reads(product, p)}
    finish_entry(work, entry_dir(results, p["hash"]), entry_files(product),
                 {"run": name, "product": product, "recipe_hash": p["hash"], "model": products[name]["hash"],
                  "inputs_sha256": reads})
    remove(work)


def fresh_work(p: dict) -> Path:
    work = work_dir(results, p["hash"])
    remove(work)
    work.mkdir(parents=True)
    return work


done = set()
if products and fused:
    finals = [(name, run_products["products"]["evaluation"]) for name, run_products in products.items()
              if "evaluation" in run_products["products"]]
    if finals:
        if len({(p["batch_size"], json.dumps(p["precision"], sort_keys=True)) for _, p in finals}) > 1:
            raise SystemExit(f"stack {stack_name}: its runs' evaluations have different decoding settings")
        p = finals[0][1]
        stack = from_hf_models([load_model(entry_dir(results, products[name]["hash"]) / "final", torch.device("cpu"))
                                for name, _ in finals]).to(device).eval()
        progress = tqdm(desc=f"evaluate {len(finals)} run(s) stacked", unit="item", file=log, mininterval=10)
        tables = evaluate_stack(stack, [test_set_paths(q["test_sets"], results) for _, q in finals], p["batch_size"],
                                device, resolve_device_precision(device, p["precision"]), progress)
        progress.close()
        del stack
        for (name, q), (metrics, predictions) in zip(finals, tables):
            work = fresh_work(q)
            write_evaluation_tables(metrics, predictions, work)
            print(f"{name}\n{metrics.to_string()}", file=log)
            finish_product(name, "evaluation", q, work)
            done.add((name, "evaluation"))

if products:
    representations = importlib.import_module("worldrep.representations")
    for name, run_products in products.items():
        model_entry = entry_dir(results, run_products["hash"])
        for product, p in run_products["products"].items():
            if (name, product) in done:
                continue
            work = fresh_work(p)
            checkpoints = sorted((model_entry / "checkpoints").glob("step-*"))
            progress = tqdm(desc=f"{name} {product}", file=log, mininterval=10,
                            total=len(checkpoints) if product.startswith("checkpoint") else None)
            if product.endswith("evaluation"):
                precision = resolve_device_precision(device, p["precision"])
                test_sets = test_set_paths(p["test_sets"], results)
                if product == "evaluation":
                    metrics = write_evaluation(load_model(model_entry / "final", device), test_sets, p["batch_size"],
                                               device, precision, work, progress)
                else:
                    metrics = write_checkpoint_evaluation(checkpoints, test_sets, p["batch_size"], device, precision,
                                                          work / "checkpoints.csv", progress,
                                                          make_stack=from_hf_models if fused else None,
                                                          stack_size=CHECKPOINT_STACK)
                print(metrics.to_string(), file=log)
            elif product == "representations":
                representations.write_representations([(model_entry / "final", work / "final.npz")], p["prompt_task"],
                                                      results / "world" / "cities.csv", p["layers"], device, progress)
            else:
                (work / "checkpoints").mkdir()
                representations.write_representations(
                    [(c, work / "checkpoints" / f"{c.name}.npz") for c in checkpoints], p["prompt_task"],
                    results / "world" / "cities.csv", p["layers"], device, progress,
                    make_stack=from_hf_models if fused else None, stack_size=CHECKPOINT_STACK)
            progress.close()
            finish_product(name, product, p, work)
lease.release()
for run in stack_runs:  # every entry exists: the resume states are spent
    remove(run.work)
