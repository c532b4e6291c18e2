"""The Qwen2 model of METHOD §6: exact parameter count, explicit config, the spec's initialisation."""
import numpy as np
import pytest
import torch
from torch import nn

from worldrep.model import build_model


@pytest.fixture(scope="module")
def model():
    return build_model(seed=42)


def test_parameter_count_matches_the_spec(model):
    assert sum(p.numel() for p in model.parameters()) == 1_601_920
    block = model.model.layers[0]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(block.self_attn), count(block.mlp), count(block) - count(block.self_attn) - count(block.mlp)) == \
        (65_920, 196_608, 256)
    assert count(model.model.embed_tokens) == count(model.lm_head) == 98 * 128


def test_config_is_the_paper_architecture(model):
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.max_position_embeddings) == (98, 128, 6, 4, 4, 512, 256)
    assert (c.hidden_act, c.rms_norm_eps, c.tie_word_embeddings, c.use_sliding_window) == ("silu", 1e-6, False, False)
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (0, 2, 3)
    assert c.rope_parameters["rope_theta"] == 10000.0
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.o_proj.bias is None  # the Qwen2 design: biased q/k/v, unbiased output projection


def test_initialisation_follows_the_spec(model):
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert len(weights) == 6 * 7 + 2  # 7 Linear per block, embedding, lm_head
    pooled = torch.cat([w.detach().flatten() for w in weights]).double()
    assert abs(pooled.mean().item()) < 1e-3 and abs(pooled.std().item() - 0.1) < 1e-3  # 1.6M draws of N(0, 0.01)
    for w in weights:  # every matrix separately, including the 98-row embedding and lm_head
        assert abs(w.detach().double().std().item() - 0.1) < 0.01
    assert model.model.embed_tokens.weight[0].abs().sum() > 0  # the pad row is initialised too
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    assert len(biases) == 18 and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    gains = [m.weight for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert len(gains) == 6 * 2 + 1 and all(torch.equal(g, torch.ones_like(g)) for g in gains)


def test_initialisation_is_a_function_of_the_seed():
    a, b, c = build_model(seed=1), build_model(seed=1), build_model(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])


def test_last_hidden_state_is_after_the_final_norm(model):
    """METHOD §10: hidden_states[6] is the normed output, not the raw block-6 residual stream."""
    ids = torch.tensor([[2, 61, 66, 76, 77, 11, 60, 56, 89, 90, 91, 92, 15]])
    raw = {}

    def keep_block_output(module, inputs, output):
        raw["out"] = output[0] if isinstance(output, tuple) else output

    hook = model.model.layers[5].register_forward_hook(keep_block_output)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hook.remove()
    assert len(out.hidden_states) == 7
    assert torch.allclose(out.hidden_states[6], model.model.norm(raw["out"]), atol=1e-6)
    assert not torch.allclose(out.hidden_states[6], raw["out"], atol=1e-3)


def test_saved_model_loads_with_auto_classes(model, tmp_path):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor(np.array([[2, 61, 66, 76, 77, 11, 60]]))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
