"""inside: `inside(c_T;c_H1,…,c_Hn)=TRUE|FALSE`, whether T lies in the convex hull of H1..Hn (boundary included)."""
from itertools import combinations

import numpy as np

from .base import Task, boolean_text, cross


def answer(x, y, k):
    """T (column 0) is in the hull iff it lies in some non-degenerate triangle of hull cities.

    In the plane every point of a convex hull lies in a triangle of its vertices (Carathéodory), so this
    equals the authors' triangulate-and-locate test, computed exactly in integers. Degenerate hulls (three
    collinear cities, all cities collinear or coincident) have no non-degenerate triangle and give FALSE,
    as METHOD §3.2 requires.
    """
    tx, ty = x[:, 0], y[:, 0]
    inside = np.zeros(len(x), dtype=bool)
    for a, b, c in combinations(range(1, x.shape[1]), 3):
        area = cross(x[:, a], y[:, a], x[:, b], y[:, b], x[:, c], y[:, c])
        d1 = cross(x[:, a], y[:, a], x[:, b], y[:, b], tx, ty)
        d2 = cross(x[:, b], y[:, b], x[:, c], y[:, c], tx, ty)
        d3 = cross(x[:, c], y[:, c], x[:, a], y[:, a], tx, ty)
        has_neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
        has_pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
        inside |= (c < k) & (area != 0) & ~(has_neg & has_pos)
    return inside


class Inside(Task):
    def city_counts(self, settings, variant):
        """The test city plus a hull of h cities; the with-Atlantis set has its own hull sizes (METHOD §3.3)."""
        hulls = settings["hull_sizes_with_atlantis"] if variant == "with_atlantis" else settings["hull_sizes"]
        return tuple(h + 1 for h in hulls)


TASK = Inside(
    name="inside", function="inside", abbr="I", answer=answer, answer_text=boolean_text,
    semicolon_before=1, balanced=True, default_city_counts=(4, 5, 6),
)
