"""inside: `inside(c_T;c_H1,…,c_Hn)=TRUE|FALSE`, whether T lies in the convex hull of H1..Hn (boundary included)."""
from itertools import combinations

import numpy as np

from .base import Task, boolean_text


def answer(x, y, k):
    """T (column 0) is in the hull iff it lies in some non-degenerate triangle of hull cities.

    In the plane every point of a convex hull lies in a triangle of its vertices (Carathéodory), so this
    equals the authors' triangulate-and-locate test, computed exactly in integers. Degenerate hulls (three
    collinear cities, all cities collinear or coincident) have no non-degenerate triangle and give FALSE,
    as METHOD §3.2 requires.
    """
    # With u_i = H_i − T, the orientation of (H_a, H_b, T) is u_a × u_b, and a triangle's doubled signed
    # area is the sum of its three sub-triangles at T. So 15 pairwise products serve all 20 triangles.
    # Scaled coordinates are below 3,600 in magnitude, so every product and sum fits in int32.
    ux, uy = (x[:, 1:] - x[:, :1]).astype(np.int32), (y[:, 1:] - y[:, :1]).astype(np.int32)
    hull = range(x.shape[1] - 1)
    side = {(a, b): ux[:, a] * uy[:, b] - uy[:, a] * ux[:, b] for a, b in combinations(hull, 2)}
    inside = np.zeros(len(x), dtype=bool)
    for a, b, c in combinations(hull, 3):
        d1, d2, d3 = side[a, b], side[b, c], -side[a, c]
        contains = ((d1 >= 0) & (d2 >= 0) & (d3 >= 0)) | ((d1 <= 0) & (d2 <= 0) & (d3 <= 0))
        inside |= contains & (c + 1 < k) & (d1 + d2 + d3 != 0)
    return inside


class Inside(Task):
    def city_counts(self, settings, variant):
        """The test city plus a hull of h cities; the with-Atlantis set has its own hull sizes (METHOD §3.3)."""
        hulls = settings["hull_sizes_with_atlantis"] if variant == "with_atlantis" else settings["hull_sizes"]
        return tuple(h + 1 for h in hulls)


TASK = Inside(
    name="inside", function="inside", abbr="I", answer=answer, answer_text=boolean_text,
    semicolon_before=1, balanced=True, default_city_counts=(4, 5, 6), categories=2,
)
