"""Representation extraction (METHOD §10): partial prompts, token positions, the hidden_states convention of the
pinned transformers, batch/prefix invariance, and the .npz round trip."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from worldrep.model import build_model
from worldrep.representations import (LAYERS, eligible_cities, extract, extract_stack, load_representations,
                                      partial_prompt_tokens, prompt_task, save_representations, token_positions)
from worldrep.tasks import TASK_NAMES, TASKS
from worldrep.tasks.base import compact_text
from worldrep.tokenizer import VOCAB, build_hf_tokenizer, spaced_text

REPO = Path(__file__).resolve().parents[1]
# METHOD §10, "Token positions": (last ID digit, delimiter), counted from <bos> = 0.
SPEC_POSITIONS = {"distance": (11, 12), "trianglearea": (14, 15), "angle": (12, 13), "compass": (14, 15),
                  "inside": (13, 14), "perimeter": (16, 17), "crossing": (12, 13)}
ABBR = {TASKS[t].abbr: t for t in TASK_NAMES}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(one_thread):
    return build_model(seed=0).eval()


@pytest.fixture(scope="module")
def city_ids():
    return np.sort(np.random.default_rng(0).choice(np.arange(1000, 10000), size=40, replace=False))


# ---- prompts -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASK_NAMES)
def test_token_positions_match_the_spec(task):
    tokens = partial_prompt_tokens(task, np.array([1234, 9876]))
    digit, delimiter = token_positions(task)
    assert (digit, delimiter) == SPEC_POSITIONS[task] == (tokens.shape[1] - 2, tokens.shape[1] - 1)
    assert tokens.dtype == np.int64
    assert tokens[:, digit].tolist() == [VOCAB["4"], VOCAB["6"]]
    assert tokens[0, delimiter] == VOCAB[";" if task == "inside" else ","]


@pytest.mark.parametrize("task", TASK_NAMES)
def test_partial_prompt_is_the_start_of_the_stored_text(task):
    """The dataset's own text code and the saved HF tokenizer give the same first tokens as the partial prompt."""
    ids = np.array([[1000, 2983, 417, 5555, 9999, 3141][: max(TASKS[task].default_city_counts)]] * 2)
    ids[1, 0] = 7046
    stored = spaced_text(compact_text(TASKS[task], ids, np.zeros(2, dtype=np.int64)))
    encoded = [build_hf_tokenizer()(text.decode())["input_ids"] for text in stored]
    prompts = partial_prompt_tokens(task, ids[:, 0])
    for row, prompt in zip(encoded, prompts):
        assert row[: len(prompt)] == prompt.tolist()


def test_partial_prompt_example_from_the_spec():
    tokens = partial_prompt_tokens("distance", np.array([1234]))[0]
    names = {i: t for t, i in VOCAB.items()}
    assert " ".join(names[int(i)] for i in tokens) == "<bos> d i s t ( c _ 1 2 3 4 ,"


def test_partial_prompt_rejects_ids_without_four_digits():
    with pytest.raises(ValueError):
        partial_prompt_tokens("distance", np.array([10000]))


def test_prompt_task_reproduces_the_spec_table():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    mixtures, configured = config["mixtures"], list(config["tasks"])
    got = {name: prompt_task(name, tasks, finetuning=False, configured_tasks=configured)
           for family in ("pretraining", "with_atlantis") for name, tasks in mixtures[family].items()}
    got |= {name: prompt_task(name, tasks, finetuning=True, configured_tasks=configured)
            for name, tasks in mixtures["finetuning"]["mixes"].items()}
    expected = {f"pt1-{k}": TASK_NAMES[k - 1] for k in range(1, 8)}
    expected |= {f"pt2-{k}": ABBR[a] for k, a in enumerate("D A I Cr T Co P".split(), 1)}
    expected |= {f"pt3-{k}": ABBR[a] for k, a in enumerate("D Co Cr A P T I".split(), 1)}
    expected |= {"pt7": "distance", "pt7-atl": "distance"}
    expected |= {f"ftwb1-{k}": TASK_NAMES[k - 1] for k in range(1, 8)}
    expected |= {f"ftwb2-{i}": "distance" for i in range(1, 22)}
    assert got == expected


