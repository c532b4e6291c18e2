"""The interface every task module implements, and the text formatting they share (METHOD §3.1–3.2).

A task sees an item as the scaled coordinates of its cities in listed order: `x, y` int64 [n, K] with
`k` int [n] the number of cities used per row (columns at and beyond `k` are padding and must be ignored).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Answers = np.ndarray  # int64 for numeric tasks, bool for TRUE/FALSE tasks, label index for compass


@dataclass(frozen=True)
class Task:
    name: str  # `task` in configs and file names
    function: str  # the function name written in the text
    abbr: str  # figure label
    answer: Callable[[np.ndarray, np.ndarray, np.ndarray], Answers]
    answer_text: Callable[[Answers], np.ndarray]  # -> bytes array [n]
    semicolon_before: int | None = None  # position of the city preceded by ';' instead of ','
    balanced: bool = False  # TRUE/FALSE labels are rejection-balanced to exactly 50/50 (METHOD §3.3)
    distinct_pairs: bool = False  # uniform-pool sets draw distinct unordered pairs across all splits (§3.3)
    default_city_counts: tuple[int, ...] = (2,)
    categories: int = 0  # a categorical task's number of labels (answers 0..n-1, or bool for 2); 0: numeric answers

    def city_counts(self, settings: dict, variant: str) -> tuple[int, ...]:
        """The city counts an item may have; uniform over this tuple. Tasks with settings override it."""
        return self.default_city_counts


def integer_text(answers: Answers) -> np.ndarray:
    answers = np.asarray(answers, dtype=np.int64)
    widest = max(len(str(answers.max(initial=0))), len(str(answers.min(initial=0))))
    return answers.astype(f"S{widest}")  # as narrow as the longest answer; numpy's default is 21 bytes


def boolean_text(answers: Answers) -> np.ndarray:
    return np.where(answers, b"TRUE", b"FALSE").astype("S5")


def round_half_even(values: np.ndarray) -> np.ndarray:
    """METHOD §0: every numeric answer is rounded half to even, as numpy does."""
    return np.round(values).astype(np.int64)


def distances(x, y, a: int, b: int) -> np.ndarray:
    """Unrounded Euclidean distance between columns a and b, float64 [n].

    The squared length is an exact integer and IEEE sqrt is correctly rounded, so this is the spec's
    √(dx² + dy²) to the last bit (np.hypot differs in the last bit for ~1% of pairs).
    """
    dx, dy = x[:, b] - x[:, a], y[:, b] - y[:, a]
    return np.sqrt((dx * dx + dy * dy).astype(np.float64))


def cross(ax, ay, bx, by, cx, cy) -> np.ndarray:
    """z of (B − A) × (C − A): > 0 when A, B, C turn counter-clockwise, 0 when collinear. Exact on integers."""
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def compact_text(task: Task, city_ids: np.ndarray, answers: Answers) -> np.ndarray:
    """`func(c_A,c_B;…)=ANSWER` for each row of city_ids int [n, K] (-1 = no city). Returns bytes [n].

    Built as a byte matrix, not with string ops: each city is a 7-byte block `<sep>c_dddd` whose separator
    is `(` for the first city, and `)=ANSWER` is scattered after each row's last city.
    """
    ids = np.asarray(city_ids, dtype=np.int64)
    n, width = ids.shape
    k = (ids >= 0).sum(axis=1)
    blocks = np.zeros((n, width, 7), dtype=np.uint8)  # [n, city, byte]
    blocks[:, :, 0] = [ord("(")] + [ord(";" if j == task.semicolon_before else ",") for j in range(1, width)]
    blocks[:, :, 1:3] = np.frombuffer(b"c_", dtype=np.uint8)
    id16 = np.maximum(ids, 0).astype(np.uint16)  # scalar uint16 division is ~20x faster than int64 by an array
    for j, power in enumerate((1000, 100, 10, 1)):
        blocks[:, :, 3 + j] = id16 // np.uint16(power) % np.uint16(10) + np.uint16(ord("0"))
    blocks[ids < 0] = 0
    answer = np.char.add(b")=", task.answer_text(answers))
    answer_bytes = answer.view(np.uint8).reshape(n, -1)  # [n, answer width], NUL-padded
    prefix = np.frombuffer(task.function.encode(), dtype=np.uint8)
    matrix = np.zeros((n, len(prefix) + 7 * width + answer_bytes.shape[1]), dtype=np.uint8)
    matrix[:, : len(prefix)] = prefix
    matrix[:, len(prefix): len(prefix) + 7 * width] = blocks.reshape(n, -1)
    columns = (len(prefix) + 7 * k)[:, None] + np.arange(answer_bytes.shape[1])[None, :]
    np.put_along_axis(matrix, columns, answer_bytes, axis=1)
    return matrix.view(f"S{matrix.shape[1]}").ravel()
