"""When does a city map appear? Probe R² against items seen, for one task on one world (docs/METHOD.md §7.4).

Trains one single-task run with the workflow's own world, task sampling, tokenizer, model, trainer and probe
code, and fits the standard OLS probes (METHOD §11) at every checkpoint. It is the calibration behind the
items-per-city rule (docs/METHOD.md §7.4): runs of the same recipe on worlds of different size, read as
"items per real city" (items seen / real cities), should line up if the rule is right.

    python benchmarks/emergence.py --task distance --min-population 1000000 --items-per-city 2000 \
        --out evidence/2026-12-01-cpu-calibration/distance_1M_lr1e-3.csv

Prints the hardware, then one line per checkpoint (items per city, R² x / y at every layer); writes the rows
(with the mean R²) as CSV after every probe, so a run stopped early keeps its curve. Nothing is written under
results/. `benchmarks/emergence_summary.py` turns the CSVs into the rule.
"""
import argparse
import csv
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worldrep.datasets import World, generate_dataset, render  # noqa: E402
from worldrep.model import ModelSettings, build_model  # noqa: E402
from worldrep.probes import probe_split, standard_probe  # noqa: E402
from worldrep.representations import eligible_cities, extract, partial_prompt_tokens  # noqa: E402
from worldrep.tasks import TASKS  # noqa: E402
from worldrep.training import Recipe, Validation, total_steps, train  # noqa: E402
from worldrep.world import WorldSettings, build_world  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from training import hardware  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="distance", choices=sorted(TASKS))
    parser.add_argument("--min-population", type=int, default=1_000_000)
    parser.add_argument("--atlantis-count", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=100_000, help="items in the task's train split")
    parser.add_argument("--items-per-city", type=float, default=2500, help="training length, in items per real city")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--init-std", type=float, default=0.02)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--probes", type=int, default=40, help="probe checkpoints over the run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(hardware(torch.device("cpu")), flush=True)

    cities = build_world(WorldSettings(args.min_population, args.atlantis_count, (-35.0, 35.0), 3.0, 42, 42))
    world = World.from_table(cities)
    n_real = int((~cities["is_atlantis"]).sum())
    task = TASKS[args.task]
    sizes = {"n_train": args.n_train, "n_val": 64, "n_test": 64}
    default_settings = {"inside": {"hull_sizes": [3, 4, 5]}, "perimeter": {"city_counts": [2, 3, 4, 5]}}
    counts = task.city_counts(default_settings.get(args.task, {}), "pretraining")
    splits = generate_dataset(task, tuple(counts), "pretraining", sizes, world, seed=42, max_rounds=200)
    train_tokens = render(task, splits["train"], world)[1]["tokens"]
    _, val = render(task, splits["val"], world)
    validation = Validation(val["tokens"], np.zeros(len(val["tokens"]), dtype=np.int64), val["answers"], [args.task])

    total_items = args.items_per_city * n_real
    epochs = max(1, math.ceil(total_items / args.n_train))
    recipe = Recipe(peak_lr=args.lr, epochs=epochs, warmup_steps=args.warmup, checkpoint_fraction=1 / args.probes,
                    validation_fraction=1.0, log_every=50)
    steps = total_steps(args.n_train, recipe.batch_size, epochs)
    settings = ModelSettings(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.heads, intermediate_size=args.intermediate, init_std=args.init_std)
    model = build_model(settings, args.seed)
    print(f"{args.task}: {n_real} real cities (population >= {args.min_population:,}) + {args.atlantis_count} "
          f"Atlantis; {sum(p.numel() for p in model.parameters()):,} parameters; {steps} steps = {epochs} epochs "
          f"x {args.n_train:,} items = {steps * 128 / n_real:.0f} items per real city; lr {args.lr}", flush=True)

    eligible = eligible_cities(cities)
    prompts = partial_prompt_tokens(args.task, eligible["city_id"].to_numpy())
    xy = eligible[["x", "y"]].to_numpy(np.float64)
    split = probe_split(len(eligible), 42)
    layers = tuple(range(1, args.layers + 1))
    rows, began = [], time.perf_counter()

    def probe(model, step):
        model.eval()
        reps = extract(model, prompts, layers=layers)
        model.train()
        for layer, features in reps.items():
            m = standard_probe(features, xy, split)
            rows.append({"task": args.task, "min_population": args.min_population, "n_real": n_real,
                         "lr": args.lr, "step": step, "items": step * 128, "items_per_city": step * 128 / n_real,
                         "layer": layer, "r2_x": m["r2_x"], "r2_y": m["r2_y"], "r2_mean": m["r2_mean"]})
        line = "  ".join(f"L{r['layer']} {r['r2_x']:+.2f}/{r['r2_y']:+.2f}" for r in rows[-len(layers):])
        print(f"step {step:6d}  {step * 128 / n_real:6.0f} items/city  {time.perf_counter() - began:6.0f} s  "
              f"R² x/y: {line}", flush=True)
        if args.out:  # after every probe: a run stopped early still leaves its curve up to its last probe
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "w", newline="") as handle:
                writer = csv.DictWriter(handle, list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    with tempfile.TemporaryDirectory() as work:
        train(model, train_tokens, validation, recipe, args.seed, torch.device("cpu"), Path(work) / "run", "x", probe)


if __name__ == "__main__":
    main()
