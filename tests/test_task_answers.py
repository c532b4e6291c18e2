"""Independent re-derivation of the task answers (METHOD §0, §2.2, §3.1, §3.2).

Every oracle below is a per-item pure-Python computation, written from the spec and deliberately in a
different form from a vectorised numpy implementation (exact integer / Fraction arithmetic where possible).
"""
import math
from fractions import Fraction

import numpy as np
import pytest

from worldrep.tasks import TASKS
from worldrep.tasks.base import compact_text
from worldrep.tasks.compass import LABELS

WIDTH = {"distance": 2, "trianglearea": 3, "angle": 3, "compass": 2, "inside": 7, "perimeter": 5, "crossing": 4}
KS = {"inside": (4, 5, 6, 7), "perimeter": (2, 3, 4, 5)}  # cities used per item (inside: T + 3..6 hull)
REGIMES = {"world": (1800, 900), "tiny": (5, 5)}  # tiny: collinear / coincident / tie cases are frequent
N_ITEMS = 3000


def cross(o, p, q):  # z-component of (p - o) x (q - o), exact integers
    return (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])


# ----------------------------------------------------------------------------------------- oracles
def o_distance(p):
    (ax, ay), (bx, by) = p
    s = (ax - bx) ** 2 + (ay - by) ** 2
    r = math.isqrt(s)  # sqrt(s) in [r, r+1); it rounds up iff sqrt(s) > r + 1/2  <=>  4s > (2r+1)^2
    return r + 1 if 4 * s > (2 * r + 1) ** 2 else r  # (never equal: (2r+1)^2 is odd, 4s is even)


def o_trianglearea(p):
    return round(Fraction(abs(cross(*p)), 2))  # Fraction.__round__ is half-to-even, like the spec


def o_angle(p):
    a, b, c = p
    u, v = (a[0] - b[0], a[1] - b[1]), (c[0] - b[0], c[1] - b[1])
    if u == (0, 0) or v == (0, 0):
        return 0
    deg = math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), u[0] * v[0] + u[1] * v[1]))
    # The spec rounds arccos(cos); atan2 reaches the same real number by another float path, so the two
    # may differ in the last bits. An angle between integer vectors is never exactly x.5 degrees (the only
    # rational-degree lattice angles are multiples of 45), so only float near-ties are ambiguous: skip them.
    if abs(deg - math.floor(deg) - 0.5) < 1e-9:
        return None
    return round(deg)


def o_compass(p):
    (ax, ay), (bx, by) = p
    dx, dy = bx - ax, by - ay
    if dx == dy == 0:
        return "N"
    adx, ady = abs(dx), abs(dy)
    # Sector edges sit at 22.5 + 45j degrees, slope tan(22.5) = sqrt(2) - 1. For the horizontal sectors:
    # |dy| < (sqrt2 - 1)|dx|  <=>  (|dx| + |dy|)^2 < 2 dx^2, exact in integers (equality needs sqrt2 rational).
    if (adx + ady) ** 2 < 2 * adx * adx:
        return "E" if dx > 0 else "W"
    if (adx + ady) ** 2 < 2 * ady * ady:
        return "N" if dy > 0 else "S"
    return ("N" if dy > 0 else "S") + ("E" if dx > 0 else "W")


def hull(points):  # Andrew's monotone chain, strict (collinear points dropped), counter-clockwise
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts
    chain = []
    for seq in (pts, pts[::-1]):
        part = []
        for q in seq:
            while len(part) >= 2 and cross(part[-2], part[-1], q) <= 0:
                part.pop()
            part.append(q)
        chain += part[:-1]
    return chain


def o_inside(p):
    t, hs = p[0], p[1:]
    h = hull(hs)
    if len(h) < 3:  # every hull point collinear or coincident (incl. exactly 3 collinear): FALSE
        return False
    # convex CCW polygon: T is inside or on the boundary iff it is never strictly right of an edge
    return all(cross(h[i], h[(i + 1) % len(h)], t) >= 0 for i in range(len(h)))


