"""The seven tasks, one module each, in canonical order (METHOD §0): it fixes matrix rows and pair labels."""
from . import angle, compass, crossing, distance, inside, perimeter, trianglearea
from .base import Task

TASKS: dict[str, Task] = {
    m.TASK.name: m.TASK for m in (distance, trianglearea, angle, compass, inside, perimeter, crossing)
}
TASK_NAMES = tuple(TASKS)


def canonical_order(names) -> list[str]:
    return sorted(names, key=TASK_NAMES.index)
