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
    default_city_counts: tuple[int, ...] = (2,)

    def city_counts(self, settings: dict, variant: str) -> tuple[int, ...]:
        """The city counts an item may have; uniform over this tuple. Tasks with settings override it."""
        return self.default_city_counts


def integer_text(answers: Answers) -> np.ndarray:
    return np.asarray(answers, dtype=np.int64).astype("S")


def boolean_text(answers: Answers) -> np.ndarray:
    return np.where(answers, b"TRUE", b"FALSE").astype("S5")


def round_half_even(values: np.ndarray) -> np.ndarray:
    """METHOD §0: every numeric answer is rounded half to even, as numpy does."""
    return np.round(values).astype(np.int64)


def cross(ax, ay, bx, by, cx, cy) -> np.ndarray:
    """z of (B − A) × (C − A): > 0 when A, B, C turn counter-clockwise, 0 when collinear. Exact on integers."""
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def city_tokens(city_ids: np.ndarray) -> np.ndarray:
    """`c_` + zero-padded 4-digit ID for each entry of an int array (any shape); -1 (padding) gives b''."""
    ids = np.asarray(city_ids)
    text = np.char.add(b"c_", np.char.zfill(np.where(ids < 0, 0, ids).astype("S4"), 4))
    return np.where(ids < 0, b"", text)


def compact_text(task: Task, city_ids: np.ndarray, answers: Answers) -> np.ndarray:
    """`func(c_A,c_B;…)=ANSWER` for each row of city_ids int [n, K] (-1 = no city). Returns bytes [n]."""
    tokens = city_tokens(city_ids)
    text = np.char.add(task.function.encode() + b"(", tokens[:, 0])
    for j in range(1, city_ids.shape[1]):
        sep = b";" if j == task.semicolon_before else b","
        text = np.char.add(text, np.where(city_ids[:, j] >= 0, np.char.add(sep, tokens[:, j]), b""))
    return np.char.add(np.char.add(text, b")="), task.answer_text(answers))