def o_perimeter(p):
    total = 0.0
    for i in range(len(p)):
        if len(p) == 2 and i == 1:
            break  # n = 2: the single distance, not doubled
        total += math.dist(p[i], p[(i + 1) % len(p)])
    if abs(total - math.floor(total) - 0.5) < 1e-9:  # float near-tie (sums of roots are never exactly x.5)
        return None
    return round(total)


def o_crossing(p):
    a, b, c, d = p
    left = lambda P, Q, R: cross(P, Q, R) > 0  # ccw(P,Q,R): (yR-yP)(xQ-xP) > (yQ-yP)(xR-xP), strict
    return (left(a, c, d) ^ left(b, c, d)) and (left(a, b, c) ^ left(a, b, d))


ORACLES = {"distance": o_distance, "trianglearea": o_trianglearea, "angle": o_angle, "compass": o_compass,
           "inside": o_inside, "perimeter": o_perimeter, "crossing": o_crossing}


# ----------------------------------------------------------------------------------------- helpers
def run(name, items, rng=None):
    """Call the implementation on a list of items (lists of (x, y)); padding columns get junk."""
    rng = rng or np.random.default_rng(0)
    K = WIDTH[name]
    x = rng.integers(-10**6, 10**6, size=(len(items), K))
    y = rng.integers(-10**6, 10**6, size=(len(items), K))
    for i, it in enumerate(items):
        x[i, :len(it)] = [q[0] for q in it]
        y[i, :len(it)] = [q[1] for q in it]
    k = np.array([len(it) for it in items], dtype=np.int64)
    out = TASKS[name].answer(x.astype(np.int64), y.astype(np.int64), k)
    if name == "compass":
        return [LABELS[int(i)].decode() for i in out]
    return [v.item() for v in out]


def random_items(name, regime, rng):
    mx, my = REGIMES[regime]
    items = []
    for _ in range(N_ITEMS):
        n = int(rng.choice(KS.get(name, (WIDTH[name],))))
        pts = [(int(rng.integers(-mx, mx + 1)), int(rng.integers(-my, my + 1))) for _ in range(n)]
        if name == "inside" and rng.random() < 0.5:  # put T near the hull's centroid: many TRUE items
            c = (round(sum(q[0] for q in pts[1:]) / (n - 1)), round(sum(q[1] for q in pts[1:]) / (n - 1)))
            pts[0] = c
        items.append(pts)
    return items


# ----------------------------------------------------------------------------------------- random
@pytest.mark.parametrize("regime", sorted(REGIMES))
@pytest.mark.parametrize("name", list(WIDTH))
def test_random_items_match_oracle(name, regime):
    rng = np.random.default_rng([7, list(WIDTH).index(name), sorted(REGIMES).index(regime)])
    items = random_items(name, regime, rng)
    got = run(name, items, rng)
    want = [ORACLES[name](it) for it in items]
    checked = [(it, g, w) for it, g, w in zip(items, got, want) if w is not None]
    assert len(checked) > 0.99 * len(items)  # near-tie skips must stay rare
    bad = [(it, g, w) for it, g, w in checked if g != w]
    assert not bad, f"{len(bad)} mismatches (item, got, want), first: {bad[:5]}"
    if name in ("inside", "crossing"):  # both labels must be exercised
        assert 0.02 < np.mean([w for _, _, w in checked]) < 0.98


def test_answer_dtypes():
    z = lambda K: (np.zeros((3, K), np.int64), np.zeros((3, K), np.int64))
    for name, K in WIDTH.items():
        x, y = z(K)
        x[:, 1] = [1, 2, 3]
        out = TASKS[name].answer(x, y, np.full(3, min(KS.get(name, (K,))), np.int64))
        assert out.shape == (3,)
        kind = bool if name in ("inside", "crossing") else np.int64
        if name == "compass":
            assert np.issubdtype(out.dtype, np.integer) and [LABELS[i] for i in out] == [b"E"] * 3
        else:
            assert out.dtype == kind


