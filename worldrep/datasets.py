"""Task datasets: train/val/test splits per (task, variant), leakage-free and balanced (METHOD §3.3–3.5).

Stored per split: `{split}.txt` (the readable text, one item per line) and `{split}.npz` with
`tokens` uint8 [n, width] (right-padded, loadable in one read), `city_ids` int16 [n, K] (-1 padding)
and `answers` bytes [n].
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import sampling
from .artifacts import atomic_write_bytes
from .tasks import TASK_NAMES
from .tasks.base import Task, compact_text, integer_text
from .tokenizer import encode_compact, spaced_text

SPLITS = ("train", "val", "test")
# Stable integer identifiers for seeding; appending is safe, reordering changes every dataset.
VARIANTS = ("pretraining", "atlantis_required", "with_atlantis")


@dataclass(frozen=True)
class World:
    """What sampling needs of the city table: coordinates, IDs and the pools."""
    x: np.ndarray  # int64 [N]
    y: np.ndarray
    city_ids: np.ndarray
    is_atlantis: np.ndarray  # bool [N]

    @classmethod
    def from_table(cls, cities) -> "World":
        return cls(*(cities[c].to_numpy() for c in ("x", "y", "city_id", "is_atlantis")))

    def pools(self, variant: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(pool every city is drawn from, pool one city must come from) for a variant (METHOD §3.5)."""
        everything, atlantis = np.arange(len(self.x)), np.flatnonzero(self.is_atlantis)
        if variant == "pretraining":
            return np.flatnonzero(~self.is_atlantis), None
        if variant == "atlantis_required":
            return everything, atlantis
        if variant == "with_atlantis":
            return everything, None
        raise ValueError(f"unknown dataset variant {variant!r}; expected one of {VARIANTS}")


@dataclass
class Split:
    cities: np.ndarray  # int64 [n, K] city row indices, -1 padding
    k: np.ndarray  # int [n]
    answers: np.ndarray
    rejected: int = 0  # candidates redrawn because their key occurred in train


def dataset_base(variant: str) -> str:
    """The generated variant a dataset folder holds: `pretraining-noise10`, a label-noise copy (METHOD C.2), holds
    `pretraining`'s items with noisy train answers."""
    return variant.split("-", 1)[0]


def seed_entropy(seed: int, task: str, variant: str) -> list[int]:
    """Each (task, variant) gets its own stream from the base seed and stable identifiers (METHOD §3.5)."""
    return [seed, TASK_NAMES.index(task) + 1, VARIANTS.index(variant) + 1]


def dataset_rng(seed: int, task: str, variant: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed_entropy(seed, task, variant)))


def label(task: Task, world: World, cities: np.ndarray, k: np.ndarray) -> np.ndarray:
    safe = np.where(cities >= 0, cities, 0)  # padding columns get any valid city; tasks ignore them
    return task.answer(world.x[safe], world.y[safe], k)


def batch_size(need: dict, rate: dict, n: int) -> int:
    """Candidates for the next round: enough for the scarcest label at its observed acceptance rate, with
    margin, but bounded so that a label that never occurs fails by rounds rather than by memory."""
    wanted = max(need[key] / max(rate[key], 1e-3) for key in need)
    return int(min(1.2 * wanted, 20 * n)) + 64


