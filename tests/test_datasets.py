"""Task datasets (METHOD §3.1, §3.3–3.5): split sizes, leakage, balance, Atlantis pools, text, determinism, files.

Answers are re-derived per item in pure Python from the spec's formulas, independently of worldrep.tasks.
"""
import math
import re

import numpy as np
import pytest

from worldrep.datasets import SPLITS, VARIANTS, World, dataset_metadata, generate_dataset, render, write_split
from worldrep.tasks import TASK_NAMES
from worldrep.tasks import TASKS
from worldrep.tokenizer import build_hf_tokenizer, decode_tokens
from worldrep.world import WorldSettings, build_world

SETTINGS = {"perimeter": {"city_counts": [2, 3, 4, 5]},
            "inside": {"hull_sizes": [3, 4, 5], "hull_sizes_with_atlantis": [3, 4, 5, 6]}}
SIZES = {"n_train": 3000, "n_val": 63, "n_test": 501}  # odd val/test: balance must be floor(n/2) TRUE
SEED, ROUNDS = 42, 200
FUNCTION = {"distance": "dist", "trianglearea": "triarea", "angle": "angle", "compass": "compass",
            "inside": "inside", "perimeter": "perimeter", "crossing": "cross"}
COUNTS = {"distance": {2}, "compass": {2}, "trianglearea": {3}, "angle": {3}, "crossing": {4},
          "perimeter": {2, 3, 4, 5}, "inside": {4, 5, 6}}
LINE = re.compile(r"^([a-z]+)\(((?:c_\d{4}[,;])*c_\d{4})\)=(.+)$")


@pytest.fixture(scope="module")
def table():
    return build_world(WorldSettings(min_population=100000, atlantis_count=100, atlantis_center=(-35.0, 35.0),
                                     atlantis_std=3.0, atlantis_seed=42, city_id_seed=42))


@pytest.fixture(scope="module")
def world(table):
    return World.from_table(table)


@pytest.fixture(scope="module")
def data(world):
    cache = {}

    def get(task, variant):
        if (task, variant) not in cache:
            splits = generate_dataset(TASKS[task], counts_of(task, variant), variant, SIZES, world, SEED, ROUNDS)
            cache[task, variant] = splits, {s: render(TASKS[task], splits[s], world) for s in SPLITS}
        return cache[task, variant]
    return get


def counts_of(task, variant, settings=None):
    return TASKS[task].city_counts(SETTINGS.get(task, {}) if settings is None else settings, variant)


def gen_text(world, task, variant="pretraining", seed=SEED, settings=None, sizes=None):
    counts = counts_of(task, variant, settings)
    splits = generate_dataset(TASKS[task], counts, variant, sizes or {"n_train": 400, "n_val": 16, "n_test": 100},
                              world, seed, ROUNDS)
    return b"\n".join(b"\n".join(render(TASKS[task], splits[s], world)[0].tolist()) for s in SPLITS)


def keys(task, ids):
    return [(task, tuple(sorted(int(c) for c in row if c >= 0))) for row in ids]


def compact(line):
    assert line.startswith("<bos> ") and line.endswith(" <eos>"), line
    body = line[len("<bos> "):-len(" <eos>")]
    assert body.split(" ") == list(body.replace(" ", "")), line  # single chars joined by single spaces
    return body.replace(" ", "")


# ------------------------------------------------------------------ oracles (pure Python, from METHOD §3.2)
def ccw(p, q, r):
    return (r[1] - p[1]) * (q[0] - p[0]) > (q[1] - p[1]) * (r[0] - p[0])


