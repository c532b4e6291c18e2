"""crossing: `cross(c_A,c_B;c_C,c_D)=TRUE|FALSE`, whether segment AB properly crosses segment CD."""
from .base import Task, boolean_text, cross


def ccw(x, y, p: int, q: int, r: int):
    """The spec's strict test (y_R − y_P)(x_Q − x_P) > (y_Q − y_P)(x_R − x_P); touching cases follow from it."""
    return cross(x[:, p], y[:, p], x[:, q], y[:, q], x[:, r], y[:, r]) > 0


def answer(x, y, k):
    a, b, c, d = range(4)
    return (ccw(x, y, a, c, d) != ccw(x, y, b, c, d)) & (ccw(x, y, a, b, c) != ccw(x, y, a, b, d))


TASK = Task(
    name="crossing", function="cross", abbr="Cr", answer=answer, answer_text=boolean_text,
    semicolon_before=2, balanced=True, default_city_counts=(4,), categories=2,
)
