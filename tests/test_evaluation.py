"""Greedy evaluation (METHOD §3.7, §5, §8): parsing and scoring, prompts, left padding, batched greedy decoding.

The expected values here are written from the spec, not read back from the module: failure values, parse rules and
the vocabulary table are restated by hand, and greedy decoding is checked against Hugging Face `generate`.
"""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worldrep.evaluation import (decode_text, evaluate_items, greedy_generate, left_pad, max_new_tokens,
                                 parse_answer, prompt_tokens, score, score_items, summarize)
from worldrep.model import build_model
from worldrep.tokenizer import encode_compact

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# METHOD §3.7 failure values, restated from the spec's table.
DIST_FAIL = math.sqrt(3600 ** 2 + 1800 ** 2)  # ≈ 4024.9
AREA_FAIL = 3_240_000.0
ANGLE_FAIL = 180.0
PERIM_FAIL = 20_000.0

D = "dist(c_2265,c_0300)="
T = "triarea(c_3746,c_9101,c_9825)="
A = "angle(c_8935,c_5952,c_8391)="
P = "perimeter(c_5464,c_8616,c_9604,c_4496)="
CO = "compass(c_5584,c_8036)="
I = "inside(c_9205;c_5488,c_6599,c_9049,c_6824,c_7170)="
CR = "cross(c_7277,c_8232;c_0238,c_5579)="

# (task, decoded prompt + generation, true answer, item value, parse failed)
CASES = [
    # distance: digit run after the first `=` that is immediately followed by a digit
    ("distance", D + "1929", "1929", 0.0, False),
    ("distance", D + "1900", "1929", 29.0, False),
    ("distance", D + "2000", "1929", 71.0, False),
    ("distance", D + "01929", "1929", 0.0, False),  # a digit run is read as an integer
    ("distance", D, "1929", DIST_FAIL, True),  # prompt only: the model emitted nothing but <eos>
    ("distance", D + "abc", "1929", DIST_FAIL, True),
    ("distance", D + "-5", "1929", DIST_FAIL, True),
    ("distance", "dist(c_2265,c_0300)", "1929", DIST_FAIL, True),  # no `=` at all
    ("distance", "", "1929", DIST_FAIL, True),
    ("distance", D + "12ab", "1929", 1917.0, False),  # letters after the digits end the run
    ("distance", D + "12=34", "1929", 1917.0, False),  # the first `=` wins
    ("distance", D + "x=34", "1929", 1895.0, False),  # the first `=` *followed by a digit* wins
    ("distance", D + "1929" + "<eos>", "1929", 0.0, False),
    ("distance", "d i s t ( c _ 2 2 6 5 , c _ 0 3 0 0 ) = 1 9 2 9", "1929", 0.0, False),  # spaces removed
    ("distance", D + "1 9 0 0 x 7", "1929", 29.0, False),
    ("distance", D + "99999", "1929", 98070.0, False),  # larger than the failure value: not a cap
    # trianglearea: same rule as distance
    ("trianglearea", T + "108560", "108560", 0.0, False),
    ("trianglearea", T + "108000", "108560", 560.0, False),
    ("trianglearea", T + "ABC", "108560", AREA_FAIL, True),
    ("trianglearea", T, "108560", AREA_FAIL, True),
    ("trianglearea", T + "x=100", "108560", 108460.0, False),
    ("trianglearea", T + "9999999", "108560", 9891439.0, False),  # > 3,240,000
    # angle: digit run after the first `)=` that is immediately followed by a digit
    ("angle", A + "13", "13", 0.0, False),
    ("angle", A + "90", "13", 77.0, False),
    ("angle", A + "1 3", "13", 0.0, False),
    ("angle", A + "13abc", "13", 0.0, False),
    ("angle", A + "7=9", "13", 6.0, False),
    ("angle", A, "13", ANGLE_FAIL, True),
    ("angle", A + "x", "13", ANGLE_FAIL, True),
    ("angle", A + "x=13", "13", ANGLE_FAIL, True),  # `=13` is not `)=13`
    ("angle", A + "x=5)=20", "13", 7.0, False),  # the first `)=` followed by a digit, not the first `=`
    ("angle", A + "999", "13", 986.0, False),  # > 180
    # perimeter: same rule as angle
    ("perimeter", P + "2928", "2928", 0.0, False),
    ("perimeter", P + "3000", "2928", 72.0, False),
    ("perimeter", P + "x=2928", "2928", PERIM_FAIL, True),
    ("perimeter", P, "2928", PERIM_FAIL, True),
    ("perimeter", P + "x=5)=2900", "2928", 28.0, False),
    ("perimeter", P + "99999", "2928", 97071.0, False),  # > 20,000
    # compass: everything after the last `=`, upper-cased, exact match
    ("compass", CO + "W", "W", 1.0, False),
    ("compass", CO + "NE", "NE", 1.0, False),
    ("compass", CO + "ne", "NE", 1.0, False),
    ("compass", CO + "N E", "NE", 1.0, False),
    ("compass", CO + "N", "NE", 0.0, False),
    ("compass", CO + "NEE", "NE", 0.0, False),
    ("compass", CO + "NE1", "NE", 0.0, False),
    ("compass", CO + "W=NE", "NE", 1.0, False),  # the last `=` wins
    ("compass", CO + "NE=W", "NE", 0.0, False),
    ("compass", "compass(c_5584,c_8036)", "NE", 0.0, True),
    # inside and crossing
    ("inside", I + "TRUE", "TRUE", 1.0, False),
    ("inside", I + "true", "TRUE", 1.0, False),
    ("inside", I + "T R U E", "TRUE", 1.0, False),
    ("inside", I + "FALSE", "TRUE", 0.0, False),
    ("inside", I + "TRUEX", "TRUE", 0.0, False),
    ("inside", "inside(c_9205;c_5488,c_6599,c_9049)", "TRUE", 0.0, True),
    ("crossing", CR + "FALSE", "FALSE", 1.0, False),
    ("crossing", CR + "fAlSe", "FALSE", 1.0, False),
    ("crossing", CR + "TRUE", "FALSE", 0.0, False),
    ("crossing", CR + "FALSE99", "FALSE", 0.0, False),
]