def test_prompt_task_in_a_reduced_config():
    three = ["angle", "compass", "inside"]
    assert prompt_task("all3", ["compass", "inside", "angle"], finetuning=False, configured_tasks=three) == "compass"
    assert prompt_task("ft", ["angle", "compass"], finetuning=True, configured_tasks=three) == "distance"
    with pytest.raises(ValueError):
        prompt_task("bad", ["geography"], finetuning=False, configured_tasks=three)


def test_eligible_cities_keep_four_digit_ids_of_every_region_sorted():
    cities = pd.DataFrame({"city_id": [5000, 999, 1000, 9999, 12, 4321], "x": range(6), "y": range(6),
                           "region": ["Japan", "Africa", "Atlantis", "Oceania", "Atlantis", "Atlantis"],
                           "is_atlantis": [False, False, True, False, True, True]})
    eligible = eligible_cities(cities)
    assert eligible["city_id"].tolist() == [1000, 4321, 5000, 9999]
    assert eligible["is_atlantis"].tolist() == [True, True, False, False]
    assert eligible.index.tolist() == [0, 1, 2, 3]


# ---- the hidden_states convention of the pinned transformers -----------------------------------------------

def test_hidden_states_indexing_matches_the_blocks(model, city_ids):
    """hidden_states[L] is block L's output for L <= 5, and hidden_states[6] is block 6's output after the
    final RMSNorm (not the raw residual stream)."""
    blocks = model.model.layers
    captured = {}
    hooks = [block.register_forward_hook(lambda m, args, out, i=i: captured.__setitem__(
        i, out[0] if isinstance(out, tuple) else out)) for i, block in enumerate(blocks, 1)]
    tokens = torch.as_tensor(partial_prompt_tokens("angle", city_ids[:8]))
    try:
        with torch.inference_mode():
            states = model(input_ids=tokens, output_hidden_states=True).hidden_states
            normed = model.model.norm(captured[len(blocks)])
    finally:
        for hook in hooks:
            hook.remove()
    assert len(states) == len(blocks) + 1 == 7
    assert torch.equal(states[0], model.model.embed_tokens(tokens))
    for layer in range(1, len(blocks)):
        assert torch.equal(states[layer], captured[layer]), layer
    torch.testing.assert_close(states[6], normed, rtol=0, atol=1e-6)
    assert not torch.allclose(states[6], captured[6], atol=1e-3)


# ---- extraction --------------------------------------------------------------------------------------------

def test_extract_gives_the_last_two_positions_per_layer(model, city_ids):
    tokens = partial_prompt_tokens("perimeter", city_ids)
    reps = extract(model, tokens, reuse_prefix=False)
    assert sorted(reps) == list(LAYERS)
    with torch.inference_mode():
        states = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    digit, delimiter = token_positions("perimeter")
    for layer in LAYERS:
        assert reps[layer].shape == (len(city_ids), 256) and reps[layer].dtype == np.float32
        expected = torch.cat([states[layer][:, digit], states[layer][:, delimiter]], dim=1).numpy()
        np.testing.assert_allclose(reps[layer], expected, rtol=0, atol=1e-5)


def test_extract_is_deterministic(model, city_ids):
    tokens = partial_prompt_tokens("distance", city_ids)
    first, second = extract(model, tokens), extract(model, tokens)
    for layer in LAYERS:
        np.testing.assert_array_equal(first[layer], second[layer])


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_batch_size_does_not_change_the_vectors(model, city_ids, reuse_prefix):
    tokens = partial_prompt_tokens("inside", city_ids)
    whole = extract(model, tokens, batch_size=len(tokens), reuse_prefix=reuse_prefix)
    pieces = extract(model, tokens, batch_size=7, reuse_prefix=reuse_prefix)
    for layer in LAYERS:
        np.testing.assert_allclose(pieces[layer], whole[layer], rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["distance", "crossing"])
def test_reusing_the_shared_prefix_matches_the_full_forward(model, city_ids, task):
    tokens = partial_prompt_tokens(task, city_ids)
    fast, plain = extract(model, tokens), extract(model, tokens, reuse_prefix=False)
    for layer in LAYERS:
        scale = np.abs(plain[layer]).max()
        np.testing.assert_allclose(fast[layer], plain[layer], rtol=0, atol=1e-5 * max(scale, 1.0))


