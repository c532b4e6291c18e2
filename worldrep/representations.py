"""Per-city representations: partial prompts, hidden states at layers 3–6, one `.npz` per model (METHOD §10).

Layer convention (the contract with probes and CKA): layer L is `hidden_states[L]` of the pinned `transformers`
Qwen2 with N blocks, where 0 is the embedding output, 1..N-1 the outputs of those blocks, and N the output of
block N **after** the final RMSNorm (the library puts the normed state there). A city's vector at layer L is
[h_L(last ID digit), h_L(delimiter)], 2 × hidden_size numbers (256 for the paper's model, layers 3–6 of 6).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .artifacts import atomic_write_bytes
from .tasks import TASKS, prompt_task  # noqa: F401  (prompt_task lives with the tasks: planning needs it without torch)
from .tokenizer import BOS_ID, VOCAB
from .world import ELIGIBLE_MIN_ID, MAX_CITY_ID

LAYERS = (3, 4, 5, 6)
# The default layers are the paper's 6-block model; `representations.layers` in the config chooses others.
LAYER_CONVENTION = "hidden_states[L]: 0 = embeddings, 1..N-1 = block outputs, N = block N after the final RMSNorm"


# ---- which cities, which prompt ----------------------------------------------------------------------------

def eligible_cities(cities: pd.DataFrame) -> pd.DataFrame:
    """Cities with a 4-digit ID (1000..9999), every region and Atlantis included, ascending `city_id` (§10, §14)."""
    keep = cities["city_id"].between(ELIGIBLE_MIN_ID, MAX_CITY_ID)
    return cities[keep].sort_values("city_id", kind="stable").reset_index(drop=True)


def partial_prompt_tokens(task: str, city_ids: np.ndarray) -> np.ndarray:
    """Token ids of `<bos> f u n c ( c _ d d d d <delim>` per city: int64 [n, L], no padding needed (§10).

    The delimiter is the separator that follows the first city in the task's text: `;` where the task puts
    its semicolon before the second city (inside), `,` otherwise.
    """
    ids = np.asarray(city_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size and (ids.min() < 0 or ids.max() > MAX_CITY_ID):
        raise ValueError("city_ids must be a 1-D array of IDs in [0, 9999] (written with 4 digits)")
    spec = TASKS[task]
    delimiter = ";" if spec.semicolon_before == 1 else ","
    head = [BOS_ID, *(VOCAB[ch] for ch in f"{spec.function}(c_")]
    digits = VOCAB["0"] + ids[:, None] // np.array([1000, 100, 10, 1]) % 10  # digit ids are contiguous, 0..9
    tokens = np.empty((len(ids), len(head) + 5), dtype=np.int64)
    tokens[:, : len(head)] = head
    tokens[:, len(head): -1] = digits
    tokens[:, -1] = VOCAB[delimiter]
    return tokens


def token_positions(task: str) -> tuple[int, int]:
    """(last ID digit, delimiter) positions, counted from <bos> = 0: the final two tokens of the prompt."""
    length = partial_prompt_tokens(task, np.array([ELIGIBLE_MIN_ID])).shape[1]
    return length - 2, length - 1


# ---- extraction --------------------------------------------------------------------------------------------

def shared_prefix_length(tokens: torch.Tensor) -> int:
    """Leading columns equal in every row, capped so the last two positions stay in the per-city part."""
    same = (tokens == tokens[:1]).all(dim=0).int()  # [L]
    return min(int(same.cumprod(0).sum()), tokens.shape[1] - 2)


def prefix_cache(model, prefix: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block (keys, values) [1, heads, P, head_dim] of the prompt part every city shares."""
    out = model(input_ids=prefix[None], use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def hidden_states(model, tokens: torch.Tensor, prefix_kv=None) -> tuple[torch.Tensor, ...]:
    """`hidden_states` (num_layers + 1 tensors [b, pos, hidden]) of one batch.

    With `prefix_kv` the shared prefix comes from the cache and only the remaining positions are computed
    (and returned). Causal attention makes this the same computation as the full forward, up to float
    rounding; it is 2.5–3.5× less work, because the prefix is 8–13 of a prompt's 13–18 tokens.
    """
    if prefix_kv is None:
        return model(input_ids=tokens, output_hidden_states=True, logits_to_keep=1).hidden_states
    from transformers import DynamicCache

    b, p = len(tokens), prefix_kv[0][0].shape[2]
    cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix_kv],
                         config=model.config)  # expand is a view; the cache's update concatenates into new tensors
    return model(input_ids=tokens[:, p:], past_key_values=cache, use_cache=True, output_hidden_states=True,
                 logits_to_keep=1).hidden_states


def check_extraction(model, num_layers: int, layers: Sequence[int], tokens: np.ndarray) -> None:
    """Refuse, before any forward, what `extract` (an HF model) and `extract_stack` (a stack) cannot do."""
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("representations are extracted in fp32; load the model with dtype=torch.float32")
    if not all(0 <= layer <= num_layers for layer in layers):
        raise ValueError(f"layers {list(layers)} outside 0..{num_layers}")
    if len(tokens) == 0:
        raise ValueError("no prompts to extract")