# ----------------------------------------------------------------------------------------- by hand
HAND = [
    # distance: 3-4-5; sqrt2=1.41->1; sqrt5=2.24->2; sqrt8=2.83->3; coincident 0; full world diagonal
    # sqrt(3600^2+1800^2)=sqrt(16200000)=4024.92->4025
    ("distance", [(0, 0), (3, 4)], 5), ("distance", [(0, 0), (1, 1)], 1), ("distance", [(0, 0), (1, 2)], 2),
    ("distance", [(5, 5), (3, 3)], 3), ("distance", [(7, -7), (7, -7)], 0),
    ("distance", [(-1800, -900), (1800, 900)], 4025),
    # trianglearea: doubled areas odd -> ties: 5/2=2.5->2, 7/2=3.5->4, 1/2->0, 3/2->2; orientation ignored;
    # collinear -> 0; 9/2=4.5->4
    ("trianglearea", [(0, 0), (1, 0), (0, 5)], 2), ("trianglearea", [(0, 0), (1, 0), (0, 7)], 4),
    ("trianglearea", [(0, 0), (0, 7), (1, 0)], 4), ("trianglearea", [(0, 0), (1, 0), (0, 1)], 0),
    ("trianglearea", [(0, 0), (3, 0), (0, 1)], 2), ("trianglearea", [(0, 0), (1, 1), (2, 2)], 0),
    ("trianglearea", [(1, 1), (4, 1), (1, 4)], 4), ("trianglearea", [(0, 0), (4, 0), (0, 4)], 8),
    # angle at the middle city: right angle 90, straight 180, same direction 0, zero-length vector 0,
    # 45, 135; atan(9/1000)=0.5157deg -> 1, atan(8/1000)=0.4584deg -> 0
    ("angle", [(1, 0), (0, 0), (0, 1)], 90), ("angle", [(1, 0), (0, 0), (-1, 0)], 180),
    ("angle", [(2, 0), (0, 0), (5, 0)], 0), ("angle", [(0, 0), (0, 0), (3, 4)], 0),
    ("angle", [(3, 4), (1, 1), (1, 1)], 0), ("angle", [(1, 0), (0, 0), (1, 1)], 45),
    ("angle", [(1, 0), (0, 0), (-1, 1)], 135), ("angle", [(1000, 0), (0, 0), (1000, 9)], 1),
    ("angle", [(1000, 0), (0, 0), (1000, 8)], 0), ("angle", [(0, 0), (1, 0), (1, 5)], 90),
    # compass from A to B (north = +y): the 8 exact directions, coincident -> N, and both sides of the
    # 22.5deg edges: atan(414/1000)=22.49 (E), atan(415/1000)=22.54 (NE); mirrored/transposed likewise
    ("compass", [(100, -50), (105, -50)], "E"), ("compass", [(100, -50), (105, -45)], "NE"),
    ("compass", [(100, -50), (100, -45)], "N"), ("compass", [(100, -50), (95, -45)], "NW"),
    ("compass", [(100, -50), (95, -50)], "W"), ("compass", [(100, -50), (95, -55)], "SW"),
    ("compass", [(100, -50), (100, -55)], "S"), ("compass", [(100, -50), (105, -55)], "SE"),
    ("compass", [(3, 3), (3, 3)], "N"),
    ("compass", [(0, 0), (1000, 414)], "E"), ("compass", [(0, 0), (1000, 415)], "NE"),
    ("compass", [(0, 0), (414, 1000)], "N"), ("compass", [(0, 0), (415, 1000)], "NE"),
    ("compass", [(0, 0), (-1000, -414)], "W"), ("compass", [(0, 0), (-1000, -415)], "SW"),
    ("compass", [(0, 0), (1000, -414)], "E"), ("compass", [(0, 0), (1000, -415)], "SE"),
    ("compass", [(0, 0), (-414, 1000)], "N"), ("compass", [(0, 0), (-415, 1000)], "NW"),
    ("compass", [(1000, 414), (0, 0)], "W"), ("compass", [(0, 0), (-414, -1000)], "S"),
    # inside (T first): triangle (0,0),(4,0),(0,4): interior, on an edge, on a vertex -> TRUE;
    # beyond the hypotenuse, on an edge's extension, behind -> FALSE
    ("inside", [(1, 1), (0, 0), (4, 0), (0, 4)], True), ("inside", [(2, 2), (0, 0), (4, 0), (0, 4)], True),
    ("inside", [(4, 0), (0, 0), (4, 0), (0, 4)], True), ("inside", [(0, 3), (0, 0), (4, 0), (0, 4)], True),
    ("inside", [(3, 3), (0, 0), (4, 0), (0, 4)], False), ("inside", [(5, 0), (0, 0), (4, 0), (0, 4)], False),
    ("inside", [(-1, -1), (0, 0), (4, 0), (0, 4)], False),
    # exactly 3 collinear hull cities -> FALSE even with T on the segment; all collinear / coincident -> FALSE
    ("inside", [(1, 1), (0, 0), (1, 1), (2, 2)], False), ("inside", [(1, 0), (0, 0), (1, 0), (2, 0), (3, 0)], False),
    ("inside", [(1, 1), (1, 1), (1, 1), (1, 1)], False),
    # 4 hull cities, 2 coincident, 3 not collinear: a real triangle
    ("inside", [(1, 1), (0, 0), (4, 0), (0, 4), (4, 0)], True), ("inside", [(2, 0), (0, 0), (4, 0), (0, 4), (4, 0)], True),
    ("inside", [(3, 3), (0, 0), (4, 0), (0, 4), (4, 0)], False),
    # 3 collinear + 1 off the line: triangle (0,0),(4,0),(2,2); the middle collinear city is on its edge
    ("inside", [(2, 1), (0, 0), (2, 0), (4, 0), (2, 2)], True), ("inside", [(3, 2), (0, 0), (2, 0), (4, 0), (2, 2)], False),
    # 6 hull cities with an interior one: square 0..4; T inside, on the right edge, outside
    ("inside", [(3, 1), (0, 0), (4, 0), (2, 2), (4, 4), (0, 4), (1, 3)], True),
    ("inside", [(4, 3), (0, 0), (4, 0), (2, 2), (4, 4), (0, 4), (1, 3)], True),
    ("inside", [(5, 2), (0, 0), (4, 0), (2, 2), (4, 4), (0, 4), (1, 3)], False),
    # perimeter: n=2 single distance 5 (not 10); 3+4+5=12; unit square 4; crossed square 2+2*sqrt2=4.83->5;
    # sqrt2+sqrt2+2=4.83->5 (summing rounded legs would give 4); 5 cities sqrt2+sqrt2+2+2+2=8.83->9 (not 8)
    ("perimeter", [(0, 0), (3, 4)], 5), ("perimeter", [(0, 0), (3, 0), (3, 4)], 12),
    ("perimeter", [(0, 0), (1, 0), (1, 1), (0, 1)], 4), ("perimeter", [(0, 0), (1, 1), (1, 0), (0, 1)], 5),
    ("perimeter", [(0, 0), (1, 1), (2, 0)], 5), ("perimeter", [(0, 0), (1, 1), (2, 0), (2, 2), (0, 2)], 9),
    ("perimeter", [(2, 2), (2, 2)], 0),
    # crossing (A,B;C,D): X shape TRUE; parallel FALSE; collinear overlap FALSE (all ccw false);
    # shared endpoint A=C: ccw(A,C,D)=F, ccw(B,C,D)=T, ccw(A,B,C)=F, ccw(A,B,D)=F -> FALSE;
    # T-junction C on AB, D above: ccw(A,C,D)=T, ccw(B,C,D)=F, ccw(A,B,C)=F, ccw(A,B,D)=T -> TRUE;
    # same with D below: ccw(A,C,D)=F, ccw(B,C,D)=T, ccw(A,B,C)=F, ccw(A,B,D)=F -> FALSE (strict '>')
    ("crossing", [(0, 0), (2, 2), (0, 2), (2, 0)], True), ("crossing", [(0, 0), (1, 0), (0, 1), (1, 1)], False),
    ("crossing", [(0, 0), (4, 0), (1, 0), (3, 0)], False), ("crossing", [(0, 0), (2, 2), (0, 0), (2, 0)], False),
    ("crossing", [(0, 0), (2, 0), (1, 0), (1, 1)], True), ("crossing", [(0, 0), (2, 0), (1, 0), (1, -1)], False),
    ("crossing", [(0, 0), (1, 1), (3, 3), (3, 0)], False),
]


