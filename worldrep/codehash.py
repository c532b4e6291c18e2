"""Code identity of a workflow script: a hash of the source its run can execute, blind to comments and docstrings.

A rule passes `code_hash([script, ...])` as a params value, so Snakemake reruns a job when, and only when, code
it runs has changed: the script plus every `worldrep` module its static imports reach (`closure`). Comments
and docstrings do not run, so they are normalised away (`normalised_source`) and an edit of them reruns nothing.

This module runs while Snakemake parses the Snakefile: standard library only, and each file is parsed once per
(path, mtime, size) however many rules share it.

What static analysis cannot see, an entry must name: `worldrep.tasks.task(name)` imports a task's module by
name, so a rule that runs one task lists `worldrep/tasks/{task}.py` as a second entry. `scripts/_workflow.py`
can log the modules a real run loaded (`WORLDREP_MODULES_LOG`); `missing_from_closure` checks such a log.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the workflow root: worldrep/ and scripts/ live here
PACKAGE = "worldrep"


def _statements(body):
    """Every statement in `body`, nested ones included. Docstrings and imports are statements, so walking
    statements only (not ast.walk's every expression node) finds them all at a fraction of the cost."""
    for stmt in body:
        yield stmt
        for field in ("body", "orelse", "finalbody"):
            yield from _statements(getattr(stmt, field, ()))
        for part in (*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())):  # except / match bodies
            yield from _statements(part.body)


def _drop_docstring(node) -> None:
    """Removes the docstring of a module, class or (async) function, in place.

    A docstring is exactly what Python stores as `__doc__`: a string constant as the body's first statement.
    A body left empty gets `pass` so that the tree still unparses to valid code.
    """
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        node.body = body[1:] or [ast.Pass()]


@functools.lru_cache(maxsize=None)
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[tuple[int, str | None, tuple[str, ...]], ...]]:
    """(normalised source, imports) of one file; the stat values in the key make an edited file parse again.

    Imports are (level, module, names) for every import statement anywhere in the file, inside functions and
    `if` blocks included: a function-level import runs when the function does, so it is code of the job.
    `import a.b` is (0, "a.b", ()); `from ..a import b, c` is (2, "a", ("b", "c")).
    """
    tree = ast.parse(Path(path).read_bytes(), filename=path)
    _drop_docstring(tree)
    imports = []
    for node in _statements(tree.body):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            _drop_docstring(node)  # the generator reads node.body after this, so it walks the trimmed body
        elif isinstance(node, ast.Import):
            imports += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module, tuple(alias.name for alias in node.names)))
    # ast.unparse drops comments and layout; its output is stable for one Python version (the pinned 3.11).
    return ast.unparse(tree), tuple(imports)


def _parse(path: Path):
    stat = path.stat()
    return _parsed(str(path), stat.st_mtime_ns, stat.st_size)


def normalised_source(path) -> str:
    """The file's code without comments, docstrings or formatting: equal for edits that change none of its code."""
    return _parse(Path(path))[0]


def _module_file(root: Path, module: str) -> Path | None:
    """The file that defines `module` under root (`a/b.py` or `a/b/__init__.py`), None when there is none.

    A folder without `__init__.py` is a namespace package (as `worldrep` itself is): importable, but no file runs.
    """
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_package(root: Path, module: str) -> bool:
    return root.joinpath(*module.split(".")).is_dir()


def _reached(root: Path, path: Path) -> set[Path]:
    """The files that importing what `path` imports runs: each imported module and its parent packages."""
    rel = path.relative_to(root)
    in_package = rel.parts[0] == PACKAGE
    modules = []
    for level, module, names in _parse(path)[1]:
        if level:
            if not in_package:
                continue  # a relative import outside the package cannot run (no parent package)
            parts = list(rel.parts[: len(rel.parts) - level])  # level 1: the file's own package (its folder)
            if not parts or parts[0] != PACKAGE:
                raise ImportError(f"{rel}: relative import beyond the {PACKAGE} package")
            module = ".".join(parts + ([module] if module else []))
        elif module.split(".")[0] != PACKAGE:
            # A module beside a script (scripts/_workflow.py) is importable because Snakemake puts the script's
            # folder on sys.path; everything else that is not `worldrep` is a third-party or stdlib import.
            sibling = path.parent / f"{module.split('.')[0]}.py"
            if not in_package and sibling.is_file():
                modules.append((module.split(".")[0], sibling))
            continue
        modules.append((module, None))
        # `from pkg import name`: name may be a submodule, which the import then runs.
        modules += [(f"{module}.{name}", None) for name in names
                    if name != "*" and _is_package(root, module) and _module_file(root, f"{module}.{name}")]
    found = set()
    for module, file in modules:
        if file is not None:
            found.add(file)
            continue
        if _module_file(root, module) is None and not _is_package(root, module):
            raise ImportError(f"{rel}: imports {module}, which has no file under {root}")
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py, a/b/__init__.py, then a/b/c
            file = _module_file(root, ".".join(parts[:i]))
            if file is not None:
                found.add(file)
    return found


def closure(entries, root=ROOT) -> tuple[str, ...]:
    """Sorted root-relative POSIX paths of the entry files and every file their static `worldrep` imports
    (and a script's imports of modules beside it) reach, package `__init__.py` files included."""
    root = Path(root).resolve()
    todo = []
    for entry in entries:
        path = (root / entry).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"code hash entry {entry} is not a file under {root}")
        todo.append(path)
        rel = path.relative_to(root)
        if rel.parts[0] == PACKAGE:  # an entry module runs its parent packages' __init__.py first
            todo += [p for i in range(1, len(rel.parts))
                     if (p := root.joinpath(*rel.parts[:i], "__init__.py")).is_file()]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _reached(root, path)
    return tuple(sorted(p.relative_to(root).as_posix() for p in seen))


def code_hash(entries, root=ROOT) -> str:
    """16 hex digits of sha256 over the closure's (path, normalised source) pairs.

    Paths are hashed too, so moving code between modules counts as a change; NUL separators cannot occur in
    paths or in parsed source, so no two different closures frame to the same bytes.
    """
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for rel in closure(entries, root):
        digest.update(rel.encode() + b"\0" + normalised_source(root / rel).encode() + b"\0")
    return digest.hexdigest()[:16]


def missing_from_closure(record_modules, closure_paths) -> list[str]:
    """Modules a run loaded (one `WORLDREP_MODULES_LOG` record's "modules") that its closure lacks: sorted,
    empty when the hash covered every file the run executed."""
    return sorted(set(record_modules) - set(closure_paths))


def main(argv=None) -> None:
    """`python -m worldrep.codehash [--each] ENTRY...`: the closure and hash of the entries together, or with
    `--each` one hash per entry (as the rules compute them); either way with the time it took, cold."""
    args = sys.argv[1:] if argv is None else list(argv)
    each = "--each" in args
    entries = [a for a in args if a != "--each"]
    if not entries:
        raise SystemExit(main.__doc__)
    start = time.perf_counter()
    if each:
        lines = [f"{code_hash([entry])}  {entry}" for entry in entries]
    else:
        paths = closure(entries)
        lines = [*paths, f"{code_hash(entries)}  ({len(paths)} files)"]
    print("\n".join(lines))
    print(f"{time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
