"""K Qwen2 models of one architecture as one stacked model (METHOD §7.1): every weight gets a leading "run"
dimension [K, ...], and one forward computes all K models with batched matmuls and one attention call over
K·B sequences.

Why: a paper model has 1.6M parameters, so one run's step on a GPU is a few hundred tiny kernels and the
device idles on launches. Stacking K runs makes the same number of kernels do K times the work.

The math of slice k is Hugging Face's `Qwen2ForCausalLM` (METHOD §6), op for op: RMSNorm in fp32 cast back to
the input dtype, rotary embedding of the default type, causal attention with scale head_dim^-½, SiLU-gated MLP,
untied lm_head. Parameter names are HF's, so slice k of `state_dict()` is model k's HF state dict
(`slice_state_dict`, `load_slice`), and every checkpoint is still written as an HF model directory.

No attention mask: training batches are right-padded (pads come last) and attention is causal, so pads never
reach a real position; the loss ignores pad targets.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from .model import ModelSettings, build_model, settings_from_config
from .tokenizer import PAD_ID


class StackedLinear(nn.Module):
    """K `nn.Linear` layers: weight [K, out, in], optional bias [K, out]; input [K, N, in]."""

    def __init__(self, k: int, d_in: int, d_out: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, d_out, d_in))
        self.bias = nn.Parameter(torch.empty(k, d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class StackedRMSNorm(nn.Module):
    """K `Qwen2RMSNorm`s: normalised in fp32, cast back to the input dtype, then scaled (HF's order)."""

    def __init__(self, k: int, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.unsqueeze(1) * x.to(dtype)


class StackedEmbedding(nn.Module):
    """K embedding tables [K, V, H], looked up as a one-hot matmul in fp32 (autocast off, as HF's embedding).

    A product with a one-hot row is exact (one non-zero term), so the lookup equals `nn.Embedding`'s bit for bit;
    unlike an indexed lookup its backward is a plain batched matmul: deterministic, and free of the host syncs
    that would break CUDA graph capture. With V = 98 it costs under 1% of a step's FLOPs."""

    def __init__(self, k: int, vocab: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, vocab, hidden))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        k, vocab, hidden = self.weight.shape
        with torch.autocast(ids.device.type, enabled=False):
            one_hot = (ids.reshape(k, -1, 1) == torch.arange(vocab, device=ids.device)).to(self.weight.dtype)
            return torch.bmm(one_hot, self.weight).view(*ids.shape, hidden)


class StackedAttention(nn.Module):
    def __init__(self, k: int, s: ModelSettings):
        super().__init__()
        self.heads, self.kv_heads = s.num_attention_heads, s.num_key_value_heads
        self.head_dim = s.hidden_size // s.num_attention_heads
        self.q_proj = StackedLinear(k, s.hidden_size, self.heads * self.head_dim, bias=True)
        self.k_proj = StackedLinear(k, s.hidden_size, self.kv_heads * self.head_dim, bias=True)
        self.v_proj = StackedLinear(k, s.hidden_size, self.kv_heads * self.head_dim, bias=True)
        self.o_proj = StackedLinear(k, self.heads * self.head_dim, s.hidden_size, bias=False)

    def project(self, x: torch.Tensor, batch: int, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated queries and keys, and values, each [K·B, heads, T, d] from x [K, B·T, H]."""
        k, n, _ = x.shape
        length = n // batch

        def heads(projected, count):  # [K, B·T, count·d] -> [K·B, count, T, d]
            return projected.view(k * batch, length, count, self.head_dim).transpose(1, 2)

        q = rotate(heads(self.q_proj(x), self.heads), cos, sin)
        key = rotate(heads(self.k_proj(x), self.kv_heads), cos, sin)
        return q, key, heads(self.v_proj(x), self.kv_heads)

    def attend(self, q, key, value, shape, **mask) -> torch.Tensor:
        if self.kv_heads != self.heads:  # grouped-query attention: HF's repeat_kv
            key = key.repeat_interleave(self.heads // self.kv_heads, dim=1)
            value = value.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, key, value, scale=self.head_dim ** -0.5, **mask)
        return self.o_proj(out.transpose(1, 2).reshape(*shape[:2], self.heads * self.head_dim))

    def forward(self, x: torch.Tensor, batch: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.project(x, batch, cos, sin), x.shape, is_causal=True)

    def cached(self, x, batch, cos, sin, allowed, past):
        """One decoding step: attention over the cached keys and values `past` (or none) and this step's, under
        the boolean mask `allowed` [K·B, 1, T, S]. Returns (output, the keys and values up to this step)."""
        q, key, value = self.project(x, batch, cos, sin)
        if past is not None:
            key, value = torch.cat([past[0], key], dim=2), torch.cat([past[1], value], dim=2)
        return self.attend(q, key, value, x.shape, attn_mask=allowed), (key, value)


class StackedMLP(nn.Module):
    def __init__(self, k: int, s: ModelSettings):
        super().__init__()
        self.gate_proj = StackedLinear(k, s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = StackedLinear(k, s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = StackedLinear(k, s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class StackedLayer(nn.Module):
    def __init__(self, k: int, s: ModelSettings):
        super().__init__()
        self.self_attn = StackedAttention(k, s)
        self.mlp = StackedMLP(k, s)
        self.input_layernorm = StackedRMSNorm(k, s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = StackedRMSNorm(k, s.hidden_size, s.rms_norm_eps)

    def forward(self, x, batch, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), batch, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))

    def cached(self, x, batch, cos, sin, allowed, past):
        attended, present = self.self_attn.cached(self.input_layernorm(x), batch, cos, sin, allowed, past)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), present


class StackedBody(nn.Module):
    """HF's `Qwen2Model` part (named `model.` in the state dict)."""

    def __init__(self, k: int, s: ModelSettings):
        super().__init__()
        self.embed_tokens = StackedEmbedding(k, s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(StackedLayer(k, s) for _ in range(s.num_hidden_layers))
        self.norm = StackedRMSNorm(k, s.hidden_size, s.rms_norm_eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's `apply_rotary_pos_emb` for one tensor [.., T, d] with cos/sin [T, d]."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class StackedQwen2(nn.Module):
    """K `Qwen2ForCausalLM`s of one architecture. `forward(ids [K, B, T])` -> logits [K, B, T, V]."""

    def __init__(self, settings: ModelSettings, k: int):
        super().__init__()
        if settings.tie_word_embeddings:
            raise ValueError("StackedQwen2 supports untied embeddings only (METHOD §6)")
        self.settings, self.k = settings, k
        self.model = StackedBody(k, settings)
        self.lm_head = StackedLinear(k, settings.hidden_size, settings.vocab_size, bias=False)
        head_dim = settings.hidden_size // settings.num_attention_heads
        inv_freq = 1.0 / (settings.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotary(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, d] at positions 0..T-1, computed as HF does (fp32, then cast to the activations' dtype)."""
        freqs = torch.arange(length, device=device, dtype=torch.float)[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def rotary_at(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, 1, T, d] at each row's own positions [N, T] (left-padded decoding), as `rotary` computes them."""
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]

    def decode_step(self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, past: list | None = None):
        """One step of greedy decoding for all K models: ids [K, B, T] (the prompts, then one token per step) at
        positions [K·B, T], with `valid` [K·B, S] marking the real tokens among all S up to now (left padding is not).
        Returns (logits [K, B, V] of each row's last position, the key/value cache to pass back).

        A query attends to the valid keys up to itself, and always to itself: a pad position then has a finite
        output (a row of nothing but masked keys would be NaN, and a NaN value stays NaN even at weight 0). No real
        position ever attends to a pad, so what pads compute never reaches a real token."""
        k, batch, length = ids.shape
        x = self.model.embed_tokens(ids).reshape(k, batch * length, -1)
        cos, sin = self.rotary_at(positions, x.dtype)
        width = valid.shape[1]
        keys = torch.arange(width, device=ids.device)
        queries = keys[width - length:, None]  # each query's index among the keys
        allowed = (valid[:, None, :] & (keys <= queries)) | (keys == queries)
        presents = []
        for index, layer in enumerate(self.model.layers):
            x, present = layer.cached(x, batch, cos, sin, allowed[:, None], None if past is None else past[index])
            presents.append(present)
        last = x.view(k, batch, length, -1)[:, :, -1]
        return self.lm_head(self.model.norm(last)), presents

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The final-norm hidden states [K, B·T, H] of ids [K, B, T]."""
        k, batch, length = ids.shape
        x = self.model.embed_tokens(ids).reshape(k, batch * length, -1)
        cos, sin = self.rotary(length, ids.device, x.dtype)
        for layer in self.model.layers:
            x = layer(x, batch, cos, sin)
        return self.model.norm(x)

    def hidden_states(self, ids: torch.Tensor, layers, last: int) -> dict[int, torch.Tensor]:
        """What HF's `output_hidden_states` gives, for all K models, at `layers` and only the `last` positions:
        {layer: [K, B, last, H]} of ids [K, B, T], layer 0 the embeddings, 1..N-1 the block outputs, N block N's
        output after the final norm (the layer convention of `worldrep.representations`). Extraction keeps 2 of ~18
        positions of 4 of 7 layers: keeping only those is what lets 21 checkpoints share one forward. Training uses
        `hidden`, which keeps no intermediate state."""
        k, batch, length = ids.shape
        x = self.model.embed_tokens(ids).reshape(k, batch * length, -1)
        cos, sin = self.rotary(length, ids.device, x.dtype)
        n = len(self.model.layers)
        kept = {}
        for index in range(n + 1):
            if index:
                x = self.model.layers[index - 1](x, batch, cos, sin)
            if index in layers:
                state = self.model.norm(x) if index == n else x
                # A copy, not a view: a view of the last positions would keep the whole layer's state alive.
                kept[index] = state.view(k, batch, length, -1)[:, :, length - last:].contiguous()
        return kept

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        k, batch, length = ids.shape
        return self.lm_head(self.hidden(ids)).view(k, batch, length, -1)

    # ---- slices as Hugging Face models ------------------------------------------------------------------

    def slice_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Model `index` as a `Qwen2ForCausalLM` state dict (views into the stack; copy before keeping)."""
        return {name: tensor[index] for name, tensor in self.state_dict().items()}

    @torch.no_grad()
    def load_slice(self, index: int, state: dict[str, torch.Tensor]) -> None:
        """Set slice `index` from a `Qwen2ForCausalLM` state dict (every weight; HF's buffers are skipped)."""
        own = self.state_dict()
        missing = set(own) - set(state)
        if missing:
            raise KeyError(f"state dict lacks {sorted(missing)[:3]}...")
        for name, tensor in own.items():
            tensor[index].copy_(state[name])

    @torch.no_grad()
    def export(self, index: int, hf_model) -> None:
        """Copy slice `index` into an existing `Qwen2ForCausalLM` of the same architecture."""
        hf_model.load_state_dict(self.slice_state_dict(index), strict=False)

    def hf_model(self, index: int):
        """A new `Qwen2ForCausalLM` on this stack's device holding a copy of slice `index`. Its throwaway init
        draws from a forked RNG: making one mid-training leaves the global RNG (saved in resume states) as it was."""
        with torch.random.fork_rng(devices=[]):
            model = build_model(self.settings, 0).to(self.inv_freq.device)
        self.export(index, model)
        return model


def from_hf_models(models) -> StackedQwen2:
    """A stack holding copies of the given `Qwen2ForCausalLM`s, in order (on the CPU). They must share one
    architecture: a stack only ever groups runs of one architecture."""
    configs = {json.dumps(asdict(settings_from_config(m.config)), sort_keys=True) for m in models}
    if len(configs) != 1:
        raise ValueError(f"a stack's models must share one architecture; got {sorted(configs)}")
    stack = StackedQwen2(settings_from_config(models[0].config), len(models))
    for index, model in enumerate(models):
        stack.load_slice(index, {name: t.detach().cpu() for name, t in model.state_dict().items()})
    return stack


def stacked_token_losses(stack: StackedQwen2, tokens: torch.Tensor, parameters: dict | None = None) -> torch.Tensor:
    """Each run's next-token cross-entropy over its batch's non-pad targets (METHOD §7.1), [K] from tokens
    [K, B, W]. Rows that are all pad (the static-shape padding of a last partial batch) add no target, so a run's
    loss is the same with or without them. `parameters` (name -> tensor [k, ...]) evaluates the stack's
    architecture with these weights instead of its own, e.g. one run's slices: how a run is computed alone."""
    inputs = tokens[:, :, :-1]
    logits = (stack(inputs) if parameters is None else torch.func.functional_call(stack, parameters, (inputs,)))
    logits = logits.float()
    targets = tokens[:, :, 1:]
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID,
                             reduction="none").view(len(tokens), -1)
    counts = (targets != PAD_ID).reshape(len(tokens), -1).sum(dim=1)
    return losses.sum(dim=1) / counts.clamp(min=1)
