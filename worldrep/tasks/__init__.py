"""The seven tasks, one module each, in canonical order (METHOD §0): it fixes matrix rows and pair labels.

No task module is imported here: `task(name)` imports one on demand. A job's code identity
(`worldrep.codehash`) is the closure of its static imports, so a module that only needs task names or labels
must not pull in every task, and an edit of one task reruns only that task's jobs.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence

from .base import Task

TASK_NAMES = ("distance", "trianglearea", "angle", "compass", "inside", "perimeter", "crossing")
# Figure labels, here rather than read from each module's `TASK.abbr` so that figures import no task code;
# tests/test_figures.py checks that the two agree.
TASK_ABBR = {"distance": "D", "trianglearea": "T", "angle": "A", "compass": "Co", "inside": "I", "perimeter": "P",
             "crossing": "Cr"}


def task(name: str) -> Task:
    """The `TASK` of `worldrep.tasks.<name>`, imported now if it was not yet."""
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").TASK


class _Tasks(Mapping):
    """Read-only name -> Task in canonical order; a value imports its module when first read."""

    def __getitem__(self, name: str) -> Task:
        if name not in TASK_NAMES:
            raise KeyError(name)
        return task(name)

    def __contains__(self, name) -> bool:  # membership needs no import (Mapping's default would import)
        return name in TASK_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(TASK_NAMES)

    def __len__(self) -> int:
        return len(TASK_NAMES)

    def __repr__(self) -> str:
        return f"TASKS({', '.join(TASK_NAMES)})"


TASKS: Mapping[str, Task] = _Tasks()


def canonical_order(names) -> list[str]:
    return sorted(names, key=TASK_NAMES.index)


# ---- the prompt a model's representations are read at (METHOD §10) ---------------------------------------------
# Here, with the task names and without torch, so that planning knows each run's prompt task: a representation job's
# code identity includes that task's module (it spells the prompt's function name and delimiter).
PROMPT_TASK_OF_MANY = "distance"  # §10: pt7, pt7-atl and every ftwb2 model are prompted with distance


def prompt_task(mixture: str, mixture_tasks: Sequence[str], *, finetuning: bool,
                configured_tasks: Sequence[str]) -> str:
    """The task whose partial prompt probes a model trained on `mixture` (METHOD §10, table "Prompt task").

    Fine-tuning: one task -> that task (ftwb1-k); several -> distance (ftwb2, Project rule: every seed).
    Pretraining: one task -> that task (pt1-k); a mixture covering every configured task (pt7, pt7-atl) ->
    distance; any other -> its first listed task (pt2-k, pt3-k: listed order matters).
    """
    unknown = [t for t in mixture_tasks if t not in TASK_NAMES]
    if not mixture_tasks or unknown:
        raise ValueError(f"mixture {mixture!r}: needs known tasks, got {list(mixture_tasks)}")
    if len(mixture_tasks) == 1:
        return mixture_tasks[0]
    if finetuning:
        return PROMPT_TASK_OF_MANY
    covers_all = set(configured_tasks) <= set(mixture_tasks)
    return PROMPT_TASK_OF_MANY if covers_all and PROMPT_TASK_OF_MANY in mixture_tasks else mixture_tasks[0]