def fill_split(rng, n, draw, answer, train_keys, balanced: bool, max_rounds: int, what: str) -> Split:
    """Draw candidates in batches until n are accepted: keys unseen in train, labels balanced if asked.

    Balanced splits hold exactly ⌊n/2⌋ TRUE and n − ⌊n/2⌋ FALSE, then are shuffled (METHOD §3.3).
    `rejected` counts leaked candidates among those consumed, not the unused tail of the last batch.
    """
    quota = {True: n // 2, False: n - n // 2} if balanced else {None: n}
    rate = dict.fromkeys(quota, 0.5 if balanced else 1.0)
    taken: dict = {key: [] for key in quota}
    filled = dict.fromkeys(quota, 0)
    rejected = 0
    for _ in range(max_rounds):
        need = {key: quota[key] - filled[key] for key in quota}
        if not any(need.values()):
            break
        cities, k = draw(batch_size(need, rate, n))
        answers = answer(cities, k)
        leaked = (sampling.in_sorted(sampling.item_keys(cities), train_keys) if len(train_keys)
                  else np.zeros(len(k), dtype=bool))
        consumed = []  # how far into this batch each label read: all of it while its quota stays open
        for key in quota:
            ok = ~leaked & ((answers == key) if balanced else True)
            rate[key] = ok.mean()
            pick = np.flatnonzero(ok)[: need[key]]
            taken[key].append((cities[pick], k[pick], answers[pick]))
            filled[key] += len(pick)
            consumed.append(len(k) if len(pick) < need[key] else (pick[-1] + 1 if len(pick) else 0))
        rejected += int(leaked[: max(consumed)].sum())
    else:
        if filled != quota:
            raise RuntimeError(f"{what}: filled {filled} of {quota} items in {max_rounds} draw rounds; "
                               "raise datasets.max_draw_rounds or check the task settings")
    parts = [part for key in quota for part in taken[key]]
    split = Split(*(np.concatenate([p[i] for p in parts]) for i in range(3)), rejected=rejected)
    if balanced:
        order = rng.permutation(n)
        split.cities, split.k, split.answers = split.cities[order], split.k[order], split.answers[order]
    return split


def distinct_pair_splits(rng, sizes: dict, pool: np.ndarray, answer) -> dict[str, Split]:
    """Uniform-pool pair tasks: one draw of distinct unordered pairs, sliced in order into the splits,
    so no pair occurs twice anywhere and val/test are disjoint from train by construction."""
    bounds = np.cumsum([0] + [sizes[f"n_{s}"] for s in SPLITS])
    pairs = sampling.draw_distinct_pairs(rng, int(bounds[-1]), pool)
    k = np.full(len(pairs), 2)
    return {s: Split(pairs[lo:hi], k[lo:hi], answer(pairs[lo:hi], k[lo:hi]))
            for s, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:])}


def generate_dataset(task: Task, counts: tuple[int, ...], variant: str, sizes: dict, world: World, seed: int,
                     max_rounds: int) -> dict[str, Split]:
    """All three splits of one (task, variant) dataset; train first, so val/test can avoid its keys.

    `counts` are the city counts an item may have (`task.city_counts(settings, variant)`).
    """
    rng = dataset_rng(seed, task.name, variant)
    pool, required = world.pools(variant)
    answer = lambda cities, k: label(task, world, cities, k)  # noqa: E731
    if required is None and task.distinct_pairs:
        return distinct_pair_splits(rng, sizes, pool, answer)
    draw = lambda m: sampling.draw_items(rng, m, counts, pool, required)  # noqa: E731
    splits: dict[str, Split] = {}
    train_keys = np.zeros(0, dtype=np.uint64)
    for s in SPLITS:
        splits[s] = fill_split(rng, sizes[f"n_{s}"], draw, answer, train_keys, task.balanced, max_rounds,
                               f"{task.name}/{variant}/{s}")
        if s == "train":
            train_keys = np.sort(sampling.item_keys(splits[s].cities))
    return splits


# ---- label noise (METHOD Appendix C.2) -----------------------------------------------------------------------
# Drawn from its own stream (the dataset's seed entropy + NOISE_STREAM), after the clean splits: a noisy dataset holds
# exactly its clean twin's items, and the draw does not depend on p, so the items wrong at p are among those wrong at
# any larger p, with the same wrong answers: levels differ only in how many items are wrong.
NOISE_STREAM = 1


def noise_rng(seed: int, task: str, variant: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*seed_entropy(seed, task, variant), NOISE_STREAM]))


def noise_count(n: int, p: float) -> int:
    """round(p·n), halves up, in exact arithmetic on p as written (0.29 · 50 = 14.5 -> 15, which floats would make
    14): the number of items whose answer is replaced."""
    return int(Fraction(repr(float(p))) * n + Fraction(1, 2))