def extract(model, tokens: np.ndarray, layers: Sequence[int] = LAYERS, batch_size: int = 1024,
            device: torch.device | None = None, reuse_prefix: bool = True) -> dict[int, np.ndarray]:
    """{layer: float32 [n, 2·hidden]} = [h_L(second-to-last token), h_L(last token)] of each prompt row.

    tokens: int [n, L], every row the same length (partial prompts need no padding). The model must be fp32;
    no autocast. `reuse_prefix=False` runs the plain full forward (the reference the tests compare against).
    """
    check_extraction(model, model.config.num_hidden_layers, layers, tokens)
    device = device or next(model.parameters()).device
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)  # [n, L]
    parts: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    with torch.inference_mode():
        p = shared_prefix_length(tokens) if reuse_prefix else 0
        prefix_kv = prefix_cache(model, tokens[0, :p]) if p else None
        for start in range(0, len(tokens), batch_size):
            states = hidden_states(model, tokens[start: start + batch_size], prefix_kv)
            for layer in layers:
                last_two = states[layer][:, -2:, :]  # [b, 2, hidden]: last digit, delimiter
                parts[layer].append(last_two.reshape(len(last_two), -1).float().cpu().numpy())
    return {layer: np.concatenate(chunks) for layer, chunks in parts.items()}


def extract_stack(stack, tokens: np.ndarray, layers: Sequence[int] = LAYERS, batch_size: int = 1024,
                  device: torch.device | None = None) -> list[dict[int, np.ndarray]]:
    """`extract` for each of the K models of a stack (`worldrep.stack.StackedQwen2`, passed in: this module does not
    import the stack), all K in one forward per batch of prompts: a GPU, bound by kernel launches at these sizes,
    launches once what it would launch K times. The plain full forward (no shared-prefix cache). Equal to `extract`
    of each model up to float rounding, not bit for bit: the stacked kernels sum in another order than HF's."""
    check_extraction(stack, stack.settings.num_hidden_layers, layers, tokens)
    device = device or next(stack.parameters()).device
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)  # [n, L]
    parts: list[dict[int, list[np.ndarray]]] = [{layer: [] for layer in layers} for _ in range(stack.k)]
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start: start + batch_size]
            states = stack.hidden_states(batch.expand(stack.k, *batch.shape), layers, last=2)
            for layer in layers:
                last_two = states[layer].reshape(stack.k, len(batch), -1).float().cpu().numpy()
                for model, values in zip(parts, last_two):
                    model[layer].append(values)
    return [{layer: np.concatenate(chunks) for layer, chunks in model.items()} for model in parts]


# ---- files -------------------------------------------------------------------------------------------------

def save_representations(path, city_ids: np.ndarray, reps: dict[int, np.ndarray]) -> None:
    """One `.npz`: `city_ids` int16 [n], `layer_{L}` float32 [n, d] per layer, and the layer convention."""
    ids = np.asarray(city_ids)
    if ids.ndim != 1 or ids.size and (ids.min() < 0 or ids.max() > MAX_CITY_ID):
        raise ValueError("city_ids must be a 1-D array of IDs in [0, 9999]")
    arrays = {"city_ids": ids.astype(np.int16), "layer_convention": np.array(LAYER_CONVENTION)}
    for layer, values in sorted(reps.items()):
        if values.ndim != 2 or len(values) != len(ids):
            raise ValueError(f"layer {layer}: shape {values.shape} does not match {len(ids)} cities")
        arrays[f"layer_{layer}"] = np.asarray(values, dtype=np.float32)
    atomic_write_bytes(Path(path), lambda handle: np.savez(handle, **arrays))


def write_representations(models: list[tuple[Path, Path]], task: str, cities: Path, layers: Sequence[int],
                          device: torch.device, progress=None, make_stack=None, stack_size: int | None = None) -> int:
    """Each (model folder, .npz path): the model's representations of every eligible city at `task`'s partial
    prompt (§10), model after model; or, with `make_stack` (models -> their stack on the CPU,
    `worldrep.stack.from_hf_models`), `stack_size` models at a time through their stack (`extract_stack`). Returns
    the number of cities."""
    from .evaluation import load_model
    from .world import read_cities

    if make_stack is not None and not stack_size:
        raise ValueError("a stacked extraction needs its stack_size (worldrep.entry.CHECKPOINT_STACK)")
    city_ids = eligible_cities(read_cities(cities))["city_id"].to_numpy()
    tokens = partial_prompt_tokens(task, city_ids)
    step = stack_size if make_stack is not None else 1
    for start in range(0, len(models), step):
        part = models[start:start + step]
        if make_stack is None:
            reps = [extract(load_model(part[0][0], device), tokens, layers=layers, device=device)]
        else:
            stack = make_stack([load_model(folder, torch.device("cpu")) for folder, _ in part]).to(device).eval()
            reps = extract_stack(stack, tokens, layers=layers, device=device)
            del stack
        for (_, path), values in zip(part, reps):
            save_representations(path, city_ids, values)
        if progress is not None:
            progress.update(len(part))
    return len(city_ids)


def load_representations(path) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(city_ids int64 [n], {layer: float32 [n, d]}) as written by `save_representations`."""
    with np.load(Path(path)) as data:
        if str(data["layer_convention"]) != LAYER_CONVENTION:
            raise ValueError(f"{path}: unexpected layer convention {str(data['layer_convention'])!r}")
        layers = [name for name in data.files if name.startswith("layer_") and name[6:].isdigit()]
        reps = {int(name[6:]): data[name] for name in layers}
        return data["city_ids"].astype(np.int64), dict(sorted(reps.items()))
