"""worldrep.codehash: a rule's code identity is the hash of its script's import closure, blind to comments and
docstrings. Edits happen in copies under tmp_path, never in the repository."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worldrep.codehash import closure, code_hash, missing_from_closure, normalised_source
from worldrep.tasks import TASK_NAMES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def copy(tmp_path):
    """A workflow root holding copies of worldrep/ and scripts/."""
    for folder in ("worldrep", "scripts"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    """Replaces old (which must occur) and moves the mtime on, so the parse cache cannot serve the old text."""
    text = path.read_text()
    assert old in text, (path, old)
    before = path.stat().st_mtime_ns
    path.write_text(text.replace(old, new, 1))
    os.utime(path, ns=(before + 10**9, before + 10**9))


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


# ---- the hash ----------------------------------------------------------------------------------------------

def test_comment_docstring_and_layout_edits_keep_the_hash(copy):
    entries = ["scripts/dataset.py", "worldrep/tasks/distance.py"]
    before = code_hash(entries, copy)
    edit(copy / "worldrep/datasets.py", "SPLITS = (", "# a new comment\nSPLITS = (  # and one more\n    ")
    edit(copy / "worldrep/datasets.py", '"""Task datasets:', '"""Task datasets, reworded:')  # module docstring
    edit(copy / "worldrep/tasks/base.py", '"""The city counts an item may have;', '"""Reworded;')  # method docstring
    edit(copy / "worldrep/tasks/distance.py", "\n", "\n\n# trailing thoughts\n")
    edit(copy / "scripts/dataset.py", "import sys", "import sys  # why not")
    assert code_hash(entries, copy) == before


def test_code_edits_change_the_hash(copy):
    entries = ["scripts/dataset.py", "worldrep/tasks/distance.py"]
    before = code_hash(entries, copy)
    edit(copy / "worldrep/datasets.py", 'SPLITS = ("train", "val", "test")', 'SPLITS = ("train", "val", "tests")')
    changed = code_hash(entries, copy)
    assert changed != before
    edit(copy / "worldrep/tasks/distance.py", 'function="dist"', 'function="distance"')  # the named task's module
    assert code_hash(entries, copy) != changed


def test_edits_outside_the_closure_keep_the_hash(copy):
    """The per-task cut: another task's module, or a module the script does not import, is not its code."""
    entries = ["scripts/dataset.py", "worldrep/tasks/distance.py"]
    before = code_hash(entries, copy)
    edit(copy / "worldrep/tasks/angle.py", 'function="angle"', 'function="ang"')
    edit(copy / "worldrep/figures.py", "DPI = 150", "DPI = 300")
    assert code_hash(entries, copy) == before
    assert code_hash(["scripts/dataset.py", "worldrep/tasks/angle.py"], copy) != \
        code_hash(["scripts/dataset.py", "worldrep/tasks/angle.py"], REPO)


def test_docstrings_go_everywhere_and_an_emptied_body_gets_pass(tmp_path):
    write(tmp_path, {"m.py": '''
        """Module."""
        class C:
            """Class."""
            def f(self):
                """Only a docstring."""
            async def g(self):
                """Doc."""
                return f"{1}"  # an f-string is not a docstring
        def h():
            x = "a string that is not first stays"
            return x
        '''})
    source = normalised_source(tmp_path / "m.py")
    assert "docstring" not in source.lower() and "Module" not in source and "Class" not in source
    assert "def f(self):\n        pass" in source
    assert "a string that is not first stays" in source and "return f'{1}'" in source
    compile(source, "m.py", "exec")


# ---- the closure -------------------------------------------------------------------------------------------

def test_train_closure_has_its_modules():
    paths = closure(["scripts/train.py"])
    assert {"scripts/train.py", "scripts/_workflow.py", "worldrep/stack.py", "worldrep/training.py",
            "worldrep/lease.py", "worldrep/tasks/__init__.py"} <= set(paths)
    assert list(paths) == sorted(set(paths))


def test_dataset_closure_has_no_task_module_but_base():
    paths = closure(["scripts/dataset.py"])
    assert [p for p in paths if p.startswith("worldrep/tasks/")] == ["worldrep/tasks/__init__.py",
                                                                      "worldrep/tasks/base.py"]
    with_task = closure(["scripts/dataset.py", "worldrep/tasks/crossing.py"])
    assert set(with_task) - set(paths) == {"worldrep/tasks/crossing.py"}


def test_function_level_import_is_found():
    """worldrep/plan.py imports worldrep.recipes only inside make_plan."""
    assert "worldrep/recipes.py" in closure(["worldrep/plan.py"])


def test_config_experiments_grid_import_no_circle():
    """The layers: config (the schema's checks) <- experiments (the blocks they add) <- grid (runs, validation)."""
    assert "worldrep/grid.py" not in closure(["worldrep/config.py"])
    assert "worldrep/grid.py" not in closure(["worldrep/experiments.py"])
    assert {"worldrep/config.py", "worldrep/experiments.py"} <= set(closure(["worldrep/grid.py"]))


