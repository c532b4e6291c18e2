"""perimeter: `perimeter(c_1,…,c_n)=P`, the closed polygon in listed order; for n = 2 the single distance."""
import numpy as np

from .base import Task, distances, integer_text, round_half_even


def answer(x, y, k):
    n_max = x.shape[1]
    total = np.zeros(len(x))
    for i in range(n_max - 1):  # summed as unrounded floats, in listed order
        total += np.where(i + 1 < k, distances(x, y, i, i + 1), 0.0)
    closing = np.zeros(len(x))
    for n in range(3, n_max + 1):  # the closing edge c_n → c_1; for n = 2 it would double the distance
        closing = np.where(k == n, distances(x, y, n - 1, 0), closing)
    return round_half_even(total + closing)


class Perimeter(Task):
    def city_counts(self, settings, variant):
        return tuple(settings["city_counts"])


TASK = Perimeter(
    name="perimeter", function="perimeter", abbr="P", answer=answer, answer_text=integer_text,
    default_city_counts=(2, 3, 4, 5),
)