def test_stacked_hidden_states_follow_the_layer_convention_of_each_model():
    """StackedQwen2.hidden_states of K = 3 models equals each model's own HF hidden_states, index by index: 0 the
    embeddings, the block outputs, the last one after the final norm; every position, or only the last ones asked
    for, of only the layers asked for."""
    from worldrep.stack import from_hf_models

    models = [build_model(seed=seed).eval() for seed in (0, 1, 2)]
    tokens = torch.as_tensor(partial_prompt_tokens("compass", np.arange(1000, 1012)))
    stack = from_hf_models(models).eval()
    with torch.inference_mode():
        every = stack.hidden_states(tokens.expand(3, *tokens.shape), range(7), last=tokens.shape[1])
        some = stack.hidden_states(tokens.expand(3, *tokens.shape), [0, 6], last=2)
        assert sorted(every) == list(range(7)) and sorted(some) == [0, 6]
        for index, m in enumerate(models):
            alone = m(input_ids=tokens, output_hidden_states=True).hidden_states
            assert len(alone) == 7
            for layer, theirs in enumerate(alone):
                torch.testing.assert_close(every[layer][index], theirs, rtol=0, atol=2e-5,
                                           msg=f"model {index} layer {layer}")
            for layer in (0, 6):
                assert torch.equal(some[layer][index], every[layer][index, :, -2:])


def test_extract_stack_matches_each_model_extracted_alone(city_ids):
    """The fused extraction of a GPU's stack job, on the CPU: K = 3 different models, batches that do not divide the
    cities, a subset of layers; each model's vectors equal `extract` of that model alone (the plain forward and the
    shared-prefix one) to float rounding, and the three differ from one another."""
    from worldrep.stack import from_hf_models

    models = [build_model(seed=seed).eval() for seed in (3, 4, 5)]
    tokens = partial_prompt_tokens("inside", city_ids)
    fused = extract_stack(from_hf_models(models).eval(), tokens, layers=[3, 6], batch_size=16)
    assert len(fused) == 3
    for m, ours in zip(models, fused):
        assert sorted(ours) == [3, 6] and all(ours[layer].shape == (len(city_ids), 256) for layer in ours)
        for reuse_prefix in (False, True):
            alone = extract(m, tokens, layers=[3, 6], reuse_prefix=reuse_prefix)
            for layer in (3, 6):
                assert ours[layer].dtype == np.float32
                np.testing.assert_allclose(ours[layer], alone[layer], rtol=0, atol=5e-5)
    assert not np.allclose(fused[0][6], fused[1][6], atol=1e-2)


def test_one_city_and_one_layer(model):
    reps = extract(model, partial_prompt_tokens("compass", np.array([4242])), layers=[5])
    assert list(reps) == [5] and reps[5].shape == (1, 256)


def test_extract_refuses_a_half_precision_model(model, city_ids):
    half = build_model(seed=0).half()
    with pytest.raises(ValueError, match="fp32"):
        extract(half, partial_prompt_tokens("distance", city_ids))


# ---- files -------------------------------------------------------------------------------------------------

def test_save_load_roundtrip(tmp_path, city_ids):
    rng = np.random.default_rng(1)
    reps = {layer: rng.normal(size=(len(city_ids), 256)).astype(np.float32) for layer in LAYERS}
    path = tmp_path / "representations.npz"
    save_representations(path, city_ids, reps)
    ids, loaded = load_representations(path)
    np.testing.assert_array_equal(ids, city_ids)
    assert list(loaded) == list(LAYERS)
    for layer in LAYERS:
        assert loaded[layer].dtype == np.float32
        np.testing.assert_array_equal(loaded[layer], reps[layer])
    with np.load(path) as data:
        assert data["city_ids"].dtype == np.int16
    assert [p.name for p in tmp_path.iterdir()] == ["representations.npz"]  # no .partial left behind


def test_save_rejects_mismatched_rows(tmp_path, city_ids):
    with pytest.raises(ValueError):
        save_representations(tmp_path / "r.npz", city_ids, {5: np.zeros((len(city_ids) - 1, 256), np.float32)})