def test_every_static_import_form(tmp_path):
    write(tmp_path, {
        "scripts/_workflow.py": "import sys\n",
        "scripts/s.py": """
            import _workflow
            import numpy as np
            import worldrep.a
            from worldrep import b, NAME_IN_INIT
            def f():
                if True:
                    from worldrep.pkg.inner import thing
            """,
        "worldrep/a.py": "import os\n",
        "worldrep/b.py": "try:\n    from .pkg import sub\nexcept ImportError:\n    pass\n",
        "worldrep/pkg/__init__.py": "",
        "worldrep/pkg/sub.py": "from . import sibling\n",
        "worldrep/pkg/sibling.py": "from ..c import x\n",
        "worldrep/c.py": "x = 1\n",
        "worldrep/pkg/inner/__init__.py": "from .deep import thing\n",
        "worldrep/pkg/inner/deep.py": "thing = 2\n",
        "worldrep/unused.py": "",
        "scripts/other.py": "",
    })
    assert closure(["scripts/s.py"], tmp_path) == (
        "scripts/_workflow.py", "scripts/s.py", "worldrep/a.py", "worldrep/b.py", "worldrep/c.py",
        "worldrep/pkg/__init__.py", "worldrep/pkg/inner/__init__.py", "worldrep/pkg/inner/deep.py",
        "worldrep/pkg/sibling.py", "worldrep/pkg/sub.py")
    # An entry module runs its parent packages' __init__.py (worldrep itself is a namespace package: no file).
    assert closure(["worldrep/pkg/sibling.py"], tmp_path) == (
        "worldrep/c.py", "worldrep/pkg/__init__.py", "worldrep/pkg/sibling.py")


def test_an_import_of_a_missing_module_is_an_error(tmp_path):
    write(tmp_path, {"scripts/s.py": "from worldrep.nothing import x\n", "worldrep/a.py": ""})
    with pytest.raises(ImportError, match="worldrep.nothing"):
        closure(["scripts/s.py"], tmp_path)
    with pytest.raises(FileNotFoundError):
        closure(["scripts/absent.py"], tmp_path)


# ---- lazy tasks ---------------------------------------------------------------------------------------------

def test_tasks_mapping_is_lazy_and_complete():
    code = textwrap.dedent("""
        import sys
        from worldrep.tasks import TASKS, TASK_NAMES, task
        loaded = lambda: sorted(m for m in sys.modules if m.startswith("worldrep.tasks."))
        assert loaded() == ["worldrep.tasks.base"], loaded()
        assert "angle" in TASKS and "nope" not in TASKS and len(TASKS) == 7 and list(TASKS) == list(TASK_NAMES)
        assert loaded() == ["worldrep.tasks.base"], loaded()
        assert TASKS["angle"] is task("angle") and TASKS["angle"].name == "angle"
        assert loaded() == ["worldrep.tasks.angle", "worldrep.tasks.base"], loaded()
        assert [name for name, t in TASKS.items() if t.name == name] == list(TASK_NAMES)
        """)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_unknown_task_names_the_known_ones():
    from worldrep.tasks import TASKS, task
    with pytest.raises(ValueError, match="distance, trianglearea, angle, compass, inside, perimeter, crossing"):
        task("nope")
    with pytest.raises(KeyError):
        TASKS["nope"]
    with pytest.raises(TypeError):
        TASKS["nope"] = None
    assert TASK_NAMES == ("distance", "trianglearea", "angle", "compass", "inside", "perimeter", "crossing")


# ---- evidence: the modules a run loaded ---------------------------------------------------------------------

def test_loaded_modules_lie_inside_the_closure(copy):
    """A script-like program in the copy, run as Snakemake runs one (its folder on sys.path, a `snakemake`
    global): the modules its WORLDREP_MODULES_LOG record names are all in the closure of its entries."""
    write(copy, {"scripts/probe.py": """
        import types
        snakemake = types.SimpleNamespace(rule="probe_rule", scriptdir="scripts")
        import _workflow
        from worldrep.datasets import SPLITS
        from worldrep.tasks import task
        assert task("inside").name == "inside"
        """})
    log = copy / "modules.jsonl"
    env = {**os.environ, "WORLDREP_MODULES_LOG": str(log), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    for _ in range(2):  # two runs append two records
        subprocess.run([sys.executable, "scripts/probe.py"], cwd=copy, env=env, check=True)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2 and records[0] == records[1]
    record = records[0]
    assert record["rule"] == "probe_rule" and record["script"] == "scripts/probe.py"
    assert {"scripts/_workflow.py", "worldrep/datasets.py", "worldrep/tasks/inside.py"} <= set(record["modules"])
    # Loaded from the copy (the workflow root of its _workflow.py), so every path is one of the copy's files.
    assert all((copy / path).is_file() for path in record["modules"])
    entries = ["scripts/probe.py", "worldrep/tasks/inside.py"]
    assert missing_from_closure(record["modules"], closure(entries, copy)) == []
    # The dynamically imported task is exactly what the script's own closure misses.
    assert missing_from_closure(record["modules"], closure(["scripts/probe.py"], copy)) == ["worldrep/tasks/inside.py"]


def test_missing_from_closure_is_a_sorted_difference():
    assert missing_from_closure(["b.py", "a.py", "c.py"], ("a.py",)) == ["b.py", "c.py"]
    assert missing_from_closure([], ()) == []