@pytest.mark.parametrize("name,item,expected", HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)])
def test_hand_made(name, item, expected):
    assert run(name, [item])[0] == expected
    assert ORACLES[name](item) == expected  # the oracle used above agrees with the hand value too


def test_hand_made_batched_with_mixed_k():
    for name in WIDTH:  # one call over all rows of a task (mixed k): rows must not leak into each other
        rows = [(it, e) for n, it, e in HAND if n == name]
        assert run(name, [it for it, _ in rows], np.random.default_rng(3)) == [e for _, e in rows]


# ----------------------------------------------------------------------------------------- text
TEXT = [
    ("distance", [[417, 2983]], [512], [b"dist(c_0417,c_2983)=512"]),
    ("trianglearea", [[1, 22, 333], [9999, 1000, 0]], [0, 3240000],
     [b"triarea(c_0001,c_0022,c_0333)=0", b"triarea(c_9999,c_1000,c_0000)=3240000"]),
    ("angle", [[1000, 9999, 5], [12, 34, 56]], [180, 7],
     [b"angle(c_1000,c_9999,c_0005)=180", b"angle(c_0012,c_0034,c_0056)=7"]),
    ("compass", [[12, 3456], [7, 8]], ["NW", "S"], [b"compass(c_0012,c_3456)=NW", b"compass(c_0007,c_0008)=S"]),
    ("inside", [[7, 100, 2000, 3001, -1, -1, -1], [1, 2, 3, 4, 5, 6, 7]], [True, False],
     [b"inside(c_0007;c_0100,c_2000,c_3001)=TRUE", b"inside(c_0001;c_0002,c_0003,c_0004,c_0005,c_0006,c_0007)=FALSE"]),
    ("perimeter", [[10, 20, -1, -1, -1], [1111, 2222, 3333, 4444, 5555]], [5, 12345],
     [b"perimeter(c_0010,c_0020)=5", b"perimeter(c_1111,c_2222,c_3333,c_4444,c_5555)=12345"]),
    ("crossing", [[1, 2, 3, 4], [4321, 20, 300, 9]], [True, False],
     [b"cross(c_0001,c_0002;c_0003,c_0004)=TRUE", b"cross(c_4321,c_0020;c_0300,c_0009)=FALSE"]),
]


@pytest.mark.parametrize("name,ids,answers,expected", TEXT, ids=[t[0] for t in TEXT])
def test_compact_text(name, ids, answers, expected):
    if name == "compass":
        answers = np.array([list(LABELS).index(a.encode()) for a in answers])
    else:
        answers = np.array(answers, dtype=bool if name in ("inside", "crossing") else np.int64)
    out = compact_text(TASKS[name], np.array(ids, dtype=np.int64), answers)
    assert [bytes(s) for s in out] == expected