@pytest.mark.parametrize("task, text, answer, value, failed", CASES)
def test_score_follows_the_parse_rules(task, text, answer, value, failed):
    got_value, got_failed = score(task, text, answer)
    assert got_value == pytest.approx(value, rel=1e-12, abs=0)
    assert bool(got_failed) == failed


@pytest.mark.parametrize("task", ["compass", "inside", "crossing"])
def test_categorical_prompt_only_scores_zero(task):
    prompt = {"compass": CO, "inside": I, "crossing": CR}[task]
    for answer in ("TRUE", "FALSE", "N", "SW"):
        assert score(task, prompt, answer)[0] == 0.0


def test_parse_answer_types():
    assert parse_answer("distance", D + "1 9 2 9") == 1929
    assert parse_answer("angle", A + "045") == 45
    assert parse_answer("distance", D + "abc") is None
    assert parse_answer("angle", A + "x=45") is None
    assert parse_answer("compass", CO + "s w") == "SW"
    assert parse_answer("inside", "inside(c_1234;c_2345,c_3456,c_4567)") is None


def test_equals_rule_differs_between_distance_and_angle():
    """Distance and trianglearea read after the first `=`; angle and perimeter after the first `)=`."""
    tail = "x=5)=20"
    assert parse_answer("distance", D + tail) == parse_answer("trianglearea", T + tail) == 5
    assert parse_answer("angle", A + tail) == parse_answer("perimeter", P + tail) == 20


def test_failure_values_are_exactly_the_spec():
    expected = {"distance": DIST_FAIL, "trianglearea": AREA_FAIL, "angle": ANGLE_FAIL, "perimeter": PERIM_FAIL,
                "compass": 0.0, "inside": 0.0, "crossing": 0.0}
    for task, value in expected.items():
        got, failed = score(task, "garbage without an equals sign", "1" if value else "TRUE")
        assert failed and got == value, task
    assert score("distance", "", "0")[0] == pytest.approx(4024.922359499621, rel=1e-15)


