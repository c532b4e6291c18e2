"""compass: `compass(c_A,c_B)=DIR`, the 8-point direction from A to B with north = +y."""
import numpy as np

from .base import Task

# Sector s covers [45s − 22.5, 45s + 22.5) degrees counter-clockwise from east (METHOD §3.2).
LABELS = np.array([b"E", b"NE", b"N", b"NW", b"W", b"SW", b"S", b"SE"])
COINCIDENT = 2  # index of "N": the spec's answer when A and B coincide


def answer(x, y, k):
    dx, dy = (x[:, 1] - x[:, 0]).astype(float), (y[:, 1] - y[:, 0]).astype(float)
    phi = np.mod(np.degrees(np.arctan2(dy, dx)), 360.0)
    sector = (np.mod(phi + 22.5, 360.0) // 45).astype(np.int64)
    return np.where((dx == 0) & (dy == 0), COINCIDENT, sector)


def answer_text(answers):
    return LABELS[answers]


TASK = Task(name="compass", function="compass", abbr="Co", answer=answer, answer_text=answer_text,
            distinct_pairs=True, categories=len(LABELS))
