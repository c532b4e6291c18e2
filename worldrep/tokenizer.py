"""The 98-token character vocabulary (METHOD §5) and a vectorized encoder that agrees with the HF tokenizer.

Ids: <pad>=0 <unk>=1 <bos>=2 <eos>=3, then the 94 printable ASCII characters (codes 33..126)
with the ten digits moved to the end (ids 88..97). Spaces only separate tokens.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
_PRINTABLE = [chr(c) for c in range(33, 127)]
CHARACTERS = [c for c in _PRINTABLE if not c.isdigit()] + [str(d) for d in range(10)]
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate((*SPECIALS, *CHARACTERS))}
assert len(VOCAB) == 98

# Byte value -> token id, for the vectorized encoder. Byte 0 is numpy's fixed-width padding and maps to <pad>;
# every other byte outside the vocabulary maps to <unk>, as the HF WordLevel model does.
BYTE_TO_ID = np.full(256, UNK_ID, dtype=np.uint8)
BYTE_TO_ID[0] = PAD_ID
for _char in CHARACTERS:
    BYTE_TO_ID[ord(_char)] = VOCAB[_char]
ID_TO_BYTE = np.zeros(len(VOCAB), dtype=np.uint8)
for _char in CHARACTERS:
    ID_TO_BYTE[VOCAB[_char]] = ord(_char)


def encode_compact(compact: np.ndarray) -> np.ndarray:
    """Token ids of `<bos> c h a r s <eos>` for each compact string, right-padded with <pad>.

    compact: fixed-width bytes array [n] (dtype S*). Returns uint8 [n, longest + 2], as narrow as the
    longest item allows whatever the dtype's width.
    """
    chars = np.ascontiguousarray(compact).view(np.uint8).reshape(len(compact), -1)  # [n, width]
    n, width = chars.shape
    tokens = np.zeros((n, width + 2), dtype=np.uint8)
    tokens[:, 0] = BOS_ID
    tokens[:, 1:-1] = BYTE_TO_ID[chars]
    lengths = np.count_nonzero(chars, axis=1)
    tokens[np.arange(n), lengths + 1] = EOS_ID
    return tokens[:, : lengths.max(initial=0) + 2]


def spaced_text(compact: np.ndarray) -> np.ndarray:
    """The stored text `<bos> c h a r s <eos>` (METHOD §3.1) of each compact string, as a bytes array [n]."""
    chars = np.ascontiguousarray(compact).view(np.uint8).reshape(len(compact), -1)
    n, width = chars.shape
    lengths = np.count_nonzero(chars, axis=1)
    head, tail = np.frombuffer(b"<bos> ", np.uint8), np.frombuffer(b"<eos>", np.uint8)
    text = np.zeros((n, len(head) + 2 * width + len(tail)), dtype=np.uint8)
    text[:, : len(head)] = head
    text[:, len(head): len(head) + 2 * width: 2] = chars
    text[:, len(head) + 1: len(head) + 2 * width: 2] = (chars != 0) * np.uint8(ord(" "))  # a space after each char
    columns = (len(head) + 2 * lengths)[:, None] + np.arange(len(tail))[None, :]
    np.put_along_axis(text, columns, np.broadcast_to(tail, (n, len(tail))), axis=1)
    return text.view(f"S{text.shape[1]}").ravel()


def decode_tokens(tokens: np.ndarray) -> list[str]:
    """Space-joined tokens of each row of a padded id array, without <pad> (for reading mixtures)."""
    names = np.array([*SPECIALS, *CHARACTERS], dtype=object)
    return [" ".join(names[row[row != PAD_ID]]) for row in np.atleast_2d(tokens)]


def build_hf_tokenizer():
    """A `PreTrainedTokenizerFast` over the fixed vocabulary: WordLevel on whitespace-split pieces, no merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",  # training pads on the right; generation switches to left (METHOD §5)
        model_max_length=256,
    )


def save_tokenizer(directory: str | Path) -> None:
    """Write the tokenizer so that `AutoTokenizer.from_pretrained(directory)` loads it."""
    build_hf_tokenizer().save_pretrained(str(directory))