def test_score_items_accepts_bytes_and_str_answers():
    texts = [D + "1929", D + "1549", D + "abc", D + "200"]
    as_bytes = np.array([b"1929", b"1500", b"1929", b"195"])  # as stored in the npz files (dtype S)
    as_str = [a.decode() for a in as_bytes]
    for answers in (as_bytes, as_str):
        values, failed = score_items("distance", texts, answers)
        np.testing.assert_array_equal(values, [0.0, 49.0, DIST_FAIL, 5.0])
        np.testing.assert_array_equal(failed, [False, False, True, False])
    values, failed = score_items("compass", [CO + "NE", CO + "sw", "compass(c_1,c_2)", CO + "N"],
                                 np.array([b"NE", b"SW", b"N", b"S"]))
    np.testing.assert_array_equal(values, [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(failed, [False, False, True, False])


def test_summarize_is_the_mean_over_all_items_with_failure_count():
    values, failed = score_items("distance", [D + "1929", D + "1919", D + "?", "nothing"], [b"1929"] * 4)
    s = summarize("distance", values, failed)
    assert s["metric"] == "mean_absolute_error" and s["n"] == 4 and s["failures"] == 2
    assert s["value"] == pytest.approx((0 + 10 + 2 * DIST_FAIL) / 4, rel=1e-12)
    values, failed = score_items("inside", [I + "TRUE", I + "FALSE", I + "true", "x"],
                                 ["TRUE", "TRUE", "TRUE", "FALSE"])
    s = summarize("inside", values, failed)
    assert s == {"metric": "accuracy", "value": 0.5, "n": 4, "failures": 1}


def test_max_new_tokens_per_task():
    assert {t: max_new_tokens(t) for t in ("distance", "trianglearea", "angle", "compass", "inside", "perimeter",
                                           "crossing")} == \
        {"distance": 20, "trianglearea": 30, "angle": 30, "compass": 20, "inside": 20, "perimeter": 30,
         "crossing": 20}


# ---- METHOD §5: vocabulary and decoding ------------------------------------------------------------------------

def spec_char(i: int) -> str:
    """The METHOD §5 table, restated: 4-25 punctuation, 26-51 A-Z, 52-57, 58-83 a-z, 84-87, 88-97 digits."""
    table = "!\"#$%&'()*+,-./:;<=>?@" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "[\\]^_`" + "abcdefghijklmnopqrstuvwxyz" \
        + "{|}~" + "0123456789"
    assert len(table) == 94
    return table[i - 4]


def test_spec_table_anchor_ids():
    assert [spec_char(i) for i in (22, 15, 20, 11, 12, 56, 60, 88, 97, 26, 58)] == \
        ["=", ",", ";", "(", ")", "_", "c", "0", "9", "A", "a"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_decode_text_maps_ids_and_drops_specials(dtype):
    every = np.arange(4, 98)[None, :]
    assert decode_text(every.astype(dtype)) == ["".join(spec_char(i) for i in range(4, 98))]
    # <bos> d i s t ( c _ 0 1 2 3 ) = 9 <eos> <pad> <unk> <pad>
    row = [2, 61, 66, 76, 77, 11, 60, 56, 88, 89, 90, 91, 12, 22, 97, 3, 0, 1, 0]
    specials_only = [2, 3, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert decode_text(np.array([row, specials_only], dtype=dtype)) == ["dist(c_0123)=9", ""]


def test_decode_text_inverts_the_stored_encoding():
    compact = np.array([b"dist(c_2265,c_0300)=1929", b"inside(c_9205;c_5488,c_6599,c_9049)=FALSE",
                        b"compass(c_5584,c_8036)=NW"])
    assert decode_text(encode_compact(compact)) == [c.decode() for c in compact]


# ---- METHOD §8: prompts -----------------------------------------------------------------------------------------

def test_prompt_tokens_cut_after_the_first_equals():
    # Row 1 has a second `=` inside its answer: only the first one ends the prompt.
    stored = encode_compact(np.array([b"dist(c_2265,c_0300)=1929", b"angle(c_8935,c_5952,c_8391)=13=4",
                                      b"perimeter(c_5464,c_8616,c_9604,c_4496)=2928"]))
    prompts = prompt_tokens(stored)
    assert prompts.shape[1] >= max(len(D), len(A), len(P)) + 1
    for row, prompt, text in zip(stored, prompts, (D, A, P)):
        cut = list(row).index(22) + 1
        assert cut == len(text) + 1  # <bos> + the prompt characters
        np.testing.assert_array_equal(prompt[:cut], row[:cut])
        assert prompt[0] == 2 and prompt[cut - 1] == 22
        assert (prompt[cut:] == 0).all()
    assert decode_text(prompts) == [D, A, P]


def test_prompt_tokens_require_an_equals_token():
    stored = encode_compact(np.array([b"dist(c_2265,c_0300)=1929", b"dist(c_2265,c_0300)"]))
    with pytest.raises(ValueError):
        prompt_tokens(stored)


# ---- METHOD §5, §8: left padding --------------------------------------------------------------------------------

def test_left_pad_exact():
    right = torch.tensor([[2, 5, 6, 0, 0], [2, 7, 0, 0, 0], [2, 8, 9, 10, 11], [2, 0, 0, 0, 0]])
    ids, mask = left_pad(right)
    assert ids.tolist() == [[0, 0, 2, 5, 6], [0, 0, 0, 2, 7], [2, 8, 9, 10, 11], [0, 0, 0, 0, 2]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_left_pad_round_trips(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, size=16)
    right = torch.zeros(16, 30, dtype=torch.long)
    for i, n in enumerate(lengths):
        right[i, :n] = torch.from_numpy(rng.integers(4, 98, size=n))
    ids, mask = left_pad(right)
    assert ids.shape[0] == 16
    assert (ids[mask == 0] == 0).all()
    for i, n in enumerate(lengths):
        assert mask[i].sum() == n
        assert (mask[i, -n:] == 1).all()  # real tokens are right-aligned
        assert ids[i][mask[i].bool()].tolist() == right[i, :n].tolist()


# ---- METHOD §8: greedy decoding ---------------------------------------------------------------------------------

COMPACT = np.array([b"dist(c_2265,c_0300)=1929", b"angle(c_8935,c_5952,c_8391)=13",
                    b"perimeter(c_5464,c_8616,c_9604,c_4496)=2928", b"compass(c_5584,c_8036)=W",
                    b"inside(c_9205;c_5488,c_6599,c_9049,c_6824,c_7170)=TRUE",
                    b"cross(c_7277,c_8232;c_0238,c_5579)=FALSE"])


@pytest.fixture(scope="module")
def prompts():
    return torch.from_numpy(prompt_tokens(encode_compact(COMPACT)).astype(np.int64))


def eos_biased_model(scale: float):
    """The paper model at random init, with the `<eos>` row of lm_head scaled so that rows stop at different steps."""
    model = build_model(seed=3).eval()
    with torch.no_grad():
        model.lm_head.weight[3] *= scale
    return model


def hf_greedy(model, prompts: torch.Tensor, max_new: int) -> torch.Tensor:
    """Reference: HF generate on a left-padded batch built here, independently of `left_pad`."""
    lengths = [int((row != 0).sum()) for row in prompts]
    width = max(lengths)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = prompts[i, :n]
        mask[i, width - n:] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                             max_new_tokens=max_new, eos_token_id=3, pad_token_id=0)
    return out[:, width:]


def assert_pad_after_eos(new: torch.Tensor):
    for row in new.tolist():
        if 3 in row:
            assert all(t == 0 for t in row[row.index(3) + 1:]), row


@pytest.mark.parametrize("scale, max_new", [(1.0, 20), (1.5, 20), (1.5, 30)])
def test_greedy_matches_hf_generate(prompts, scale, max_new):
    model = eos_biased_model(scale)
    ours = greedy_generate(model, prompts, max_new)
    ref = hf_greedy(model, prompts, max_new)
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref)
    assert_pad_after_eos(ours)
    if scale == 1.0:  # this model runs on for most rows: the limit is respected exactly
        assert ours.shape[1] == max_new
    else:  # this one stops rows at different steps, some immediately
        stops = [row.index(3) for row in ours.tolist() if 3 in row]
        assert len(set(stops)) >= 3 and 0 in stops


def test_greedy_row_does_not_depend_on_its_batch(prompts):
    model = eos_biased_model(1.5)
    mixed = greedy_generate(model, prompts, 20)
    for i in range(len(prompts)):
        n = int((prompts[i] != 0).sum())
        for alone in (prompts[i:i + 1], prompts[i:i + 1, :n])[: 2 if i < 2 else 1]:  # with, without trailing pad
            single = greedy_generate(model, alone, 20)[0]
            assert torch.equal(mixed[i, :len(single)], single), i
            assert (mixed[i, len(single):] == 0).all(), i
    # and a different batch mate order gives the same rows
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    shuffled = greedy_generate(model, prompts[order], 20)
    width = min(shuffled.shape[1], mixed.shape[1])
    assert torch.equal(shuffled[:, :width], mixed[order, :width])


def test_forced_eos_stops_every_row_at_once(prompts):
    model = build_model(seed=0).eval()
    head = torch.nn.Linear(128, 98, bias=True)  # logits = the bias alone: <eos> wins at every position
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[3] = 10.0
    model.lm_head = head
    new = greedy_generate(model, prompts, 20)
    assert (new[:, 0] == 3).all() and (new[:, 1:] == 0).all()


class ScriptedModel:
    """A stand-in causal LM that emits a fixed token script per row, ignoring its input.
    The cache it hands back is the step count, so it works with any loop that threads `past_key_values`."""

    def __init__(self, scripts):
        self.scripts = scripts  # list of token lists, one per prompt row (in order)
        self.row = 0

    def __call__(self, input_ids, past_key_values=None, **_):
        step = 0 if past_key_values is None else past_key_values
        if step == 0:
            self.batch = list(range(self.row, self.row + len(input_ids)))
            self.row += len(input_ids)
        logits = torch.full((len(input_ids), 1, 98), -10.0)
        for b, r in enumerate(self.batch):
            script = self.scripts[r]
            logits[b, 0, script[step] if step < len(script) else script[-1]] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=step + 1)


def digits(s: str) -> list[int]:
    return [88 + int(c) for c in s]


def test_evaluate_items_end_to_end_with_scripted_generations():
    compact = np.array([b"dist(c_2265,c_0300)=1929", b"dist(c_6022,c_7231)=1549", b"dist(c_1111,c_2222)=195",
                        b"dist(c_3333,c_4444)=10", b"dist(c_5555,c_6666)=7"])
    answers = np.array([b"1929", b"1549", b"195", b"10", b"7"])
    scripts = [
        digits("1929") + [3] + digits("55"),  # correct, then keeps talking after <eos>: must be cut
        digits("1500") + [3],  # off by 49
        [60, 3],  # `c`: garbage, failure
        [3],  # prompt only: failure
        digits("1"),  # never stops: 20 ones, a parsed but huge error
    ]
    texts, values, failed = evaluate_items(ScriptedModel(scripts), encode_compact(compact), answers, "distance",
                                           batch_size=2, device=torch.device("cpu"))
    assert texts == ["dist(c_2265,c_0300)=1929", "dist(c_6022,c_7231)=1500", "dist(c_1111,c_2222)=c",
                     "dist(c_3333,c_4444)=", "dist(c_5555,c_6666)=" + "1" * 20]
    np.testing.assert_array_equal(failed, [False, False, True, True, False])
    np.testing.assert_allclose(values, [0.0, 49.0, DIST_FAIL, DIST_FAIL, float(int("1" * 20) - 7)], rtol=1e-12)


def test_evaluate_items_uses_the_task_limit():
    compact = np.array([b"angle(c_8935,c_5952,c_8391)=13"])
    texts, values, failed = evaluate_items(ScriptedModel([digits("1")]), encode_compact(compact), np.array([b"13"]),
                                           "angle", batch_size=4, device=torch.device("cpu"))
    assert texts == ["angle(c_8935,c_5952,c_8391)=" + "1" * 30]
    assert not failed[0] and values[0] == float(int("1" * 30) - 13)


DATASETS = Path(__file__).resolve().parents[1] / "results" / "datasets" / "pretraining"


@pytest.mark.parametrize("task", ["distance", "trianglearea", "angle", "compass", "inside", "perimeter", "crossing"])
def test_stored_test_items_score_perfectly_on_their_own_text(task):
    """The stored sequences, decoded whole, are perfect generations: error 0 / accuracy 1, no failures."""
    path = DATASETS / task / "test.npz"
    if not path.exists():
        pytest.skip("no generated datasets in results/")
    data = np.load(path)
    texts = decode_text(data["tokens"])
    values, failed = score_items(task, texts, data["answers"])
    assert len(values) > 0 and not failed.any()
    assert (values == (1.0 if task in ("compass", "inside", "crossing") else 0.0)).all()
    prompts = decode_text(prompt_tokens(data["tokens"]))
    assert all(t.startswith(p) and p.endswith("=") and p.count("=") == 1 for t, p in zip(texts, prompts))


# ---- trivial predictors (§14) ----------------------------------------------------------------------------

def test_trivial_predictor_is_the_training_median_or_majority():
    from worldrep.evaluation import trivial_prediction, trivial_score

    assert trivial_prediction("distance", [b"1", b"2", b"10"]) == 2.0
    assert trivial_prediction("perimeter", ["1", "2", "10", "11"]) == 6.0  # even count: the mean of the middle two
    assert trivial_score("distance", 2.0, [b"0", b"4", b"2"]) == pytest.approx(4 / 3)
    assert trivial_prediction("inside", [b"TRUE", b"FALSE", b"TRUE"]) == "TRUE"
    assert trivial_prediction("compass", ["N", "E"]) == "E"  # a tie goes to the first label in sorted order
    assert trivial_score("inside", "TRUE", [b"TRUE", b"FALSE", b"FALSE", b"FALSE"]) == 0.25
