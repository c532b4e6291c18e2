"""Greedy evaluation (METHOD §3.7, §8): prompts up to the first `=`, batched greedy decoding, parsing, metrics.

Scoring is plain functions of text; decoding is one batched loop with a KV cache. Both the evaluation rules
and the trainer's periodic validation use them, so the two can never score differently.
"""
from __future__ import annotations

import math
import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .tokenizer import EOS_ID, ID_TO_BYTE, PAD_ID, VOCAB

EQUALS_ID = VOCAB["="]
NUMERIC_TASKS = ("distance", "trianglearea", "angle", "perimeter")
CATEGORICAL_TASKS = ("compass", "inside", "crossing")
# §3.7: the numeric answer is the digit run right after the first `=` (or `)=`) that precedes a digit.
ANSWER_PATTERN = {
    "distance": re.compile(r"=(\d+)"),
    "trianglearea": re.compile(r"=(\d+)"),
    "angle": re.compile(r"\)=(\d+)"),
    "perimeter": re.compile(r"\)=(\d+)"),
}
# §3.7: what an unparseable item scores. Not caps: a parsed prediction may score more.
FAILURE_VALUE = {
    "distance": math.hypot(3600, 1800),
    "trianglearea": 3600 * 1800 / 2,
    "angle": 180.0,
    "perimeter": 20000.0,
    "compass": 0.0,
    "inside": 0.0,
    "crossing": 0.0,
}
MAX_NEW_TOKENS = {"trianglearea": 30, "angle": 30, "perimeter": 30}  # §8; 20 for the other tasks
DEFAULT_MAX_NEW_TOKENS = 20
METRIC_NAME = {t: "mean_absolute_error" for t in NUMERIC_TASKS} | {t: "accuracy" for t in CATEGORICAL_TASKS}


def max_new_tokens(task: str) -> int:
    return MAX_NEW_TOKENS.get(task, DEFAULT_MAX_NEW_TOKENS)


def parse_answer(task: str, text: str) -> int | str | None:
    """The model's answer in `text` (decoded prompt + generation) per §3.7, or None when nothing parses.
    Numeric tasks give an int; categorical tasks the upper-cased text after the last `=`."""
    text = text.replace(" ", "")
    if task in ANSWER_PATTERN:
        match = ANSWER_PATTERN[task].search(text)
        return int(match.group(1)) if match else None
    answer = text.rsplit("=", 1)[1] if "=" in text else ""
    return answer.upper() or None  # nothing after the last `=` is a failure too (counted, §14)


def score(task: str, text: str, answer: str) -> tuple[float, bool]:
    """(item metric, parse failed) of one item: absolute error or exact match, failure value if unparseable."""
    predicted = parse_answer(task, text)
    if predicted is None:
        return FAILURE_VALUE[task], True
    if task in ANSWER_PATTERN:
        return float(abs(int(answer) - predicted)), False
    return float(predicted == answer), False


def score_items(task: str, texts: list[str], answers) -> tuple[np.ndarray, np.ndarray]:
    """Item metrics and failure flags of a task's items; `answers` may be bytes (as stored) or str."""
    scored = [score(task, t, a.decode() if isinstance(a, bytes) else a) for t, a in zip(texts, answers)]
    values = np.array([s for s, _ in scored], dtype=np.float64)
    return values, np.array([f for _, f in scored], dtype=bool)


def summarize(task: str, values: np.ndarray, failed: np.ndarray) -> dict:
    """The task metric (§3.7: mean over all items) with its name and the failure count (§14)."""
    return {"metric": METRIC_NAME[task], "value": float(values.mean()) if len(values) else float("nan"),
            "n": int(len(values)), "failures": int(failed.sum())}


def prompt_tokens(tokens: np.ndarray) -> np.ndarray:
    """Right-padded prompts: each stored sequence up to and including its first `=` (§8), the rest pad."""
    is_equals = tokens == EQUALS_ID
    if not is_equals.any(axis=1).all():
        raise ValueError("a sequence has no '=' token, so it has no prompt")
    length = is_equals.argmax(axis=1) + 1
    keep = np.arange(tokens.shape[1])[None, :] < length[:, None]
    return np.where(keep, tokens, PAD_ID)[:, : length.max()]


