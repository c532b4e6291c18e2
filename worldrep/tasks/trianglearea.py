"""trianglearea: `triarea(c_A,c_B,c_C)=S`, S = round(½·|shoelace|) in scaled units squared."""
import numpy as np

from .base import Task, cross, integer_text, round_half_even


def answer(x, y, k):
    # Twice the area is an exact integer; halving it in float is exact too, so ties (odd doubled areas,
    # which are common) round half to even exactly as METHOD §14 warns.
    doubled = np.abs(cross(x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2]))
    return round_half_even(doubled / 2.0)


TASK = Task(
    name="trianglearea", function="triarea", abbr="T", answer=answer, answer_text=integer_text,
    default_city_counts=(3,),
)