def oracle(task, pts):
    """Answer string, or a set of acceptable strings where a float lands within 1e-6 of a rounding tie."""
    def rnd(v):
        return {str(math.floor(v)), str(math.ceil(v))} if abs(v - math.floor(v) - 0.5) < 1e-6 else {str(round(v))}
    dist = lambda a, b: math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)  # noqa: E731
    if task == "distance":
        return rnd(dist(*pts))
    if task == "trianglearea":
        (ax, ay), (bx, by), (cx, cy) = pts
        return {str(round(abs(ax * (by - cy) + bx * (cy - ay) + cx * (ay - by)) / 2))}
    if task == "angle":
        a, b, c = pts
        u, v = (a[0] - b[0], a[1] - b[1]), (c[0] - b[0], c[1] - b[1])
        if u == (0, 0) or v == (0, 0):
            return {"0"}
        cos = (u[0] * v[0] + u[1] * v[1]) / (math.hypot(*u) * math.hypot(*v))
        return rnd(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    if task == "compass":
        (ax, ay), (bx, by) = pts
        if (ax, ay) == (bx, by):
            return {"N"}
        phi = math.degrees(math.atan2(by - ay, bx - ax)) % 360
        return {["E", "NE", "N", "NW", "W", "SW", "S", "SE"][int(((phi + 22.5) % 360) // 45)]}
    if task == "perimeter":
        edges = [dist(pts[i], pts[i + 1]) for i in range(len(pts) - 1)]
        total = sum(edges) + (dist(pts[-1], pts[0]) if len(pts) > 2 else 0.0)
        return rnd(total)
    if task == "crossing":
        a, b, c, d = pts
        return {"TRUE" if ccw(a, c, d) != ccw(b, c, d) and ccw(a, b, c) != ccw(a, b, d) else "FALSE"}
    return None  # inside: not recomputed here


# -------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("task", list(TASKS))
def test_sizes_leakage_and_metadata(data, task, variant):
    splits, rendered = data(task, variant)
    for s in SPLITS:
        n = SIZES[f"n_{s}"]
        assert len(splits[s].k) == len(splits[s].cities) == len(splits[s].answers) == n
        assert len(rendered[s][0]) == len(rendered[s][1]["tokens"]) == len(rendered[s][1]["city_ids"]) == n
    k = {s: keys(task, rendered[s][1]["city_ids"]) for s in SPLITS}
    train = set(k["train"])
    for s in ("val", "test"):
        assert not train & set(k[s]), f"{task}/{variant}/{s} leaks train keys"
    if task in ("distance", "compass") and variant != "atlantis_required":
        everything = k["train"] + k["val"] + k["test"]
        assert len(set(everything)) == len(everything), "uniform-pool pairs must be distinct across all splits"
    meta = dataset_metadata(TASKS[task], variant, splits, {"seed": SEED})
    assert meta["seed_entropy"] == [SEED, list(TASKS).index(task) + 1, VARIANTS.index(variant) + 1]
    assert meta["key_overlap_with_train"] == {"val": 0, "test": 0}
    assert meta["sizes"] == {s: SIZES[f"n_{s}"] for s in SPLITS}
    if TASKS[task].balanced:
        assert meta["true_count"] == {s: SIZES[f"n_{s}"] // 2 for s in SPLITS}
    if task in ("compass", "inside", "crossing"):  # categorical: label counts from the rendered answers
        expected = {s: dict(zip(*np.unique(rendered[s][1]["answers"], return_counts=True))) for s in SPLITS}
        assert meta["answer_counts"] == {s: {a.decode(): int(c) for a, c in expected[s].items()} for s in SPLITS}
    else:
        assert "answer_counts" not in meta


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("task", ["inside", "crossing"])
def test_balanced_exactly_and_shuffled(data, task, variant):
    splits, rendered = data(task, variant)
    for s in SPLITS:
        n = SIZES[f"n_{s}"]
        answers = [compact(t).split("=")[-1] for t in rendered[s][0].astype(str)]
        assert answers.count("TRUE") == n // 2 and answers.count("FALSE") == n - n // 2, (s, n)
        assert int(np.sum(splits[s].answers)) == n // 2
        if n > 100:  # items are shuffled after balancing, not stored TRUE-block then FALSE-block
            assert 0.3 < answers[: n // 2].count("TRUE") / (n // 2) < 0.7


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("task", list(TASKS))
def test_pools_distinct_cities_and_counts(data, table, task, variant):
    splits, _ = data(task, variant)
    atl = table["is_atlantis"].to_numpy()
    allowed = {4, 5, 6, 7} if (task == "inside" and variant == "with_atlantis") else COUNTS[task]
    for s in SPLITS:
        cities, k = splits[s].cities, splits[s].k
        rows = [row[row >= 0] for row in cities]
        assert [len(r) for r in rows] == list(k), "padding must start exactly at k"
        assert all((row[:kk] >= 0).all() and (row[kk:] == -1).all() for row, kk in zip(cities, k))
        assert all(len(set(r.tolist())) == len(r) for r in rows), "cities within an item must be distinct"
        assert set(k.tolist()) <= allowed
        n_atl = np.array([atl[r].sum() for r in rows])
        if variant == "pretraining":
            assert (n_atl == 0).all()
        elif variant == "atlantis_required":
            assert (n_atl >= 1).all()
            assert (n_atl >= 2).any() or s != "train"  # others come from ALL, so Atlantis may repeat
        elif s == "train":
            assert (n_atl >= 1).any() and (n_atl == 0).any()
    assert set(splits["train"].k.tolist()) == allowed  # uniform over the allowed counts: all occur in 3000


@pytest.mark.parametrize("variant", ["pretraining", "atlantis_required"])
@pytest.mark.parametrize("task", list(TASKS))
def test_text_parses_back_and_answers_match_oracle(data, table, task, variant):
    splits, rendered = data(task, variant)
    xy = {int(c): (int(x), int(y)) for c, x, y in zip(table["city_id"], table["x"], table["y"])}
    text, arrays = rendered["test"]
    checked = 0
    for i, line in enumerate(text.astype(str)):
        m = LINE.match(compact(line))
        assert m, line
        func, cities, answer = m.groups()
        assert func == FUNCTION[task]
        ids = [int(c[2:]) for c in re.split("[,;]", cities)]
        assert ids == [c for c in arrays["city_ids"][i].tolist() if c >= 0]
        semis = [j for j, ch in enumerate(re.findall("[,;]", cities)) if ch == ";"]
        assert semis == {"inside": [0], "crossing": [1]}.get(task, [])
        assert arrays["answers"][i].decode() == answer
        if i < 300 and (want := oracle(task, [xy[c] for c in ids])) is not None:
            assert answer in want, (line, want)
            checked += 1
    assert checked == (0 if task == "inside" else 300)


@pytest.mark.parametrize("task", ["distance", "inside", "perimeter", "angle"])
def test_determinism_and_seed_independence(world, task):
    first = gen_text(world, task, "atlantis_required")
    assert first == gen_text(world, task, "atlantis_required")
    assert first != gen_text(world, task, "atlantis_required", seed=SEED + 1)
    # Another task's settings (and having generated it first) must not move this task's data.
    gen_text(world, "perimeter", "atlantis_required", settings={"city_counts": [3]})
    assert first == gen_text(world, task, "atlantis_required")


def test_streams_are_per_task_and_variant(world, table, data):
    real = table[~table["is_atlantis"]]
    no_atl = World(real["x"].to_numpy(), real["y"].to_numpy(), real["city_id"].to_numpy(), np.zeros(len(real), bool))
    ids = lambda t, v: render(TASKS[t], data(t, v)[0]["train"], world)[1]["city_ids"]  # noqa: E731
    assert not np.array_equal(ids("distance", "pretraining"), ids("compass", "pretraining"))
    assert not np.array_equal(ids("trianglearea", "pretraining"), ids("angle", "pretraining"))
    # Same pool in both variants (no Atlantis in this world), so only the variant's own seed can differ.
    assert gen_text(no_atl, "angle", "pretraining") != gen_text(no_atl, "angle", "with_atlantis")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("task", list(TASKS))
def test_city_order_is_random(data, table, task, variant):
    cities, k = data(task, variant)[0]["train"].cities, data(task, variant)[0]["train"].k
    # Pair order swapped / positions permuted. Inside's column 0 is the test city, whose index distribution
    # differs from the hull's once labels are balanced (central cities are inside more often): compare two
    # hull columns there instead.
    a = 1 if task == "inside" else 0
    assert 0.45 < np.mean(cities[:, a] < cities[:, a + 1]) < 0.55
    # The required Atlantis city lands anywhere, not always first; checked on unbalanced tasks, where the
    # label does not condition positions.
    if variant == "atlantis_required" and not TASKS[task].balanced:
        atl = table["is_atlantis"].to_numpy()[np.maximum(cities, 0)] & (cities >= 0)
        one = atl.sum(axis=1) == 1
        assert 0.45 < np.mean(np.argmax(atl[one], axis=1) / (k[one] - 1)) < 0.55


def test_perimeter_settings_change_only_perimeter(world):
    other = {t: gen_text(world, t) for t in ("distance", "crossing")}
    base = gen_text(world, "perimeter")
    changed = gen_text(world, "perimeter", settings={"city_counts": [2, 3]})
    assert base != changed
    assert {t: gen_text(world, t) for t in other} == other


@pytest.mark.parametrize("task", ["compass", "inside", "perimeter"])
def test_written_files_round_trip(data, tmp_path, task):
    _, rendered = data(task, "with_atlantis")
    hf = build_hf_tokenizer()
    for s in SPLITS:
        text, arrays = rendered[s]
        write_split(tmp_path, s, text, arrays)
        lines = (tmp_path / f"{s}.txt").read_bytes().decode().split("\n")
        assert lines[-1] == "" and lines[:-1] == text.astype(str).tolist()
        with np.load(tmp_path / f"{s}.npz") as npz:
            tokens, ids = npz["tokens"], npz["city_ids"]
            assert (npz["answers"] == arrays["answers"]).all()
        assert (ids == arrays["city_ids"]).all() and tokens.dtype == np.uint8
        assert decode_tokens(tokens) == lines[:-1]
        for row, line in list(zip(tokens, lines))[:50]:
            assert row[row != hf.pad_token_id].tolist() == hf(line, add_special_tokens=False)["input_ids"]
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("task", ["inside", "crossing"])
def test_too_few_rounds_is_a_named_error(world, task, variant):
    with pytest.raises(RuntimeError, match=rf"{task}/{variant}/train"):
        generate_dataset(TASKS[task], counts_of(task, variant), variant, SIZES, world, SEED, max_rounds=1)


def test_too_many_pairs_for_a_tiny_world():
    tiny = World(x=np.arange(5) * 10, y=np.zeros(5, dtype=int), city_ids=np.array([11, 22, 33, 44, 55]),
                 is_atlantis=np.zeros(5, dtype=bool))
    ok = generate_dataset(TASKS["distance"], (2,), "pretraining", {"n_train": 6, "n_val": 2, "n_test": 2}, tiny, 1, 5)
    assert sorted(map(tuple, np.sort(np.concatenate([ok[s].cities for s in SPLITS]), axis=1).tolist())) == \
        [(i, j) for i in range(5) for j in range(i + 1, 5)]  # exactly the 10 existing pairs, each once
    with pytest.raises(ValueError, match=r"11 distinct pairs.*5 cities.*10"):
        generate_dataset(TASKS["compass"], (2,), "pretraining", {"n_train": 7, "n_val": 2, "n_test": 2}, tiny, 1, 5)


def test_check_dataset_refuses_broken_splits(data):
    from worldrep.datasets import check_dataset

    splits, _ = data("crossing", "pretraining")
    meta = dataset_metadata(TASKS["crossing"], "pretraining", splits, {"seed": SEED})
    check_dataset(meta, SIZES, balanced=True)  # the real dataset passes
    for key, bad, message in [("sizes", {**meta["sizes"], "val": 62}, "split sizes"),
                              ("key_overlap_with_train", {"val": 0, "test": 1}, "share keys with train"),
                              ("true_count", {**meta["true_count"], "test": 1}, "not balanced")]:
        with pytest.raises(RuntimeError, match=rf"crossing/pretraining: .*{message}"):
            check_dataset({**meta, key: bad}, SIZES, balanced=True)


# ---- label noise (METHOD Appendix C.2) -----------------------------------------------------------------------------

def noisy(data, task, p, seed=SEED):
    from worldrep.datasets import add_label_noise, noise_rng
    splits, _ = data(task, "pretraining")
    return splits, add_label_noise(splits["train"], TASKS[task].categories, p, noise_rng(seed, task, "pretraining"))


@pytest.mark.parametrize("task", ["distance", "compass", "inside", "perimeter"])
@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.0005])
def test_label_noise_changes_exactly_round_pn_train_answers(data, task, p):
    """Exactly round(p·n) answers differ from the clean ones, each a wrong answer of the task's kind; the items and
    the val and test splits are untouched."""
    splits, (train, changed) = noisy(data, task, p)
    clean = splits["train"]
    n = len(clean.answers)
    differ = np.flatnonzero(train.answers != clean.answers)
    assert len(differ) == math.floor(p * n + 0.5) and differ.tolist() == changed.tolist()
    assert train.answers.dtype == clean.answers.dtype
    assert (train.cities == clean.cities).all() and (train.k == clean.k).all()
    categories = TASKS[task].categories
    if clean.answers.dtype == bool:  # TRUE/FALSE: the other label is the flipped one
        assert (train.answers[differ] == ~clean.answers[differ]).all()
    elif categories:  # another of the task's labels
        assert set(np.unique(train.answers[differ]).tolist()) <= set(range(categories))
    else:  # the answer of another item, different from this one's
        assert np.isin(train.answers[differ], clean.answers).all()


def test_label_noise_is_seeded_nested_and_uniform_over_other_labels(data, world):
    """Same seed, same answers; another seed, other items; the items wrong at p are among those wrong at a larger p,
    with the same wrong answers; compass's wrong labels spread over the 7 other directions."""
    _, (a, changed_a) = noisy(data, "compass", 0.3)
    _, (b, changed_b) = noisy(data, "compass", 0.3)
    assert (a.answers == b.answers).all()
    _, (c, changed_c) = noisy(data, "compass", 0.3, seed=SEED + 1)
    assert not np.array_equal(changed_a, changed_c)
    _, (small, changed_small) = noisy(data, "compass", 0.1)
    assert set(changed_small) <= set(changed_a) and (small.answers[changed_small] == a.answers[changed_small]).all()
    splits, _ = data("compass", "pretraining")
    shift = (a.answers[changed_a] - splits["train"].answers[changed_a]) % 8
    assert set(np.unique(shift)) == set(range(1, 8))
    assert np.bincount(shift, minlength=8)[1:].min() > len(changed_a) / 7 * 0.6


def test_wrong_answers_need_two_different_answers():
    from worldrep.datasets import wrong_answers
    with pytest.raises(ValueError, match="two different answers"):
        wrong_answers(np.full(5, 7), 0, np.random.default_rng(0))
    wrong = wrong_answers(np.array([1, 1, 1, 2]), 0, np.random.default_rng(0))
    assert wrong.tolist() == [2, 2, 2, 1]


def test_noise_count_rounds_halves_up_exactly():
    from worldrep.datasets import noise_count
    assert noise_count(50, 0.29) == 15  # 14.5 (floats make 0.29 * 50 + 0.5 = 14.999...)
    assert noise_count(250, 0.3) == 75 and noise_count(3, 0.5) == 2 and noise_count(1000, 0.0005) == 1
    assert [noise_count(n, 0.1) for n in (4, 5, 6, 14, 15, 16)] == [0, 1, 1, 1, 2, 2]


def split_bytes(task, splits, world) -> dict[str, bytes]:
    """Every split's .txt and .npz bytes, as write_split would write them."""
    import io
    out = {}
    for name, split in splits.items():
        text, arrays = render(TASKS[task], split, world)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        out[name] = b"\n".join(text.tolist()) + buffer.getvalue()
    return out


@pytest.mark.parametrize("task", ["distance", "compass", "crossing"])
def test_with_label_noise_leaves_val_and_test_and_repeats_its_bytes(data, world, task):
    """Label noise as specified: round(p·n) train answers change, none in val or test (the same split objects, the same
    bytes), and the same seed gives the same bytes (another seed, other bytes); p = 0 changes nothing at all."""
    from worldrep.datasets import with_label_noise
    splits, _ = data(task, "pretraining")
    noisy, record = with_label_noise(TASKS[task], splits, 0.2, SEED, "pretraining")
    assert noisy["val"] is splits["val"] and noisy["test"] is splits["test"]
    clean_bytes, noisy_bytes = split_bytes(task, splits, world), split_bytes(task, noisy, world)
    assert {s: noisy_bytes[s] == clean_bytes[s] for s in SPLITS} == {"train": False, "val": True, "test": True}
    assert record == {"p": 0.2, "split": "train", "changed": 600, "of": 3000,
                      "seed_entropy": [SEED, TASK_NAMES.index(task) + 1, 1, 1]}
    assert (noisy["train"].answers != splits["train"].answers).sum() == 600
    again, _ = with_label_noise(TASKS[task], splits, 0.2, SEED, "pretraining")
    assert split_bytes(task, again, world) == noisy_bytes
    other, _ = with_label_noise(TASKS[task], splits, 0.2, SEED + 1, "pretraining")
    assert split_bytes(task, other, world)["train"] != noisy_bytes["train"]
    assert with_label_noise(TASKS[task], splits, 0.0, SEED, "pretraining") == (splits, None)
