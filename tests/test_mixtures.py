"""Independent checks of the training mixtures (METHOD §4.1 pretraining, §4.2 fine-tuning).

Synthetic datasets stand in for the generated ones: every item carries its identity
(variant|task|split|row) in `answers`, and its tokens / city ids are derived from that identity,
so each row of a mixture can be traced back to the exact source row it must equal.
"""
from collections import Counter

import numpy as np
import pytest

from worldrep.mixtures import Source, compose, finetuning_sources, pretraining_sources, proportional
from worldrep.tasks import TASK_NAMES

SPLITS = ("train", "val", "test")
TOKEN_WIDTH = {t: 20 + 3 * i for i, t in enumerate(TASK_NAMES)}  # 20..38, crossing widest
N_CITIES = {"distance": 2, "trianglearea": 3, "angle": 3, "compass": 2, "inside": 7, "perimeter": 5, "crossing": 4}
SMALL = {"pretraining": {"train": 1000, "val": 13, "test": 100},
         "with_atlantis": {"train": 300, "val": 7, "test": 20},
         "atlantis_required": {"train": 200, "val": 11, "test": 50}}


def make_split(variant, task, split, n):
    rows = np.arange(n)
    salt = (list(SMALL).index(variant) * 7 + TASK_NAMES.index(task)) * 3 + SPLITS.index(split)
    tokens = (1 + (rows[:, None] * 31 + np.arange(TOKEN_WIDTH[task]) * 7 + salt * 13) % 255).astype(np.uint8)
    city_ids = ((rows[:, None] * 5 + np.arange(N_CITIES[task]) + salt) % 30000).astype(np.int16)
    answers = np.array([f"{variant}|{task}|{split}|{r}".encode() for r in rows])
    return {"tokens": tokens, "city_ids": city_ids, "answers": answers}


class Loader:
    def __init__(self, sizes=SMALL):
        self.sizes, self.cache, self.calls = sizes, {}, []

    def __call__(self, variant, task):
        self.calls.append((variant, task))
        if (variant, task) not in self.cache:
            self.cache[variant, task] = {s: make_split(variant, task, s, n) for s, n in self.sizes[variant].items()}
        return self.cache[variant, task]


def origin(answer):
    variant, task, split, row = answer.decode().split("|")
    return variant, task, split, int(row)


def check_rows_match_sources(out, load):
    """Each mixture row equals its source row, padded with 0 (tokens) and -1 (city ids) to the widest."""
    for split in SPLITS:
        arrays = out[split]
        assert arrays["tokens"].dtype == np.uint8 and arrays["city_ids"].dtype == np.int16
        assert arrays["task"].dtype == np.uint8
        for i, answer in enumerate(arrays["answers"]):
            variant, task, source_split, row = origin(answer)
            assert source_split == split
            assert TASK_NAMES[arrays["task"][i]] == task
            src = load.cache[variant, task][split]
            w, k = src["tokens"].shape[1], src["city_ids"].shape[1]
            np.testing.assert_array_equal(arrays["tokens"][i, :w], src["tokens"][row])
            assert (arrays["tokens"][i, w:] == 0).all()
            np.testing.assert_array_equal(arrays["city_ids"][i, :k], src["city_ids"][row])
            assert (arrays["city_ids"][i, k:] == -1).all()


def test_paper_scale_counts():
    paper = {"pretraining": {"train": 1_000_000, "val": 128, "test": 10_000},
             "atlantis_required": {"train": 100_000, "val": 128, "test": 10_000}}
    assert [proportional(20_000, 1_000_000, n) for n in (128, 10_000)] == [2, 200]
    assert [proportional(256, 100_000, n) for n in (128, 10_000)] == [0, 25]
    light = {}

    def load(variant, task):  # width-1 arrays: paper-sized row counts at a few MB
        if variant not in light:
            light[variant] = {s: {"tokens": np.ones((n, 1), np.uint8), "city_ids": np.zeros((n, 1), np.int16),
                                  "answers": np.zeros(n, "S1")} for s, n in paper[variant].items()}
        return light[variant]

    expected = {1: (121_792, 130, 10_375), 2: (241_792, 260, 20_575)}
    for tasks in (["compass"], ["crossing", "distance"]):
        sources = finetuning_sources(tasks, list(TASK_NAMES), 20_000, 256)
        assert len(sources) == 2 * len(tasks) + 7
        out, counts = compose(sources, load, 42)
        sizes = tuple(len(out[s]["task"]) for s in SPLITS)
        assert sizes == expected[len(tasks)]
        assert tuple(sum(c[s] for c in counts) for s in SPLITS) == expected[len(tasks)]
        assert len(out["train"]["tokens"]) == len(out["train"]["answers"]) == sizes[0]
        by_task = Counter(TASK_NAMES[t] for t in out["train"]["task"])
        for task in TASK_NAMES:  # 20k + 100k + 256 for a fine-tuned task, 256 for the others
            assert by_task[task] == (120_256 if task in tasks else 256)


@pytest.mark.parametrize("tasks", [["distance"], ["inside", "distance", "crossing"], list(TASK_NAMES)])
def test_pretraining_mixture_is_whole_splits_shuffled(tasks):
    load = Loader()
    sources = pretraining_sources(tasks)
    assert sources == [Source("pretraining", t) for t in tasks]
    out, counts = compose(sources, load, 42)
    assert counts == [{"variant": "pretraining", "task": t, **SMALL["pretraining"]} for t in tasks]
    for split in SPLITS:
        plain = np.concatenate([load.cache["pretraining", t][split]["answers"] for t in tasks])
        got = out[split]["answers"]
        assert len(got) == len(tasks) * SMALL["pretraining"][split]
        assert Counter(got.tolist()) == Counter(plain.tolist())  # exactly the whole splits, no repeats
        assert not np.array_equal(got, plain)  # shuffled
        widest = max(TOKEN_WIDTH[t] for t in tasks)
        assert out[split]["tokens"].shape == (len(got), widest)
        assert out[split]["city_ids"].shape == (len(got), max(N_CITIES[t] for t in tasks))
    check_rows_match_sources(out, load)


