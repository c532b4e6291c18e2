"""angle: `angle(c_A,c_B,c_C)=θ`, the angle at the middle city B between B→A and B→C, integer degrees."""
import numpy as np

from .base import Task, integer_text, round_half_even


def answer(x, y, k):
    ux, uy = (x[:, 0] - x[:, 1]).astype(float), (y[:, 0] - y[:, 1]).astype(float)
    vx, vy = (x[:, 2] - x[:, 1]).astype(float), (y[:, 2] - y[:, 1]).astype(float)
    norms = np.sqrt(ux * ux + uy * uy) * np.sqrt(vx * vx + vy * vy)
    degenerate = norms == 0  # a zero-length vector: the spec defines θ = 0
    cosine = np.clip((ux * vx + uy * vy) / np.where(degenerate, 1.0, norms), -1.0, 1.0)
    return np.where(degenerate, 0, round_half_even(np.degrees(np.arccos(cosine))))


TASK = Task(
    name="angle", function="angle", abbr="A", answer=answer, answer_text=integer_text,
    default_city_counts=(3,),
)