def decode_text(tokens: np.ndarray) -> list[str]:
    """Token rows -> text with special tokens dropped and no spaces (parsing removes them anyway, §8)."""
    chars = ID_TO_BYTE[tokens]
    chars[tokens < 4] = 0  # <pad> <unk> <bos> <eos>
    return [row.tobytes().replace(b"\0", b"").decode("ascii") for row in chars]


def left_pad(prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompts -> (left-padded ids, attention mask). Generation pads on the left (§5)."""
    lengths = (prompts != PAD_ID).sum(dim=1, keepdim=True)
    width = prompts.shape[1]
    columns = torch.arange(width, device=prompts.device)[None, :]
    source = (columns - (width - lengths)) % width  # rotate each row right by its padding
    ids = prompts.gather(1, source)
    mask = (columns >= width - lengths).long()
    return ids * mask, mask


def resolve_device_precision(device: torch.device, precision: dict[str, str]) -> str:
    """The precision configured for this kind of device (`{"cuda": "fp16", "cpu": "fp32"}` by default)."""
    return precision["cuda" if device.type == "cuda" else "cpu"]


def autocast(device: torch.device, precision: str, cache: bool = True):
    """fp32, or autocast to fp16/bf16 (§7.1, §8: the precision is a config value, recorded with the run).
    `cache=False` turns the weight-cast cache off, as the trainer does: a cached cast would be freed between CUDA
    graph replays (it costs one cast per use of a weight, nothing else)."""
    if precision == "fp32":
        return nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


@torch.no_grad()
def greedy_generate(model, prompts: torch.Tensor, max_new: int, precision: str = "fp32") -> torch.Tensor:
    """Greedy continuation of one batch of right-padded prompts; returns (batch, ≤ max_new) new tokens,
    `<pad>` after each row's `<eos>`. Position ids follow the attention mask, so left padding changes nothing."""
    ids, mask = left_pad(prompts)
    position = (mask.cumsum(dim=1) - 1).clamp(min=0)
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    generated = []
    cache = None
    with autocast(ids.device, precision):
        for _ in range(max_new):
            out = model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(dim=-1).masked_fill(done, PAD_ID)
            generated.append(token)
            done |= token == EOS_ID
            if bool(done.all()):
                break
            ids = token[:, None]
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
            position = position[:, -1:] + 1
    return torch.stack(generated, dim=1)


@torch.no_grad()
def stacked_greedy_generate(stack, prompts: torch.Tensor, max_new, precision: str = "fp32") -> torch.Tensor:
    """`greedy_generate` of K models at once through their stack (`worldrep.stack.StackedQwen2.decode_step`):
    prompts [K, B, W] right-padded, model k's batch in row k; returns (K, B, ≤ max) new tokens.

    `max_new` is one limit or one per row [K, B] (each row's task has its own, §8): a row stops at its limit or its
    `<eos>` and gets `<pad>` after. All-pad rows (a run with fewer items than its partners) are done from the start.
    Each row's tokens are what its own model's `greedy_generate` gives, up to float rounding (tested token for token)."""
    k, b, width = prompts.shape
    ids, mask = left_pad(prompts.reshape(k * b, width))
    valid = mask.bool()
    position = (mask.cumsum(dim=1) - 1).clamp(min=0)
    limit = torch.as_tensor(max_new, device=ids.device).expand(k, b).reshape(-1)
    done = ~valid.any(dim=1) | (limit <= 0)
    generated, cache = [], None
    with autocast(ids.device, precision):
        for step in range(int(limit.max())):
            logits, cache = stack.decode_step(ids.view(k, b, -1), position, valid, cache)
            token = logits.reshape(k * b, -1).argmax(dim=-1).masked_fill(done, PAD_ID)
            generated.append(token)
            done |= (token == EOS_ID) | (limit <= step + 1)
            if bool(done.all()):
                break
            ids = token[:, None]
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
            position = position[:, -1:] + 1
    if not generated:
        return prompts.new_zeros(k, b, 0)
    return torch.stack(generated, dim=1).view(k, b, -1)


def generate_texts(model, prompts: np.ndarray, max_new: int, batch_size: int, device: torch.device,
                   precision: str = "fp32", progress=None) -> list[str]:
    """Decoded prompt + greedy generation of every prompt row (right-padded uint8 tokens), in order."""
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = torch.from_numpy(prompts[start:start + batch_size].astype(np.int64)).to(device)
        new = greedy_generate(model, batch, max_new, precision).cpu().numpy()
        texts += decode_text(np.concatenate([prompts[start:start + batch_size].astype(np.int64), new], axis=1))
        if progress is not None:
            progress.update(len(batch))
    return texts


def evaluate_items(model, tokens: np.ndarray, answers: np.ndarray, task: str, batch_size: int,
                   device: torch.device, precision: str = "fp32", progress=None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Greedy-decode and score stored sequences of one task: (texts, item values, failure flags)."""
    texts = generate_texts(model, prompt_tokens(tokens), max_new_tokens(task), batch_size, device, precision, progress)
    values, failed = score_items(task, texts, answers)
    return texts, values, failed


# ---- whole models ----------------------------------------------------------------------------------------

TEST_SET_NAMES = {"pretraining": "standard", "atlantis_required": "atlantis"}  # METHOD §0, "Test sets"


def test_set_name(variant: str, task: str) -> tuple[str, str]:
    """(test set, task) of a dataset's test split: the standard or the Atlantis test set of the task."""
    return TEST_SET_NAMES[variant], task


def load_model(directory, device: torch.device):
    """A saved model, loaded the way any user would: with the Auto class, in fp32 (autocast does the rest)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()


def evaluate_model(model, test_sets: dict, batch_size: int, device: torch.device, precision: str,
                   progress=None):
    """Score a model on test sets {(test set, task): test.npz path}: (metrics table, predictions table).
    One metrics row per set and task; one predictions row per item, with the generated text."""
    from .datasets import load_split

    scored = []
    for (test_set, task), path in test_sets.items():
        data = load_split(Path(path).parent, "test")
        texts = generate_texts(model, prompt_tokens(data["tokens"]), max_new_tokens(task), batch_size, device,
                               precision, progress)
        scored.append((test_set, task, data, texts))
    return evaluation_tables(scored, precision)


def evaluation_tables(scored: list, precision: str):
    """(metrics, predictions) of [(test set, task, its stored split, decoded prompt + generation per item)]."""
    import pandas as pd

    metrics, predictions = [], []
    for test_set, task, data, texts in scored:
        values, failed = score_items(task, texts, data["answers"])
        prompts = decode_text(prompt_tokens(data["tokens"]))
        metrics.append({"test_set": test_set, "task": task, **summarize(task, values, failed), "precision": precision})
        predictions.append(pd.DataFrame({
            "test_set": test_set, "task": task, "item": np.arange(len(texts)),
            "answer": [a.decode() for a in data["answers"]],
            "generation": [t[len(p):] for t, p in zip(texts, prompts)],
            "value": values, "failed": failed,
        }))
    return pd.DataFrame(metrics), pd.concat(predictions, ignore_index=True)


def evaluate_stack(stack, test_sets: list[dict], batch_size: int, device: torch.device, precision: str,
                   progress=None) -> list:
    """`evaluate_model` of K models at once through their stack (slice k: `test_sets[k]`, its own sets): each batch
    holds `batch_size` items of every model (its sets one after another; all-pad rows once a model has none left),
    decoded by one `stacked_greedy_generate`, each row to its task's limit. Returns each model's (metrics,
    predictions). The same tables as model by model up to float rounding, which can flip a near-tied argmax: so the
    stack job uses it where it trains fused, on a GPU."""
    from .datasets import load_split

    loaded = [[(test_set, task, load_split(Path(path).parent, "test")) for (test_set, task), path in sets.items()]
              for sets in test_sets]
    rows = []  # per model: (prompts [n, W] right-padded, limit per item)
    for sets in loaded:
        prompts = [prompt_tokens(data["tokens"]) for _, _, data in sets]
        width = max((p.shape[1] for p in prompts), default=1)
        rows.append((np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in prompts]),
                     np.concatenate([np.full(len(p), max_new_tokens(task)) for (_, task, _), p in zip(sets, prompts)])))
    k, width = len(rows), max(p.shape[1] for p, _ in rows)
    texts = [[] for _ in rows]
    for start in range(0, max(len(p) for p, _ in rows), batch_size):
        batch = np.full((k, batch_size, width), PAD_ID, dtype=np.int64)
        limits = np.zeros((k, batch_size), dtype=np.int64)
        counts = []
        for i, (prompts, limit) in enumerate(rows):
            part = prompts[start:start + batch_size]
            counts.append(len(part))
            batch[i, :len(part), :part.shape[1]] = part
            limits[i, :len(part)] = limit[start:start + batch_size]
        new = stacked_greedy_generate(stack, torch.from_numpy(batch).to(device), torch.from_numpy(limits).to(device),
                                      precision).cpu().numpy()
        for i, n in enumerate(counts):
            texts[i] += decode_text(np.concatenate([batch[i, :n], new[i, :n]], axis=1))
        if progress is not None:
            progress.update(sum(counts))
    out = []
    for sets, model_texts in zip(loaded, texts):
        scored, at = [], 0
        for test_set, task, data in sets:
            scored.append((test_set, task, data, model_texts[at:at + len(data["tokens"])]))
            at += len(data["tokens"])
        out.append(evaluation_tables(scored, precision))
    return out


def test_set_paths(test_sets: list[str], results: Path = Path("results")) -> dict:
    """{(test set, task): test.npz} of `variant/task` names (worldrep.recipes.evaluation_params), in their order."""
    return {test_set_name(*name.split("/")): Path(results) / "datasets" / name / "test.npz" for name in test_sets}


def write_csv(path: Path, table, **options) -> None:
    from .artifacts import atomic_write_bytes

    atomic_write_bytes(Path(path), lambda handle: table.to_csv(handle, index=False, **options))


def write_evaluation(model, test_sets: dict, batch_size: int, device: torch.device, precision: str, folder: Path,
                     progress=None):
    """A final model's evaluation files in `folder` (`write_evaluation_tables`). Returns the metrics table."""
    metrics, predictions = evaluate_model(model, test_sets, batch_size, device, precision, progress)
    write_evaluation_tables(metrics, predictions, folder)
    return metrics


def write_evaluation_tables(metrics, predictions, folder: Path) -> None:
    """metrics.csv and predictions.csv.gz (gzip without a timestamp, so equal tables are equal bytes)."""
    write_csv(Path(folder) / "predictions.csv.gz", predictions, compression={"method": "gzip", "mtime": 0})
    write_csv(Path(folder) / "metrics.csv", metrics)


def checkpoint_table(checkpoints: list[Path], metrics: list):
    """Each checkpoint's (`step-NNNNNN`) metrics in one table with a leading `step` column."""
    import pandas as pd

    table = pd.concat([m.assign(step=int(Path(c).name.removeprefix("step-"))) for c, m in zip(checkpoints, metrics)],
                      ignore_index=True)
    return table[["step", *table.columns.drop("step")]]


def write_checkpoint_evaluation(checkpoints: list[Path], test_sets: dict, batch_size: int, device: torch.device,
                                precision: str, path: Path, progress=None, make_stack=None, stack_size: int = 21):
    """Every checkpoint on the test sets, one after another, or with `make_stack` (models -> their stack on the CPU,
    `worldrep.stack.from_hf_models`; passed in so that this module never imports the stack) `stack_size` at a time
    through a stack (`evaluate_stack`, where the device trains fused): checkpoints.csv."""
    metrics = []
    if make_stack is not None:
        for start in range(0, len(checkpoints), stack_size):
            part = checkpoints[start:start + stack_size]
            stack = make_stack([load_model(c, torch.device("cpu")) for c in part]).to(device).eval()
            metrics += [m for m, _ in evaluate_stack(stack, [test_sets] * len(part), batch_size, device, precision)]
            if progress is not None:
                progress.update(len(part))
    else:
        for checkpoint in checkpoints:
            metrics.append(evaluate_model(load_model(checkpoint, device), test_sets, batch_size, device, precision)[0])
            if progress is not None:
                progress.update()
    table = checkpoint_table(checkpoints, metrics)
    write_csv(path, table)
    return table


# ---- trivial predictors (§14 health report) --------------------------------------------------------------

def trivial_prediction(task: str, train_answers) -> str | float:
    """What a model that ignores its input would answer: the training set's majority class (ties: the
    label first in sorted order) or its median answer."""
    answers = [a.decode() if isinstance(a, bytes) else a for a in train_answers]
    if task in ANSWER_PATTERN:
        return float(np.median(np.array(answers, dtype=np.int64)))
    labels, counts = np.unique(answers, return_counts=True)
    return str(labels[counts.argmax()])


def trivial_score(task: str, prediction: str | float, test_answers) -> float:
    """The task metric (§3.7) of answering `prediction` to every test item."""
    answers = [a.decode() if isinstance(a, bytes) else a for a in test_answers]
    if task in ANSWER_PATTERN:
        return float(np.abs(np.array(answers, dtype=np.int64) - prediction).mean())
    return float(np.mean([a == prediction for a in answers]))
