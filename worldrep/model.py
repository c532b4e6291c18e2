"""The Qwen2 causal LM of the paper (METHOD §6): config with every field explicit, and the spec's init."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB


@dataclass(frozen=True)
class ModelSettings:
    """Architecture fields of METHOD §6. The defaults are the paper's model; nothing is left to the library."""
    vocab_size: int = len(VOCAB)
    hidden_size: int = 128
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 4  # full multi-head attention, no grouping
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    init_std: float = 0.1


def qwen2_config(settings: ModelSettings = ModelSettings()):
    from transformers import Qwen2Config

    fields = asdict(settings)
    init_std = fields.pop("init_std")
    rope_theta = fields.pop("rope_theta")
    return Qwen2Config(
        **fields,
        initializer_range=init_std,
        use_sliding_window=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )


def settings_from_config(config) -> ModelSettings:
    """The `ModelSettings` of a Hugging Face Qwen2 config, the inverse of `qwen2_config` (init_std shapes only a
    fresh init and is not in the config: the dataclass default is left in place)."""
    names = [name for name in ModelSettings.__dataclass_fields__ if name not in ("init_std", "rope_theta")]
    return ModelSettings(**{name: getattr(config, name) for name in names},
                         rope_theta=config.rope_parameters["rope_theta"])


def initialize(model: nn.Module, std: float) -> None:
    """METHOD §6: every Linear and Embedding weight (lm_head and the pad row included) ~ N(0, std²),
    Linear biases 0, RMSNorm gains 1. Applied after construction, overriding the library's init."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif type(module).__name__.endswith("RMSNorm"):
                module.weight.fill_(1.0)


def build_model(settings: ModelSettings = ModelSettings(), seed: int = 0):
    """A freshly initialised `Qwen2ForCausalLM`; the init draws come from `seed` alone."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(qwen2_config(settings))
    initialize(model, settings.init_std)
    return model
