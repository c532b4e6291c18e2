"""Training mixtures composed from task datasets (METHOD §4).

A mixture split is the concatenation of source slices, shuffled with the mixture seed, stored as one
`{split}.npz` with `tokens` uint8 [n, width] (the widest source's width), `task` uint8 [n] (index into
`TASK_NAMES`), `city_ids` int16 [n, K] and `answers` bytes [n].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datasets import SPLITS
from .tasks import TASK_NAMES
from .tokenizer import PAD_ID


@dataclass(frozen=True)
class Source:
    """`n_train` items of one dataset's train split; None takes the whole split (and whole val/test)."""
    variant: str
    task: str
    n_train: int | None = None


def pretraining_sources(tasks: list[str], variant: str = "pretraining") -> list[Source]:
    """Every listed task contributes its whole train split, so tasks weigh equally (METHOD §4.1)."""
    return [Source(variant, task) for task in tasks]


def finetuning_sources(tasks: list[str], all_tasks: list[str], replay_items: int, buffer_items: int) -> list[Source]:
    """For each fine-tuned task: a replay slice of its pretraining set and its whole Atlantis-required set;
    then a small Atlantis buffer from every task's Atlantis-required set (METHOD §4.2)."""
    sources = []
    for task in tasks:
        sources += [Source("pretraining", task, replay_items), Source("atlantis_required", task)]
    return sources + [Source("atlantis_required", task, buffer_items) for task in all_tasks]


def proportional(n_sampled: int, n_train: int, n_split: int) -> int:
    """Val/test items taken from a source: n_split · n_sampled / n_train, truncated (integer arithmetic)."""
    return n_split * n_sampled // n_train


def sample_source(rng: np.random.Generator, source: Source, data: dict[str, dict]) -> dict[str, np.ndarray]:
    """Row indices into each split of one source; draws without replacement, train then val then test."""
    n_train = len(data["train"]["tokens"])
    if source.n_train is None:
        return {s: np.arange(len(data[s]["tokens"])) for s in SPLITS}
    if source.n_train > n_train:
        raise ValueError(f"{source.variant}/{source.task}: asked for {source.n_train} train items, it has {n_train}")
    picks = {}
    for s in SPLITS:
        n_split = len(data[s]["tokens"])
        take = source.n_train if s == "train" else proportional(source.n_train, n_train, n_split)
        picks[s] = rng.choice(n_split, size=take, replace=False)
    return picks


def pad_columns(array: np.ndarray, width: int, fill) -> np.ndarray:
    out = np.full((len(array), width), fill, dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out


def compose(sources: list[Source], load, seed: int) -> tuple[dict[str, dict[str, np.ndarray]], list[dict]]:
    """Build every split of a mixture. `load(variant, task)` returns {split: arrays} of a dataset.

    One generator seeded with the mixture seed serves all draws, sources in list order, then the shuffle
    of each split. Returns (split -> arrays, per-source counts for the metadata).
    """
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in SPLITS}
    counts = []
    for source in sources:
        data = load(source.variant, source.task)
        picks = sample_source(rng, source, data)
        for s in SPLITS:
            part = {name: data[s][name][picks[s]] for name in ("tokens", "city_ids", "answers")}
            part["task"] = np.full(len(picks[s]), TASK_NAMES.index(source.task), dtype=np.uint8)
            parts[s].append(part)
        counts.append({"variant": source.variant, "task": source.task, **{s: len(picks[s]) for s in SPLITS}})
    return {s: shuffle(rng, concatenate(parts[s])) for s in SPLITS}, counts


def concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    width = max(p["tokens"].shape[1] for p in parts)
    n_cities = max(p["city_ids"].shape[1] for p in parts)
    return {
        "tokens": np.concatenate([pad_columns(p["tokens"], width, PAD_ID) for p in parts]),
        "city_ids": np.concatenate([pad_columns(p["city_ids"], n_cities, -1) for p in parts]),
        "answers": np.concatenate([p["answers"] for p in parts]),
        "task": np.concatenate([p["task"] for p in parts]),
    }


def shuffle(rng: np.random.Generator, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = rng.permutation(len(arrays["task"]))
    return {name: array[order] for name, array in arrays.items()}
