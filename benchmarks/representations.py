"""Seconds to extract layer 3–6 representations of ~5,000 cities from one paper-size model with
`worldrep.representations.extract`: the shared-prefix path (default) against the plain full forward, measured in
the same run, plus the agreement of the two and the size of the saved `.npz`.

    python benchmarks/representations.py                         # random-init model, CPU, 1 thread
    python benchmarks/representations.py --model results/models/RUN/final --threads 2 --tasks distance

Cities are the eligible cities of results/world/cities.csv (tiled or cut to --cities); without it, random
4-digit IDs. distance has the shortest prompt (13 tokens) and perimeter the longest (18).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.training import hardware  # noqa: E402 (one hardware line for every benchmark)
from worldrep.evaluation import load_model  # noqa: E402
from worldrep.model import build_model  # noqa: E402
from worldrep.representations import eligible_cities, extract, partial_prompt_tokens, save_representations  # noqa: E402
from worldrep.world import read_cities  # noqa: E402


def city_ids(n: int) -> tuple[np.ndarray, str]:
    table = REPO / "results/world/cities.csv"
    if table.exists():
        ids = eligible_cities(read_cities(table))["city_id"].to_numpy()
        return np.resize(ids, n), f"{len(ids)} eligible cities of {table.relative_to(REPO)}, cut/tiled to {n}"
    return np.random.default_rng(0).integers(1000, 10000, n), f"{n} random 4-digit IDs"


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float, object]:
    """(best, median) seconds over `repeats` calls, and the last result."""
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return min(seconds), float(np.median(seconds)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved model directory; default: a random-init paper-size model")
    parser.add_argument("--cities", type=int, default=5000)
    parser.add_argument("--tasks", nargs="+", default=["distance", "perimeter"])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than free cores is slower)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.model, device) if args.model else build_model(seed=42).to(device).eval()
    ids, source = city_ids(args.cities)
    print(f"hardware: {hardware(device)}")
    print(f"model: {args.model or 'random init (seed 42)'}; cities: {source}; batch size {args.batch_size}")
    extract(model, partial_prompt_tokens(args.tasks[0], ids[:64]), device=device)  # warm-up
    for task in args.tasks:
        tokens = partial_prompt_tokens(task, ids)
        run = lambda reuse: extract(model, tokens, batch_size=args.batch_size, device=device,  # noqa: E731
                                    reuse_prefix=reuse)
        fast_best, fast_median, fast = timed(lambda: run(True), args.repeats, device)
        plain_best, plain_median, plain = timed(lambda: run(False), args.repeats, device)
        diff = max(float(np.abs(fast[k] - plain[k]).max()) for k in fast)
        print(f"{task:>9} ({tokens.shape[1]} tokens): shared prefix {fast_best:.2f} s (median {fast_median:.2f}),"
              f" plain forward {plain_best:.2f} s (median {plain_median:.2f}), speed-up "
              f"{plain_best / fast_best:.1f}x, max |difference| {diff:.1e}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "representations.npz"
        save_representations(path, ids, fast)
        print(f"saved .npz for {len(ids)} cities × {len(fast)} layers: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
