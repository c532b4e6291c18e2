"""The 98-token vocabulary (METHOD §5): ids, the saved HF tokenizer, and the vectorized encoder's agreement."""
import numpy as np
import pytest
from transformers import AutoTokenizer

from worldrep.tasks import TASKS
from worldrep.tasks.base import compact_text
from worldrep.tokenizer import VOCAB, decode_tokens, encode_compact, save_tokenizer, spaced_text


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(directory)
    return AutoTokenizer.from_pretrained(directory)


def test_vocabulary_matches_the_spec_table():
    assert len(VOCAB) == 98
    assert [VOCAB[t] for t in ("<pad>", "<unk>", "<bos>", "<eos>")] == [0, 1, 2, 3]
    # Spot values written in METHOD §5, then the table's ranges.
    assert (VOCAB[","], VOCAB[";"], VOCAB["="], VOCAB["("], VOCAB[")"], VOCAB["_"], VOCAB["c"]) == (15, 20, 22, 11, 12, 56, 60)
    assert [VOCAB[chr(c)] for c in range(ord("A"), ord("Z") + 1)] == list(range(26, 52))
    assert [VOCAB[chr(c)] for c in range(ord("a"), ord("z") + 1)] == list(range(58, 84))
    assert [VOCAB[str(d)] for d in range(10)] == list(range(88, 98))
    assert (VOCAB["!"], VOCAB["@"], VOCAB["["], VOCAB["`"], VOCAB["{"], VOCAB["~"]) == (4, 25, 52, 57, 84, 87)


def test_saved_tokenizer_has_the_special_ids(hf):
    assert len(hf) == 98
    assert (hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2, 3)
    assert hf.convert_ids_to_tokens(list(range(98))) == list(VOCAB)


def test_specials_stay_single_tokens_and_nothing_is_added(hf):
    ids = hf("<bos> d i s t ( c _ 0 4 1 7 , c _ 2 9 8 3 ) = 5 1 2 <eos>")["input_ids"]
    assert ids == [2, 61, 66, 76, 77, 11, 60, 56, 88, 92, 89, 95, 15, 60, 56, 90, 97, 96, 91, 12, 22, 93, 89, 90, 3]
    assert hf("A ~ é")["input_ids"] == [26, 87, 1]  # out-of-vocabulary characters map to <unk>


def random_compact(task_name, n=400, seed=0):
    rng = np.random.default_rng(seed)
    task = TASKS[task_name]
    counts = task.city_counts({"city_counts": [2, 3, 4, 5], "hull_sizes": [3, 4, 5], "hull_sizes_with_atlantis": [3, 4, 5, 6]}, "with_atlantis")
    width = max(counts)
    k = rng.choice(counts, n)
    x, y = rng.integers(-1800, 1801, (n, width)), rng.integers(-900, 901, (n, width))
    ids = rng.integers(0, 10000, (n, width))
    ids[np.arange(width)[None, :] >= k[:, None]] = -1
    return compact_text(task, ids, task.answer(x, y, k))


@pytest.mark.parametrize("task", list(TASKS))
def test_vectorized_encoder_agrees_with_hf_and_round_trips(hf, task):
    compact = random_compact(task)
    text = spaced_text(compact)
    tokens = encode_compact(compact)
    for line, row, plain in zip(text, tokens, compact):
        ids = hf(line.decode())["input_ids"]
        assert ids == row[row != 0].tolist()
        assert row[0] == 2 and ids[-1] == 3 and all(row[len(ids):] == 0)
        assert hf.decode(ids) == line.decode()
        assert line.decode() == "<bos> " + " ".join(plain.decode()) + " <eos>"
    assert decode_tokens(tokens) == [t.decode() for t in text]
    assert tokens.shape[1] == max(len(c) for c in compact) + 2  # trimmed to the longest item
