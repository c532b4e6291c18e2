"""distance: `dist(c_A,c_B)=D`, D = round(√(dx² + dy²)) in scaled units."""
from .base import Task, distances, integer_text, round_half_even


def answer(x, y, k):
    return round_half_even(distances(x, y, 0, 1))


TASK = Task(name="distance", function="dist", abbr="D", answer=answer, answer_text=integer_text,
            distinct_pairs=True)
