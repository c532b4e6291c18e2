"""distance: `dist(c_A,c_B)=D`, D = round(√(dx² + dy²)) in scaled units."""
import numpy as np

from .base import Task, integer_text, round_half_even


def distances(x, y, a: int, b: int) -> np.ndarray:
    """Unrounded Euclidean distance between columns a and b, float64 [n].

    The squared length is an exact integer and IEEE sqrt is correctly rounded, so this is the spec's
    √(dx² + dy²) to the last bit (np.hypot differs in the last bit for ~1% of pairs).
    """
    dx, dy = x[:, b] - x[:, a], y[:, b] - y[:, a]
    return np.sqrt((dx * dx + dy * dy).astype(np.float64))


def answer(x, y, k):
    return round_half_even(distances(x, y, 0, 1))


TASK = Task(name="distance", function="dist", abbr="D", answer=answer, answer_text=integer_text)