def test_with_atlantis_variant_is_used():
    load = Loader()
    out, counts = compose(pretraining_sources(["angle", "perimeter"], "with_atlantis"), load, 42)
    assert load.calls == [("with_atlantis", "angle"), ("with_atlantis", "perimeter")]
    assert {origin(a)[0] for s in SPLITS for a in out[s]["answers"]} == {"with_atlantis"}
    assert len(out["test"]["task"]) == 40


def test_finetuning_mixture_composition():
    tasks, replay, buffer = ["angle", "distance"], 250, 30
    sources = finetuning_sources(tasks, list(TASK_NAMES), replay, buffer)
    assert sources == [Source("pretraining", "angle", 250), Source("atlantis_required", "angle"),
                       Source("pretraining", "distance", 250), Source("atlantis_required", "distance")] + \
        [Source("atlantis_required", t, 30) for t in TASK_NAMES]
    load = Loader()
    out, counts = compose(sources, load, 42)
    assert load.calls == [(s.variant, s.task) for s in sources]  # list order
    # replay: 250 of 1000 -> val 13*250//1000 = 3, test 100*250//1000 = 25
    # buffer: 30 of 200 -> val 11*30//200 = 1 (1.65 truncated), test 50*30//200 = 7 (7.5 truncated)
    replay_c, whole_c, buffer_c = (250, 3, 25), (200, 11, 50), (30, 1, 7)
    expected = []
    for t in tasks:
        expected += [("pretraining", t, *replay_c), ("atlantis_required", t, *whole_c)]
    expected += [("atlantis_required", t, *buffer_c) for t in TASK_NAMES]
    assert [tuple(c[k] for k in ("variant", "task", "train", "val", "test")) for c in counts] == expected
    for i, split in enumerate(SPLITS):
        answers = out[split]["answers"].tolist()
        assert len(answers) == sum(e[2 + i] for e in expected)
        mult = Counter(answers)
        for variant, task in {(v, t) for v, t, *_ in expected}:
            ids = {a: m for a, m in mult.items() if origin(a)[:2] == (variant, task)}
            if variant == "pretraining":  # replay slice: distinct rows only
                assert len(ids) == replay_c[i] and set(ids.values()) == {1}
            elif task in tasks:  # whole set once, plus the independently drawn buffer duplicating some of it
                src = load.cache[variant, task][split]["answers"].tolist()
                assert set(ids) == set(src)
                assert sorted(Counter(ids.values()).items()) == sorted({1: whole_c[i] - buffer_c[i], 2: buffer_c[i]}.items())
            else:  # buffer slice of another task: distinct rows only
                assert len(ids) == buffer_c[i] and set(ids.values()) == {1}
    check_rows_match_sources(out, load)
    assert out["train"]["tokens"].shape[1] == TOKEN_WIDTH["crossing"]  # widest source is a buffer slice


def test_one_generator_in_list_order():
    first = Source("pretraining", "compass", 100)
    later = Source("atlantis_required", "inside", 40)
    picks = lambda out, task: sorted(a for a in out["train"]["answers"].tolist() if origin(a)[1] == task)
    a, _ = compose([first, later], Loader(), 7)
    b, _ = compose([first, Source("atlantis_required", "perimeter", 40)], Loader(), 7)
    c, _ = compose([later], Loader(), 7)
    assert picks(a, "compass") == picks(b, "compass")  # earlier draws do not depend on what follows
    assert picks(a, "inside") != picks(c, "inside")  # a later source continues the shared generator


def test_determinism():
    sources = finetuning_sources(["trianglearea"], list(TASK_NAMES), 250, 30)
    runs = [compose(sources, Loader(), seed) for seed in (42, 42, 43)]
    (a, ca), (b, cb), (c, cc) = runs
    assert ca == cb == cc
    for split in SPLITS:
        for name in ("tokens", "city_ids", "answers", "task"):
            np.testing.assert_array_equal(a[split][name], b[split][name])
        assert not np.array_equal(a[split]["answers"], c[split]["answers"])
    replay = lambda out: {x for x in out["train"]["answers"].tolist() if origin(x)[0] == "pretraining"}
    assert replay(a) == replay(b) and replay(a) != replay(c)
    # the order of a whole-split mixture depends on the seed too
    p = [compose(pretraining_sources(["distance", "angle"]), Loader(), s)[0]["val"]["answers"] for s in (1, 2)]
    assert Counter(p[0].tolist()) == Counter(p[1].tolist()) and not np.array_equal(p[0], p[1])


def test_too_many_items_raises_naming_source():
    load = Loader()
    with pytest.raises(ValueError) as err:
        compose([Source("pretraining", "distance", 10), Source("atlantis_required", "perimeter", 201)], load, 42)
    assert "atlantis_required" in str(err.value) and "perimeter" in str(err.value)
    # exactly the whole split is allowed and yields every item once (val/test whole as well)
    out, counts = compose([Source("atlantis_required", "perimeter", 200)], load, 42)
    assert counts[0] == {"variant": "atlantis_required", "task": "perimeter", "train": 200, "val": 11, "test": 50}
    for split in SPLITS:
        assert sorted(out[split]["answers"].tolist()) == sorted(load.cache["atlantis_required", "perimeter"][split]["answers"].tolist())