def wrong_answers(answers: np.ndarray, categories: int, rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
    """A wrong answer for every item: a uniformly drawn other label (`categories` > 0: answers 0..categories-1 or
    bool), or else the answer of a uniformly drawn other item whose answer differs (numeric tasks)."""
    n = len(answers)
    if categories:
        shift = rng.integers(1, categories, size=n)  # uniform over the categories - 1 other labels
        wrong = (answers.astype(np.int64) + shift) % categories
        return wrong.astype(bool) if answers.dtype == bool else wrong.astype(answers.dtype)
    if n < 2 or np.all(answers == answers[0]):
        raise ValueError("label noise needs at least two different answers in the split")
    other = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(max_rounds):  # redraw the items whose drawn partner has the same answer
        pick = rng.integers(0, n - 1, size=len(todo))
        pick += pick >= todo  # uniform over the other n - 1 items
        other[todo] = pick
        todo = todo[answers[pick] == answers[todo]]
        if not len(todo):
            return answers[other]
    raise RuntimeError(f"label noise: {len(todo)} items found no other item with a different answer")


def add_label_noise(split: Split, categories: int, p: float, rng: np.random.Generator) -> tuple[Split, np.ndarray]:
    """(the split with noise_count(n, p) answers replaced by wrong ones, the sorted indices of those items)."""
    order = rng.permutation(len(split.answers))
    wrong = wrong_answers(split.answers, categories, rng)
    changed = np.sort(order[: noise_count(len(order), p)])
    answers = split.answers.copy()
    answers[changed] = wrong[changed]
    return replace(split, answers=answers), changed


def with_label_noise(task: Task, splits: dict[str, Split], p: float, seed: int, variant: str
                     ) -> tuple[dict[str, Split], dict | None]:
    """The splits with label noise p on train (val and test are the same objects, never noisy), and what the
    metadata records of it (None for p = 0). `variant` is the generated one (`dataset_base`): its stream."""
    if not p:
        return splits, None
    train, changed = add_label_noise(splits["train"], task.categories, p, noise_rng(seed, task.name, variant))
    record = {"p": p, "split": "train", "changed": int(len(changed)), "of": len(train.answers),
              "seed_entropy": [*seed_entropy(seed, task.name, variant), NOISE_STREAM]}
    return {**splits, "train": train}, record


def render(task: Task, split: Split, world: World) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(stored text lines as bytes [n], arrays for the .npz) of one split."""
    ids = np.where(split.cities >= 0, world.city_ids[np.maximum(split.cities, 0)], -1)
    compact = compact_text(task, ids, split.answers)
    arrays = {"tokens": encode_compact(compact), "city_ids": ids.astype(np.int16),
              "answers": task.answer_text(split.answers)}
    return spaced_text(compact), arrays


def overlap_with_train(splits: dict[str, Split]) -> dict[str, int]:
    train = set(map(tuple, np.sort(splits["train"].cities, axis=1).tolist()))
    return {s: sum(t in train for t in map(tuple, np.sort(splits[s].cities, axis=1).tolist())) for s in ("val", "test")}


def value_counts(values: np.ndarray) -> dict:
    """{value: count} in ascending value order, as JSON-ready Python scalars."""
    uniques, counts = np.unique(values, return_counts=True)
    return {u.decode() if isinstance(u, bytes) else u.item(): int(c) for u, c in zip(uniques, counts)}


def dataset_metadata(task: Task, variant: str, splits: dict[str, Split], params: dict) -> dict:
    meta = {"task": task.name, "variant": variant, "params": params,
            "seed_entropy": seed_entropy(params["seed"], task.name, variant),
            "sizes": {s: len(sp.k) for s, sp in splits.items()},
            "rejected_for_train_key": {s: sp.rejected for s, sp in splits.items()},
            "key_overlap_with_train": overlap_with_train(splits),
            "city_count_histogram": {s: value_counts(sp.k) for s, sp in splits.items()}}
    if task.balanced:
        meta["true_count"] = {s: int(sp.answers.sum()) for s, sp in splits.items()}
    if task.answer_text is not integer_text:  # categorical: the label balance of every split
        meta["answer_counts"] = {s: value_counts(task.answer_text(sp.answers)) for s, sp in splits.items()}
    return meta


def check_dataset(meta: dict, sizes: dict, balanced: bool) -> None:
    """Refuse to write a dataset that breaks the split rules: exact sizes, no train keys in val/test, and
    exact 50/50 labels where balanced (METHOD §3.3–3.4)."""
    what = f"{meta['task']}/{meta['variant']}"
    if meta["sizes"] != {s: sizes[f"n_{s}"] for s in SPLITS}:
        raise RuntimeError(f"{what}: split sizes {meta['sizes']} differ from the configured {sizes}")
    if any(meta["key_overlap_with_train"].values()):
        raise RuntimeError(f"{what}: val/test items share keys with train: {meta['key_overlap_with_train']}")
    if balanced and meta["true_count"] != {s: n // 2 for s, n in meta["sizes"].items()}:
        raise RuntimeError(f"{what}: labels are not balanced: {meta['true_count']} TRUE of {meta['sizes']}")


def write_split(directory: Path, split: str, text: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_bytes(directory / f"{split}.txt", lambda h: h.write(b"\n".join(text.tolist()) + b"\n"))
    atomic_write_bytes(directory / f"{split}.npz", lambda h: np.savez(h, **arrays))


def load_split(directory: str | Path, split: str) -> dict[str, np.ndarray]:
    with np.load(Path(directory) / f"{split}.npz") as data:
        return {name: data[name] for name in data.files}
