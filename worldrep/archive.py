"""One archive of a run: results, the config, code revision, environment and a SHA-256 manifest.

    python -m worldrep.archive create --name NAME [--results results] [--config BASE.yaml [OVERLAY.yaml ...]]
                                      [--with-models] [--all] [--out results/archive]
    python -m worldrep.archive verify ARCHIVE [--no-rederive] [--recompute] [--cores N]
    python -m worldrep.archive unpack ARCHIVE DEST

`create` writes `{out}/{name}.tar.gz`, one top folder `{name}/` holding
  results/...          every results file except work folders (`in_progress/`), `*.partial`, `.snakemake`,
                       the archive folder, models (unless --with-models) and the big arrays (unless --all:
                       dataset and mixture splits, representations);
  provenance/          config.yaml (what the results were made under: the --config files merged in order, as
                       `snakemake --configfile A B` merges them; one file's own bytes), configs/NN-<name> (each
                       --config file as given, NN = 01, 02, ... in order), code_revision.txt (+ code_diff.patch
                       when tracked files differ from HEAD),
                       runs/{run}.json (every published run's final/run.json, with or without --with-models),
                       workflow.tar (`git archive` of that revision: the code itself, when in a git checkout),
                       untracked/ (workflow files git neither tracks nor ignores, which the other two miss),
                       pip_freeze.txt, hardware.json, snakemake.json (version, the metadata record of every
                       existing output, the latest log), archive.json (the options), derived.sha256,
                       recompute.json;
  MANIFEST.sha256      `sha256  path` of every other member, sorted, `sha256sum -c` format; last member.
The tar is deterministic (sorted members, mtime 0, owner 0/"", mode 0644, gzip mtime 0, no directory
members): the same inputs give the same bytes.

`create` refuses results that the config did not make (`config_mismatches`): the world's and every dataset's
recorded settings, and every run's results/models/{run}/final/run.json (model, recipe, precision, seed, mixture:
`worldrep.store.run_json_differences`, the check adoption makes), each named; a run the config does not plan too.

`derived.sha256` hashes the cheap deterministic outputs (world, datasets; `sha256sum` format, paths relative
to the workflow root) even when the big ones are not archived. JSON files are left out of it: their
`provenance` field holds the code revision and versions, which legitimately differ; `verify` compares the
regenerated JSON with the archived copy instead, minus that field.

`recompute.json` states which archived analysis tables (results/probes, views, cka, generalization) `verify
--recompute` can recompute from what the archive holds (`recomputable`: rule, inputs, and `inputs_as_archived`,
upstream tables it cannot recompute itself and takes as archived) and why the others cannot be
(`not_recomputable`). With --all that is every analysis table. Without it the representations are missing, so
the per-run probe tables and views, the Atlantis reconstruction and the CKA family tables are not recomputable;
the generalization tables (from results/evaluation/metrics.csv) and the tables made from other tables
(probe_metrics, task_count*, cka_vs_generalization*) still are.

`verify` checks every member against the manifest and every run record against the archived config (a config
edited after the runs were trained does not pass), then (unless --no-rederive) reruns the world and dataset
rules of the archived code under the archived config in a temporary folder and compares the hashes. The archived
code is provenance/workflow.tar with code_diff.patch applied and untracked/ copied over (`unpack_code`); only an
archive without workflow.tar (made outside a git checkout) is re-derived with this checkout's code. The log says
which. With
--recompute it also recomputes the analysis tables in-process under the archived config, with the library
functions the job scripts call (`probes.probe_tables`, `probes.atlantis_tables`, `cka.family_tables`,
`cka.task_count_tables`, `cka.cka_vs_generalization_tables`, `generalization.generalization_tables`), each
downstream table from the recomputed upstream ones, and compares each with the archived copy: floats to
|a - b| <= 1e-9 + 1e-9 |b| (views, written to 6 significant digits: 1e-5 relative), everything else exactly.
One line per table: ok, DIFFERS (the columns, the first differing cell, the largest difference) or cannot (why);
any difference fails verify. The jobs' inputs and params come from the archived config as rules/common.smk
derives them (`recompute_jobs`) and are checked against Snakemake's record of each archived table when
snakemake.json has one: a manifest line rewritten along with an edited table does not pass.

Rebuild from an archive (in the workflow folder that holds it, with the packages of provenance/pip_freeze.txt):

    python -m worldrep.archive unpack results/archive/NAME.tar.gz rebuild
    cd rebuild && python -m worldrep.archive verify ../results/archive/NAME.tar.gz
    snakemake --cores 2 --configfile provenance/config.yaml

`unpack` writes rebuild/ with the archived code (the code verify re-derives with; a git repository of its own,
without commits), rebuild/results/ with the archived results files, rebuild/provenance/ (the configs and the
rest) and rebuild/MANIFEST.sha256. `verify`, run there, is the archived code's own. Then snakemake, under the
archived config:
  - from an archive made without --with-models, it trains every run again (neither the models nor the store, the
    training cache, are archived) and remakes everything after them: every job but the world, the tokenizer and
    the world map, which are archived and up to date;
  - from an archive made --with-models, it plans nothing: the models and every table are there and up to date, and
    Snakemake remakes nothing for missing intermediate files (the store, dataset and mixture splits). Add
    --forceall to rebuild everything from scratch.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import yaml

from .artifacts import sha256_file
from .config import ConfigError
from .grid import load_config, validate_config

WORKFLOW_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ["Snakefile", "rules", "scripts", "config", "worldrep", "profiles", "envs"]
MANIFEST = "MANIFEST.sha256"
DERIVED = "provenance/derived.sha256"
CONFIG = "provenance/config.yaml"
CONFIGS = "provenance/configs"  # each --config file as given, numbered in order
WORKFLOW_TAR = "provenance/workflow.tar"
CODE_DIFF = "provenance/code_diff.patch"
UNTRACKED = "provenance/untracked/"
RUNS = "provenance/runs"  # each published run's final/run.json, archived even without --with-models
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MANIFEST_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")
# Results that are re-derived, not only stored: the world and every dataset (both cheap and deterministic).
DERIVED_STAGES = ("world", "datasets")
# The analysis tables `verify --recompute` recomputes in-process (rules/probes.smk, cka.smk, generalization.smk),
# and the archive's statement of which of them it can recompute.
RECOMPUTE = "provenance/recompute.json"
ANALYSIS_STAGES = ("probes", "views", "cka", "generalization")
RTOL = ATOL = 1e-9  # floats of a recomputed table: |a - b| <= ATOL + RTOL |b|; everything else exactly
VIEWS_RTOL = 1e-5  # the views are written to 6 significant digits (%.6g): one rounding step apart at most


class ArchiveError(RuntimeError):
    pass


# ---- what goes in ----------------------------------------------------------------------------------------
def is_big_array(rel: PurePosixPath) -> bool:
    """Files that reach GBs at paper scale: dataset and mixture splits, representations (rel to results/)."""
    stage = rel.parts[0]
    return (stage == "datasets" and rel.suffix in (".npz", ".txt")) or (stage == "mixtures" and rel.suffix == ".npz") \
        or stage == "representations"


def is_archived(rel: PurePosixPath, with_models: bool = False, include_all: bool = False) -> bool:
    """Whether a file under results/ (path relative to it) goes into the archive. Never the store: it is the
    training cache behind results/models/ (whose published files `--with-models` archives) and holds every trained
    run of every config, not only this one's."""
    if is_scratch(rel) or rel.parts[0] in ("archive", "store"):
        return False
    if rel.parts[0] == "models" and not with_models:
        return False
    return include_all or not is_big_array(rel)


def is_scratch(rel: PurePosixPath) -> bool:
    """Never archived nor hashed: resume work folders, half-written files, Snakemake's own state."""
    return "in_progress" in rel.parts or ".snakemake" in rel.parts or rel.name.endswith(".partial")


def walk_files(root: Path, skip: set[Path] = frozenset()) -> list[Path]:
    """Every file under root, sorted, not descending into `skip` folders or scratch ones."""
    files = []
    for folder, dirs, names in os.walk(root):
        folder = Path(folder)
        dirs[:] = sorted(d for d in dirs
                         if d not in ("in_progress", ".snakemake") and (folder / d).resolve() not in skip)
        files += [folder / n for n in sorted(names) if (folder / n).is_file()]
    return files


def checksum_lines(hashes: dict[str, str]) -> bytes:
    return "".join(f"{h}  {p}\n" for p, h in sorted(hashes.items())).encode()


def parse_checksums(text: str, what: str) -> tuple[dict[str, str], list[str]]:
    hashes, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        match = MANIFEST_LINE.match(line)
        if not match:
            problems.append(f"{what} line {number} is malformed: {line!r}")
        elif match.group(2) in hashes:
            problems.append(f"{what} lists {match.group(2)} twice")
        else:
            hashes[match.group(2)] = match.group(1)
    return hashes, problems


def derived_hashes(results: Path) -> dict[str, str]:
    """sha256 of every non-JSON world and dataset file, keyed by its path from the workflow root."""
    hashes = {}
    for stage in DERIVED_STAGES:
        for path in walk_files(results / stage):
            rel = PurePosixPath(path.relative_to(results).as_posix())
            if not is_scratch(rel) and rel.suffix != ".json":
                hashes[f"results/{rel}"] = sha256_file(path)
    return hashes


def config_mismatches(config: dict, results: Path) -> list[str]:
    """Settings recorded in the world/dataset metadata and in the runs' run.json that disagree with the config: an
    archive of results made under another config would fail re-derivation only after minutes of work, or, for the
    runs, not at all (re-derivation stops at the datasets)."""
    from .datasets import dataset_base

    problems = []
    world = results / "world" / "world.json"
    if world.exists():
        meta = json.loads(world.read_text())
        if meta.get("seeds") != {"atlantis_seed": config["world"]["atlantis"]["seed"],
                                 "city_id_seed": config["world"]["city_id_seed"]} \
                or meta.get("min_population") != config["world"]["min_population"]:
            problems.append(f"{world}: seeds or min_population differ from the config")
    for path in sorted((results / "datasets").glob("*/*/metadata.json")):
        params = json.loads(path.read_text()).get("params", {})
        # a label-noise copy (pretraining-noise10) has its clean variant's sizes
        expected = {"sizes": config["datasets"].get(dataset_base(path.parent.parent.name)),
                    "seed": config["datasets"]["seed"]}
        found = {k: params.get(k) for k in expected}
        if found != expected:
            problems.append(f"{path}: made with {found}, the config says {expected}")
    return problems + run_mismatches(config, results)


def run_mismatches(config: dict, results: Path) -> list[str]:
    """Every published run's run.json against what the config says of that run (the check `adopt` makes before it
    trusts a published model), and run.json files of runs the config does not plan. A run not yet trained has none:
    nothing to compare."""
    records = [(str(path), path.parent.parent.name, json.loads(path.read_text()))
               for path in sorted((results / "models").glob("*/final/run.json"))]
    return record_mismatches(config, records)


def record_mismatches(config: dict, records: list[tuple[str, str, dict]], archived: bool = False) -> list[str]:
    """Problems of run records (where, run name, run.json contents) against `config`: a run it does not plan, or
    keys `store.run_json_differences` finds. `archived`: the config is an archive's, and the messages say so."""
    from .grid import training_runs
    from .store import run_json_differences

    planned = {run.name: run for run in training_runs(config)}
    plans, says = ("the archived config",) * 2 if archived else ("this config", "the config")
    problems = []
    for where, name, meta in records:
        if name not in planned:
            problems.append(f"{where}: run {name} is not planned by {plans}")
        elif differs := run_json_differences(config, planned[name], meta):
            problems.append(f"{where}: run {name} was trained with another {', '.join(differs)} than {says} says")
    return problems


# ---- provenance ------------------------------------------------------------------------------------------
def run_text(args: list[str], cwd: Path | None = None) -> str | None:
    """stdout of a command, or None when it is missing or fails."""
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def code_revision(root: Path = WORKFLOW_ROOT) -> tuple[str, str | None]:
    """(`revision` line + `git status --porcelain`, the diff of tracked files against HEAD or None)."""
    revision = run_text(["git", "rev-parse", "HEAD"], cwd=root)
    status = run_text(["git", "status", "--porcelain"], cwd=root)
    if revision is None or status is None:
        return "unknown\n", None
    text = f"{revision.strip()}\n# git status --porcelain ({'dirty' if status.strip() else 'clean'}):\n{status}"
    diff = run_text(["git", "diff", "HEAD", "--binary"], cwd=root)
    return text, diff or None


def code_snapshot(root: Path = WORKFLOW_ROOT) -> bytes | None:
    """`git archive` of HEAD: the committed workflow code itself (about 0.7 MB), so an archive can be rebuilt
    without access to the repository; None outside a git checkout. Uncommitted edits are in code_diff.patch."""
    try:
        proc = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=root, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def untracked_workflow_files(root: Path = WORKFLOW_ROOT) -> list[str]:
    """Workflow files (WORKFLOW_PARTS) that git neither tracks nor ignores, sorted; [] outside a checkout."""
    listed = run_text(["git", "ls-files", "--others", "--exclude-standard", "--", *WORKFLOW_PARTS], cwd=root)
    return sorted(line for line in (listed or "").splitlines() if line)


def pip_freeze() -> str:
    text = run_text([sys.executable, "-m", "pip", "freeze"])
    if text is not None:
        return text
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    return "# pip unavailable: installed distributions from importlib.metadata\n" + "\n".join(dists) + "\n"


def cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def torch_info() -> dict | None:
    try:
        import torch  # lazily: seconds to import, and absent from lean installs
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    devices = [{"name": torch.cuda.get_device_name(i), "capability": list(torch.cuda.get_device_capability(i)),
                "memory_bytes": torch.cuda.get_device_properties(i).total_memory}
               for i in range(torch.cuda.device_count())] if cuda else []
    return {"version": torch.__version__, "cuda_available": cuda, "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None, "devices": devices}


def hardware_info() -> dict:
    """Stable facts only (no hostname, load or temperatures), so that two creates give the same bytes."""
    query = run_text(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,compute_cap",
                      "--format=csv,noheader"])
    return {
        "platform": platform.platform(), "machine": platform.machine(), "python": sys.version,
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "memory_bytes": memory_bytes(),
        "nvidia_smi": None if query is None else {"gpus": query.strip().splitlines(),
                                                  "version": (run_text(["nvidia-smi", "--version"]) or "").strip()},
        "torch": torch_info(),
    }


def snakemake_records(workdir: Path) -> dict[str, dict]:
    """Snakemake's metadata record (rule, input checksums, params, code, times) of every output that still
    exists. A record's file name is the urlsafe base64 of the output path, split into '@'-prefixed folders
    when longer than a file name may be."""
    records = {}
    root = workdir / ".snakemake" / "metadata"
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_dir():
            continue
        encoded = "".join(part.lstrip("@") for part in path.relative_to(root).parts)
        try:
            output = base64.urlsafe_b64decode(encoded).decode()
            record = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if (workdir / output).exists():
            records[output] = record
    return records


def snakemake_info(workdir: Path) -> dict:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    try:
        version = importlib.metadata.version("snakemake")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"version": version, "records": snakemake_records(workdir),
            "latest_log": {"name": logs[-1].name, "content": logs[-1].read_text(errors="replace")} if logs else None}


def to_json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def config_members(paths: list[Path], config: dict) -> dict[str, bytes]:
    """provenance/configs/NN-<name>: each config file's bytes in the order given (a base, then its overlays);
    provenance/config.yaml: their merge `config`, the one file a re-derivation, a recomputation and a rebuild read
    (with one file, that file's bytes: the merge of one file is itself, and its comments stay)."""
    members = {f"{CONFIGS}/{number:02d}-{path.name}": path.read_bytes() for number, path in enumerate(paths, 1)}
    if len(paths) == 1:
        members[CONFIG] = paths[0].read_bytes()
    else:
        header = "".join(f"#   {name}\n" for name in members)
        members[CONFIG] = (f"# The merge of these config files, in order (as `snakemake --configfile A B` merges "
                           f"them):\n{header}").encode() + yaml.safe_dump(config, sort_keys=False).encode()
    return members


def code_members(root: Path = WORKFLOW_ROOT) -> dict[str, bytes]:
    """The code of the checkout `root` as provenance/ members: code_revision.txt, workflow.tar (HEAD), code_diff.patch
    (uncommitted edits of tracked files) and untracked/ (workflow files git does not track), the last three as far
    as they exist. `unpack_code` turns them back into that checkout's workflow files."""
    revision, diff = code_revision(root)
    members = {"provenance/code_revision.txt": revision.encode()}
    if diff:
        members[CODE_DIFF] = diff.encode()
    snapshot = code_snapshot(root)
    if snapshot:
        members[WORKFLOW_TAR] = snapshot
    # Files git does not track are in neither the snapshot nor the diff, yet a new rule or module may have run.
    for rel in untracked_workflow_files(root):
        members[f"{UNTRACKED}{rel}"] = (root / rel).read_bytes()
    return members


def collect_provenance(results: Path) -> dict[str, bytes]:
    """The provenance/ members, except the configs, archive.json and derived.sha256 (which `create` adds)."""
    return {**code_members(),
            "provenance/pip_freeze.txt": pip_freeze().encode(),
            "provenance/hardware.json": to_json(hardware_info()),
            "provenance/snakemake.json": to_json(snakemake_info(results.resolve().parent))}


# ---- the deterministic tar -------------------------------------------------------------------------------
class HashingReader:
    """A file wrapper that hashes what tarfile reads through it: one pass per file."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size=-1):
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, 0, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(path: Path, top: str, members: dict[str, bytes | Path]) -> dict[str, str]:
    """Write members (archive path -> bytes or file) sorted, then MANIFEST.sha256, through a `.partial`
    sibling. Returns the manifest's hashes."""
    if any("\n" in name or "\\" in name for name in members):
        raise ArchiveError("file names with newlines or backslashes cannot be listed in a sha256sum manifest")
    hashes = {}
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            source = members[name]
            if isinstance(source, bytes):
                tar.addfile(tar_info(f"{top}/{name}", len(source)), io.BytesIO(source))
                hashes[name] = hashlib.sha256(source).hexdigest()
                continue
            with open(source, "rb") as handle:
                reader = HashingReader(handle)
                tar.addfile(tar_info(f"{top}/{name}", os.fstat(handle.fileno()).st_size), reader)
                hashes[name] = reader.digest.hexdigest()
        manifest = checksum_lines(hashes)
        tar.addfile(tar_info(f"{top}/{MANIFEST}", len(manifest)), io.BytesIO(manifest))
    os.replace(tmp, path)
    return hashes


def create_archive(name: str, results: Path, config_paths: Path | list[Path], out: Path, with_models: bool = False,
                   include_all: bool = False, provenance: dict[str, bytes] | None = None, log=print) -> Path:
    """Write `{out}/{name}.tar.gz`. `config_paths`: the config file, or a base and its overlays in the order
    Snakemake was given them. `provenance` replaces the collected provenance files (tests)."""
    paths = [Path(config_paths)] if isinstance(config_paths, (str, Path)) else [Path(p) for p in config_paths]
    if not NAME.match(name):
        raise ArchiveError(f"archive name {name!r}: use letters, digits, '.', '_' and '-' only")
    if not results.is_dir():
        raise ArchiveError(f"results folder {results} does not exist")
    if not paths:
        raise ArchiveError("no config file given")
    config = load_config(paths)  # merged in order and validated; an overlay given alone is refused
    if mismatches := config_mismatches(config, results):
        raise ArchiveError(f"the results were not made with {' + '.join(map(str, paths))}:\n  "
                           + "\n  ".join(mismatches))
    members: dict[str, bytes | Path] = {}
    for path in walk_files(results, skip={out.resolve(), (results / "archive").resolve()}):
        rel = PurePosixPath(path.relative_to(results).as_posix())
        if is_archived(rel, with_models, include_all):
            members[f"results/{rel}"] = path
    configs = config_members(paths, config)
    members.update(configs)
    # Every run's record of how it was trained, kept even when the models are not: `verify` holds them to the
    # archived config, so an archive whose config was edited after its runs were trained does not pass.
    for record in sorted((results / "models").glob("*/final/run.json")):
        members[f"{RUNS}/{record.parent.parent.name}.json"] = record.read_bytes()
    members.update(provenance if provenance is not None else collect_provenance(results))
    copies = [member for member in configs if member != CONFIG]
    members["provenance/archive.json"] = to_json({
        "name": name, "with_models": with_models, "all": include_all,
        "configs": [{"file": str(path), "copy": copy} for path, copy in zip(paths, copies)]})
    members[DERIVED] = checksum_lines(derived_hashes(results))
    members[RECOMPUTE] = to_json(recompute_statement(config, {p for p in members if p.startswith("results/")}))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.tar.gz"
    hashes = write_archive(path, name, members)
    stored = sum(p.startswith("results/") for p in hashes)
    log(f"wrote {path}: {stored} results files + {len(hashes) - stored} provenance files + {MANIFEST}, "
        f"{path.stat().st_size} bytes")
    return path


# ---- verify ----------------------------------------------------------------------------------------------
@dataclass
class Contents:
    top: str
    hashes: dict[str, str]      # every regular member (path below the top folder) -> sha256
    small: dict[str, bytes]     # the manifest, provenance files and JSON results, for the checks that read them
    problems: list[str]


def read_archive(path: Path) -> Contents:
    hashes, small, problems, tops = {}, {}, [], set()
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                top, _, rel = member.name.partition("/")
                tops.add(top)
                if member.isdir():
                    continue
                if not member.isfile() or not rel:
                    problems.append(f"{member.name}: not a regular file below the archive's top folder")
                    continue
                if rel in hashes:
                    problems.append(f"{rel}: appears twice in the archive")
                handle = tar.extractfile(member)
                keep = rel == MANIFEST or rel.startswith("provenance/") or rel.endswith(".json")
                data, digest = [], hashlib.sha256()
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    if keep:
                        data.append(chunk)
                hashes[rel] = digest.hexdigest()
                if keep:
                    small[rel] = b"".join(data)
    except (tarfile.TarError, OSError, EOFError) as error:
        return Contents("", {}, {}, [f"{path}: not a readable .tar.gz ({error})"])
    if len(tops) != 1:
        problems.append(f"the archive must hold one top folder, found {sorted(tops)}")
    return Contents(next(iter(tops), ""), hashes, small, problems)


def manifest_problems(contents: Contents) -> list[str]:
    """Every member against MANIFEST.sha256: changed, missing and unlisted files, each by name."""
    if MANIFEST not in contents.small:
        return [f"{MANIFEST} is missing from the archive"]
    listed, problems = parse_checksums(contents.small[MANIFEST].decode(errors="replace"), MANIFEST)
    members = {p: h for p, h in contents.hashes.items() if p != MANIFEST}
    changed = sorted(p for p in listed if p in members and members[p] != listed[p])
    problems += [f"{p}: sha256 differs from the manifest" for p in changed]
    problems += [f"{p}: listed in the manifest but missing from the archive"
                 for p in sorted(set(listed) - set(members))]
    problems += [f"{p}: in the archive but not in the manifest" for p in sorted(set(members) - set(listed))]
    return problems


def without_provenance(data: bytes) -> dict:
    obj = json.loads(data)
    return {k: v for k, v in obj.items() if k != "provenance"} if isinstance(obj, dict) else obj


def copy_workflow(dest: Path) -> Path:
    """This workflow's code and configs (no results) copied into `dest`, modification times kept, so that
    Snakemake plans there as it would here."""
    for part in WORKFLOW_PARTS:
        src = WORKFLOW_ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def archived_revision(contents: Contents) -> str:
    """The first line of provenance/code_revision.txt: the commit the archive was made at, or "unknown"."""
    text = contents.small.get("provenance/code_revision.txt", b"").decode(errors="replace")
    return text.split("\n", 1)[0].strip() or "unknown"


def member_path(dest: Path, rel: str) -> Path:
    """dest/rel for a path read from an archive, refused when it would land outside dest."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or ".." in parts:
        raise ArchiveError(f"{rel!r}: not a path inside the folder it is unpacked into")
    return dest.joinpath(*parts)


def apply_patch(patch: bytes, dest: Path) -> None:
    """`git apply` of code_diff.patch (a `git diff HEAD --binary`: binary hunks, which `patch` cannot apply) in
    dest, made a git repository of its own first: git applies a patch relative to the top of the repository it runs
    in, and dest may lie inside a checkout (a rebuild/ folder in this one)."""
    try:
        if not (dest / ".git").exists():
            subprocess.run(["git", "init", "-q"], cwd=dest, capture_output=True, check=True)
        proc = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=dest, input=patch,
                              capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise ArchiveError(f"{CODE_DIFF} cannot be applied without a working git: {error}") from error
    if proc.returncode != 0:
        raise ArchiveError(f"{CODE_DIFF} does not apply to the code of {WORKFLOW_TAR}: git apply says: "
                           + proc.stderr.decode(errors="replace").strip()[:2000])


def unpack_code(contents: Contents, dest: Path) -> str | None:
    """The archived code in dest: workflow.tar (the committed tree of the archived revision), code_diff.patch
    applied over it (the uncommitted edits of tracked files), untracked/ copied over that (the files git did not
    track): the code that made the results. Returns what was used, for the log; None when the archive holds no
    workflow.tar (made outside a git checkout), writing nothing: the caller says what it does instead."""
    small = contents.small
    if WORKFLOW_TAR not in small:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(small[WORKFLOW_TAR])) as tar:
            tar.extractall(dest, filter="data")  # no absolute paths, no links out of dest
    except (tarfile.TarError, OSError) as error:
        raise ArchiveError(f"{WORKFLOW_TAR} does not unpack: {error}") from error
    used = [f"{WORKFLOW_TAR.split('/')[1]} at {archived_revision(contents)}"]
    if CODE_DIFF in small:
        apply_patch(small[CODE_DIFF], dest)
        used.append(f"{CODE_DIFF.split('/')[1]} applied")
    else:  # the same folder either way: a repository of its own, so git there never answers for an enclosing one
        try:
            subprocess.run(["git", "init", "-q"], cwd=dest, capture_output=True)
        except OSError:
            pass  # no git: nothing to answer for anything
    untracked = sorted(p for p in small if p.startswith(UNTRACKED))
    for name in untracked:
        target = member_path(dest, name[len(UNTRACKED):])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(small[name])
    if untracked:
        used.append(f"{len(untracked)} untracked file(s) over it")
    return ", ".join(used)


def rederive_targets(derived: dict[str, str], archived: set[str]) -> list[str]:
    """The world and the metadata.json of every dataset folder that the archive hashed or holds."""
    folders = {str(PurePosixPath(p).parent) for p in [*derived, *archived] if p.startswith("results/datasets/")}
    targets = [f"{f}/metadata.json" for f in sorted(folders) if len(PurePosixPath(f).parts) == 4]
    return (["results/world/cities.csv"] if any(p.startswith("results/world/") for p in derived) else []) + targets


def compare_derived(workdir: Path, derived: dict[str, str], small: dict[str, bytes]) -> tuple[list[str], int]:
    """Regenerated files against derived.sha256, regenerated JSON against the archived copy."""
    problems, checked = [], 0
    for rel, expected in sorted(derived.items()):
        path = workdir / rel
        if not path.is_file():
            problems.append(f"{rel}: not regenerated")
        elif sha256_file(path) != expected:
            problems.append(f"{rel}: regenerated sha256 differs from the archived hash")
        checked += 1
    derived_json = (p for p in small if p.endswith(".json") and p.startswith(("results/world/", "results/datasets/")))
    for rel in sorted(derived_json):
        path = workdir / rel
        if not path.is_file():
            problems.append(f"{rel}: not regenerated")
            continue
        old, new = without_provenance(small[rel]), without_provenance(path.read_bytes())
        if old != new:
            keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k)) if isinstance(old, dict) else []
            problems.append(f"{rel}: regenerated content differs (keys {keys}; `provenance` not compared)")
        checked += 1
    return problems, checked


def run_rederivation(workdir: Path, targets: list[str], cores: int) -> subprocess.CompletedProcess:
    """Snakemake on the targets in workdir under archived_config.yaml (targets first: --configfile takes every
    following word as another config file)."""
    return subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", str(cores),
                           "--configfile", "archived_config.yaml"], cwd=workdir, capture_output=True, text=True)


def rederive_problems(contents: Contents, cores: int, log=print) -> tuple[list[str], int]:
    """Run the world and dataset rules of the archived code (this checkout's when the archive holds none) under the
    archived config in a temporary folder; compare."""
    if CONFIG not in contents.small or DERIVED not in contents.small:
        return [f"{CONFIG} or {DERIVED} is missing: nothing to re-derive from"], 0
    derived, problems = parse_checksums(contents.small[DERIVED].decode(errors="replace"), DERIVED)
    targets = rederive_targets(derived, set(contents.hashes))
    if problems or not targets:
        return problems, 0
    with tempfile.TemporaryDirectory(prefix="worldrep-verify-") as tmp:
        workdir = Path(tmp)
        try:
            code = unpack_code(contents, workdir)
        except ArchiveError as error:
            return [f"re-derivation: the archived code cannot be rebuilt: {error}"], 0
        if code is None:
            copy_workflow(workdir)
        log(f"re-derivation with {code_note(contents, code)}")
        (workdir / "archived_config.yaml").write_bytes(contents.small[CONFIG])
        proc = run_rederivation(workdir, targets, cores)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            return [f"re-derivation failed: snakemake exited {proc.returncode}:\n{tail}"], 0
        return compare_derived(workdir, derived, contents.small)


def code_note(contents: Contents, code: str | None) -> str:
    """Whose code a re-derivation or a rebuild runs: `unpack_code`'s account of the archived code, or this
    checkout's, named with both revisions when they differ."""
    if code is not None:
        return f"the archived code ({code})"
    note = f"this checkout's code: the archive holds no {WORKFLOW_TAR.split('/')[1]}"
    archived, current = archived_revision(contents), code_revision()[0].split("\n", 1)[0]
    return note + (f" (archived at code revision {archived}, this checkout is at {current})"
                   if archived != current else "")


def verify_archive(path: Path, rederive: bool = True, cores: int = 1, log=print, recompute: bool = False) -> list[str]:
    """Every problem found (empty: the archive checks out). Re-derivation and recomputation run only on an intact
    archive."""
    contents = read_archive(path)
    problems = contents.problems + (manifest_problems(contents) if contents.hashes else [])
    if problems:
        return problems
    log(f"manifest: all {len(contents.hashes) - 1} files match ({contents.top}/{MANIFEST})")
    found, checked = run_record_problems(contents)
    if checked and not found:
        log(f"runs: {checked} run records ({RUNS}/) agree with the archived config")
    problems += found
    if rederive:
        found, checked = rederive_problems(contents, cores, log)
        if not found:
            log(f"re-derivation: {checked} world and dataset files match" if checked
                else "re-derivation: no world or dataset files to re-derive")
        problems += found
    if recompute:
        problems += recompute_problems(path, contents, log)
    return problems


def run_record_problems(contents: Contents) -> tuple[list[str], int]:
    """Each archived run record (provenance/runs/{run}.json) against what the archived config says of that run:
    model, recipe, precision, seed, mixture (`record_mismatches`), or a run it does not plan."""
    records = {m: data for m, data in contents.small.items() if m.startswith(f"{RUNS}/") and m.endswith(".json")}
    if not records:
        return [], 0
    if CONFIG not in contents.small:
        return [f"{CONFIG} is missing: the run records cannot be checked"], 0
    try:
        config = validate_config(yaml.safe_load(contents.small[CONFIG]))
    except ConfigError as error:
        return [f"{CONFIG}: {error}"], 0
    listed = [(member, PurePosixPath(member).stem, json.loads(data)) for member, data in sorted(records.items())]
    return record_mismatches(config, listed, archived=True), len(records)


# ---- unpack: a folder to rebuild in ----------------------------------------------------------------------------
def unpack_archive(path: Path, dest: Path, log=print) -> Path:
    """dest/ with the archived code (`unpack_code`; this checkout's when the archive holds none), dest/results/ with
    the archived results files, dest/provenance/ and dest/MANIFEST.sha256, from an archive that checks out against
    its manifest. The results files get one modification time, later than the code's: written one after another,
    an archived output could otherwise be older than its archived input by a few microseconds, and Snakemake would
    plan to remake it."""
    contents = read_archive(path)
    problems = contents.problems + (manifest_problems(contents) if contents.hashes else [])
    if problems:
        raise ArchiveError(f"{path} does not check out, so nothing was unpacked:\n  " + "\n  ".join(problems))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"{dest} exists and is not an empty folder: unpack into a new one")
    existed = dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {m for m in contents.hashes if m.startswith(("results/", "provenance/")) or m == MANIFEST}
    try:
        code = unpack_code(contents, dest)
        if code is None:
            copy_workflow(dest)
        extract_members(path, wanted, dest)
        stamp = time.time()
        for member in wanted:
            os.utime(dest / member, (stamp, stamp))
    except BaseException:  # (a patch that does not apply, a full disk, ^C) no half-made folder to rebuild in
        shutil.rmtree(dest, ignore_errors=True)
        if existed:
            dest.mkdir()
        raise
    stored = sum(m.startswith("results/") for m in wanted)
    log(f"unpacked {path} into {dest}: {code_note(contents, code)}; {stored} results files in {dest / 'results'}; "
        f"{len(wanted) - stored - 1} files in {dest / 'provenance'}")
    return dest


# ---- recompute: the analysis tables from the archived representations and evaluation table --------------------
@dataclass(frozen=True)
class Job:
    """One job of rules/probes.smk, cka.smk or generalization.smk: its outputs, inputs (paths from the workflow
    root; `checkpoints` are folders) and params, as that rule gives them under a config."""
    rule: str
    outputs: dict[str, str]
    inputs: dict[str, list[str]]
    params: dict

    def input_paths(self) -> list[str]:
        return [p for paths in self.inputs.values() for p in paths]


def recompute_jobs(config: dict) -> list[Job]:
    """The probe, CKA and generalization jobs `snakemake all` plans under `config`, upstream first, with the inputs
    and params their rules give them. The runs and their groups come from worldrep.grid, as the rules' do
    (rules/common.smk); the inputs and params mirror the three rule files: keep them in step.
    `verify --recompute` checks it against Snakemake's record of each archived table when the archive has one."""
    from .config import mixture_families
    from .recipes import Recipes, canonical  # the rules' own sorting of params (rules/common.smk)
    from .grid import (atlantis_runs, cka_families, control_runs, curve_runs, family_runs, main_runs,
                       representation_settings, training_runs)

    families = mixture_families(config)
    pretraining, finetuning = {**families["pretraining"], **families["with_atlantis"]}, families["finetuning.mixes"]
    every_run = training_runs(config)  # architecture variants' runs too: each has its probe job, at its own layer
    runs = main_runs(config)  # the main grid's tables (rules/variants.smk: not recomputed)
    pre, fine = main_runs(config, "pretraining"), main_runs(config, "finetuning")
    cka = cka_families(config)
    curve = curve_runs(config)
    layer, probes, cities = config["representations"]["analysis_layer"], config["probes"], "results/world/cities.csv"

    def final(name):
        return f"results/representations/{name}/final.npz"

    jobs = [Job("probes", {"metrics": f"results/probes/{r.name}.csv", "views": f"results/views/{r.name}.csv.gz"},
                {"final": [final(r.name)], "cities": [cities],
                 "checkpoints": [f"results/representations/{r.name}/checkpoints"] if r.name in curve else []},
                {"seed": probes["seed"], "layer": representation_settings(config, r.variant)["analysis_layer"],
                 "ridge_alphas": probes["ridge_alphas"], "control_seed": probes["control_seed"]})
            for r in every_run]
    if runs:
        jobs.append(Job("probe_table", {"table": "results/probes/probe_metrics.csv"},
                        {"tables": [f"results/probes/{r.name}.csv" for r in runs]},
                        {"runs": [{"run": r.name, "mixture": r.mixture, "kind": r.kind, "seed": r.seed} for r in runs]}))
    atlantis = [r for r in fine if r.name in atlantis_runs(config)]
    controls = control_runs(config)
    if atlantis:
        jobs.append(Job("atlantis_reconstruction", {"errors": "results/probes/atlantis_errors.csv.gz",
                                                    "summary": "results/probes/atlantis_summary.csv"},
                        {"representations": [final(r.name) for r in atlantis],
                         "controls": [final(name) for name in controls], "cities": [cities]},
                        {"runs": [r.name for r in atlantis], "includes_distance": [
                            "distance" in finetuning[r.mixture] for r in atlantis], "controls": controls,
                         "seed": probes["seed"], "n_train": probes["atlantis_train"],
                         "n_baseline": probes["atlantis_baseline"], "layer": layer}))
    for family, variants in cka.items():
        members = family_runs(config, family)
        jobs.append(Job("cka_family", {"pairs": f"results/cka/{family}/pairs.csv",
                                       "matrix": f"results/cka/{family}/matrix.csv"},
                        {"representations": [final(name) for name in members], "cities": [cities]},
                        {"runs": members, "variants": variants,
                         "seeds": {m: [r.seed for r in pre if r.mixture == m] for m in variants},
                         "similarity": config["cka"]}))
    if cka:
        jobs.append(Job("cka_task_count", {"values": "results/cka/task_count.csv",
                                           "summary": "results/cka/task_count_summary.csv"},
                        {"pairs": [f"results/cka/{family}/pairs.csv" for family in cka]},
                        {"task_sets": {f: {m: pretraining[m] for m in variants if not m.endswith("-7")}
                                       for f, variants in cka.items()}}))
    if fine:
        jobs.append(Job("generalization", {key: f"results/generalization/{name}.csv" for key, name in (
            ("ni", "normalized_improvement"), ("ftwb1", "ftwb1_matrix"), ("ftwb2", "ftwb2_matrix"),
            ("deviation", "best_teacher_deviation"), ("deviation_matrix", "deviation_matrix"))},
            {"metrics": ["results/evaluation/metrics.csv"]},
            {"mixes": canonical(finetuning), "base": config["training"]["base"]}))
    if fine and "pt1" in cka:
        jobs.append(Job("cka_vs_generalization", {"points": "results/cka/cka_vs_generalization.csv",
                                                  "fit": "results/cka/cka_vs_generalization_fit.csv"},
                        {"cka": ["results/cka/pt1/matrix.csv"], "ftwb1": ["results/generalization/ftwb1_matrix.csv"]},
                        {"variant_task": {m: pretraining[m][0] for m in cka["pt1"]}, "layer": layer}))
    # Every rule's params end with its code identity (the Snakefile adds it): this checkout's, so a table made by
    # other code shows as a params difference naming the two hashes.
    code = Recipes(config).code
    return [replace(job, params={**job.params, "code": code(f"scripts/{SCRIPTS.get(job.rule, job.rule)}.py")})
            for job in jobs]


# The script of each recomputed rule, where its name is not the rule's.
SCRIPTS = {"probe_table": "run_table"}


def is_analysis_table(path: str) -> bool:
    """A probe, view, CKA or generalization table: the main grid's, or an architecture variant's (results/variants/
    {variant}/probes/...) or an experiment's (results/experiments/{name}/...), not recomputed yet: listed as such."""
    parts = PurePosixPath(path).parts
    if len(parts) >= 4 and parts[:2] == ("results", "experiments"):  # experiments' tables, not yet recomputed either
        return parts[3] != "figures" and path.endswith((".csv", ".csv.gz"))
    if len(parts) >= 4 and parts[:2] == ("results", "variants"):
        return parts[3] in ANALYSIS_STAGES or parts[3] == "cka_vs_default.csv"
    return len(parts) > 2 and parts[0] == "results" and parts[1] in ANALYSIS_STAGES


def has_checkpoints(folder: str, members) -> bool:
    return any(m.startswith(f"{folder}/step-") and m.endswith(".npz") for m in members)


def job_inputs(job: Job, members, made: set[str], produced: set[str]) -> tuple[list[str], list[str]]:
    """(missing, as_archived) inputs of a job: those neither in the archive nor recomputed upstream (`made`), and
    the outputs of other jobs it must take from the archive because they were not recomputed."""
    missing, as_archived = [], []
    for key, paths in job.inputs.items():
        for path in paths:
            if path in made:
                continue
            if key == "checkpoints":
                if not has_checkpoints(path, members):
                    missing.append(f"{path}/step-*.npz")
            elif path not in members:
                missing.append(path)
            elif path in produced:
                as_archived.append(path)
    return missing, as_archived


def shortened(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def cannot_reason(missing: list[str]) -> str:
    big = any(is_big_array(PurePosixPath(p).relative_to("results")) for p in missing)
    return f"needs {shortened(missing)}, not in the archive" + (
        " (representations are archived with --all only)" if big else "")


def recompute_statement(config: dict, members: set[str]) -> dict:
    """provenance/recompute.json: which archived analysis tables `verify --recompute` can recompute, from what,
    and why the others cannot be."""
    jobs = recompute_jobs(config)
    produced = {p for job in jobs for p in job.outputs.values()}
    made, recomputable, not_recomputable = set(), {}, {}
    for job in jobs:
        missing, as_archived = job_inputs(job, members, made, produced)
        if not missing:
            made |= set(job.outputs.values())
        for path in job.outputs.values():
            if path not in members:
                continue
            if missing:
                not_recomputable[path] = cannot_reason(missing)
            else:
                recomputable[path] = {"rule": job.rule, "inputs": job.input_paths(), "inputs_as_archived": as_archived}
    for path in sorted(members):
        if is_analysis_table(path) and path not in produced:
            not_recomputable[path] = ("an architecture variant's table (rules/variants.smk): not recomputed yet"
                                      if path.startswith("results/variants/") else
                                      "an experiment's table (rules/{subspace,noise,gradients,scale}.smk): "
                                      "not recomputed yet" if path.startswith("results/experiments/") else
                                      "not a table the archived config's probe, CKA or generalization rules make")
    return {"about": "the analysis tables `python -m worldrep.archive verify --recompute` recomputes from the "
                     "archived inputs under the archived config (inputs_as_archived: upstream tables it cannot "
                     "recompute itself, taken as archived), and those it cannot",
            "tolerance": {"rtol": RTOL, "atol": ATOL, "views_rtol": VIEWS_RTOL},
            "recomputable": dict(sorted(recomputable.items())), "not_recomputable": dict(sorted(not_recomputable.items()))}


CSV_OPTIONS = {"views": {"float_format": "%.6g", "compression": {"method": "gzip", "mtime": 0}},
               "errors": {"compression": {"method": "gzip", "mtime": 0}}}  # as the scripts write them; else plain


# What reading a damaged table or representation file, or a library check on odd inputs, raises (pandas' parser
# errors are ValueErrors; a damaged .npz raises BadZipFile, a damaged .gz OSError, EOFError or zlib.error).
TABLE_ERRORS = (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def table_bytes(table, key: str) -> bytes:
    buffer = io.BytesIO()
    table.to_csv(buffer, index=False, **CSV_OPTIONS.get(key, {}))
    return buffer.getvalue()


def run_job(job: Job, path_of) -> dict:
    """The output tables (key -> DataFrame) of one job, computed in-process by the library functions its script
    calls; `path_of(path)` is where an input is read from."""
    import pandas as pd

    from . import cka, generalization, probes
    from .representations import load_representations
    from .world import read_cities

    p, inputs = job.params, job.inputs
    if job.rule == "probes":
        cities = read_cities(path_of(inputs["cities"][0])).set_index("city_id")
        sources = [("final", path_of(inputs["final"][0])),
                   *probes.checkpoint_sources([path_of(d) for d in inputs["checkpoints"]])]
        metrics, views = probes.probe_tables(cities, sources, p["seed"], p["layer"], load_representations,
                                             p["ridge_alphas"], p["control_seed"])
        return {"metrics": metrics, "views": views}
    if job.rule == "probe_table":  # scripts/run_table.py: every run's rows, the run's columns first
        tables = [pd.read_csv(path_of(path)).assign(**run) for run, path in zip(p["runs"], inputs["tables"])]
        table = pd.concat(tables, ignore_index=True)
        columns = ["run", "mixture", "kind", "seed"]
        return {"table": table[columns + [c for c in table.columns if c not in columns]]}
    if job.rule == "atlantis_reconstruction":
        cities = read_cities(path_of(inputs["cities"][0])).set_index("city_id")
        errors, summary = probes.atlantis_tables(
            cities, [(run, path_of(f)) for run, f in zip(p["runs"], inputs["representations"])], p["includes_distance"],
            [(run, path_of(f)) for run, f in zip(p["controls"], inputs["controls"])], p["seed"], p["n_train"],
            p["n_baseline"], p["layer"], load_representations)
        return {"errors": errors, "summary": summary}
    if job.rule == "cka_family":
        cities = read_cities(path_of(inputs["cities"][0]))
        pairs, matrix = cka.family_tables(p["runs"], [path_of(f) for f in inputs["representations"]], p["variants"],
                                          p["seeds"], set(cities.loc[cities.is_atlantis, "city_id"]),
                                          load_representations, PurePosixPath(job.outputs["pairs"]).parent.name,
                                          p["similarity"])
        return {"pairs": pairs, "matrix": matrix}
    if job.rule == "cka_task_count":
        pairs = {PurePosixPath(f).parent.name: pd.read_csv(path_of(f)) for f in inputs["pairs"]}
        values, summary = cka.task_count_tables(pairs, p["task_sets"])
        return {"values": values, "summary": summary}
    if job.rule == "generalization":
        return generalization.generalization_tables(pd.read_csv(path_of(inputs["metrics"][0])), p["mixes"], p["base"])
    if job.rule == "cka_vs_generalization":
        points, fit = cka.cka_vs_generalization_tables(pd.read_csv(path_of(inputs["cka"][0])),
                                                       pd.read_csv(path_of(inputs["ftwb1"][0])),
                                                       p["variant_task"], p["layer"])
        return {"points": points, "fit": fit}
    raise ValueError(f"no recomputation for rule {job.rule}")


def read_table(data: bytes, name: str):
    import pandas as pd

    return pd.read_csv(io.BytesIO(data), compression="gzip" if name.endswith(".gz") else None)


def compare_tables(name: str, archived: bytes, recomputed: bytes, rtol: float = RTOL,
                   atol: float = ATOL) -> tuple[bool, str]:
    """(same, detail): the archived table against the recomputed one, parsed alike. Same columns and rows, float
    cells within |a - b| <= atol + rtol |b| (NaN equals NaN), every other cell exactly."""
    import numpy as np
    from pandas.api import types

    try:
        if archived == recomputed or name.endswith(".gz") and gzip.decompress(archived) == gzip.decompress(recomputed):
            return True, "identical"  # (a gzip header may hold the file name the job wrote through)
        a = read_table(archived, name)
    except TABLE_ERRORS as error:  # a tampered file need not be a CSV at all
        return False, f"the archived file does not read as a table ({type(error).__name__}: {error})"
    b = read_table(recomputed, name)
    if list(a.columns) != list(b.columns):
        return False, f"columns differ: archived {list(a.columns)}, recomputed {list(b.columns)}"
    if len(a) != len(b):
        return False, f"{len(a)} rows archived, {len(b)} recomputed"
    found, largest = [], 0.0
    keys = [c for c in a.columns if not types.is_float_dtype(a[c])]
    for column in a.columns:
        x, y = a[column], b[column]
        numeric = all(types.is_numeric_dtype(v) and not types.is_bool_dtype(v) for v in (x, y))
        if numeric:
            xf, yf = x.to_numpy(np.float64), y.to_numpy(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.abs(xf - yf)
                if types.is_integer_dtype(x) and types.is_integer_dtype(y):
                    bad = x.to_numpy() != y.to_numpy()
                else:
                    bad = ~(np.isclose(xf, yf, rtol=rtol, atol=atol) | (np.isnan(xf) & np.isnan(yf)))
            finite = np.isfinite(diff)
            largest = max(largest, float(diff[finite].max()) if finite.any() else 0.0)
        else:
            bad = (x.astype(str).where(x.notna(), "<empty>") != y.astype(str).where(y.notna(), "<empty>")).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            key = ", ".join(f"{k}={a[k].iloc[row]}" for k in keys if k != column)[:160]
            va, vb = (v.item() if hasattr(v, "item") else v for v in (x.iloc[row], y.iloc[row]))  # numpy -> Python
            found.append(f"column {column}: {int(bad.sum())} of {len(bad)} cells differ, first on line {row + 2}"
                         f"{f' ({key})' if key else ''}: archived {va!r}, recomputed {vb!r}")
    if found:
        return False, "; ".join(found[:5]) + (f"; and {len(found) - 5} more columns" if len(found) > 5 else "") \
            + f"; max abs diff {largest:.3g}"
    return True, f"within tolerance (rtol {rtol:g}, atol {atol:g}); max abs diff {largest:.3g}"


def extract_members(path: Path, wanted: set[str], dest: Path) -> None:
    """Copy the archive's members `wanted` (paths below its top folder) to the same paths under dest."""
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            rel = member.name.partition("/")[2]
            parts = PurePosixPath(rel).parts
            if rel not in wanted or not member.isfile() or ".." in parts or rel.startswith("/"):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)


def record_problems(job: Job, records: dict) -> list[str]:
    """The job against Snakemake's record of the archived output (provenance/snakemake.json): the same params
    (Snakemake stores their sorted reprs) and the same results inputs. A mismatch means this module's mirror of
    the rules differs from the rules that made the table; each side's entries the other lacks are named."""
    path = next((p for p in job.outputs.values() if p in records), None)
    if path is None:
        return []
    record, problems = records[path], []
    for what, recorded, ours in (
            ("params", record.get("params"), sorted(repr(v) for v in job.params.values())),
            ("inputs", [p for p in record.get("input") or [] if p.startswith("results/")], job.input_paths())):
        if isinstance(recorded, list) and sorted(recorded) != sorted(ours):
            only_recorded = [v[:200] for v in sorted(set(recorded) - set(ours))]
            only_ours = [v[:200] for v in sorted(set(ours) - set(recorded))]
            code = any(re.fullmatch(r"'[0-9a-f]{16}'", v) for v in only_recorded + only_ours)
            problems.append(f"{path}: Snakemake recorded the {what} {only_recorded} for rule {job.rule}, where the "
                            f"recomputation has {only_ours}" + (" (the 16 hex digits are the rule's code hash: this "
                                                                "checkout runs other code than the one that made the "
                                                                "table)" if code else ""))
    return problems


def recompute_problems(path: Path, contents: Contents, log=print) -> list[str]:
    """Recompute every archived analysis table the archived inputs allow, under the archived config, in-process;
    compare each with the archived copy. Logs one line per table; returns the differences and failures."""
    if CONFIG not in contents.small:
        return [f"{CONFIG} is missing: nothing to recompute under"]
    try:
        config = validate_config(yaml.safe_load(contents.small[CONFIG]))
    except (ConfigError, yaml.YAMLError) as error:
        return [f"{CONFIG} does not validate with this checkout, so nothing is recomputed: {error}"]
    members = set(contents.hashes)
    statement = recompute_statement(config, members)
    problems = []
    if RECOMPUTE in contents.small:
        stated = json.loads(contents.small[RECOMPUTE]).get("recomputable", {})
        problems += [f"{p}: {RECOMPUTE} states it recomputable, but {statement['not_recomputable'].get(p, 'it is not')}"
                     for p in sorted(set(stated) - set(statement["recomputable"]))]
    else:
        log(f"recompute: the archive has no {RECOMPUTE} (made before --recompute existed); recomputing what its "
            "config plans")
    try:
        records = json.loads(contents.small.get("provenance/snakemake.json", b"{}")).get("records") or {}
    except ValueError:
        records = {}
    jobs = recompute_jobs(config)
    produced = {p for job in jobs for p in job.outputs.values()}
    needed = {p for job in jobs for p in job.input_paths()}
    counts = {"ok": 0, "differs": 0, "failed": 0, "cannot": 0}
    checked_records = 0
    with tempfile.TemporaryDirectory(prefix="worldrep-recompute-") as tmp:
        archived, recomputed = Path(tmp) / "archived", Path(tmp) / "recomputed"
        wanted = {m for m in members if is_analysis_table(m) or m in needed
                  or any(m.startswith(f"{p}/") for p in needed)}
        extract_members(path, wanted, archived)
        made: set[str] = set()
        for job in jobs:
            outputs = [p for p in job.outputs.values() if p in members]
            if not outputs and not any(p in needed for p in job.outputs.values()):
                continue
            # Whether or not it can run here, the job must be the one Snakemake ran: this guards recompute_jobs'
            # copy of rules/common.smk against drifting from it.
            if disagree := record_problems(job, records):
                for problem in disagree:
                    log(f"recompute: RECORD   {problem}")
                problems += disagree
            checked_records += any(p in records for p in job.outputs.values())
            missing, as_archived = job_inputs(job, members, made, produced)
            if missing:
                for output in outputs:
                    log(f"recompute: cannot   {output}: {cannot_reason(missing)}")
                counts["cannot"] += len(outputs)
                continue
            try:
                with warnings.catch_warnings():  # (NaN cells of one-seed families warn, as in the jobs' logs)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    tables = run_job(job, lambda p: recomputed / p if p in made else archived / p)
            except TABLE_ERRORS as error:  # a library check that fails on these inputs: name the job, go on
                for output in outputs:
                    log(f"recompute: FAILED   {output}: rule {job.rule} raised {type(error).__name__}: {error}")
                    problems.append(f"{output}: recomputing it (rule {job.rule}) failed: {type(error).__name__}: {error}")
                counts["failed"] += len(outputs)
                continue
            for key, output in job.outputs.items():
                data = table_bytes(tables[key], key)
                (recomputed / output).parent.mkdir(parents=True, exist_ok=True)
                (recomputed / output).write_bytes(data)
                made.add(output)
                if output not in members:
                    continue
                same, detail = compare_tables(output, (archived / output).read_bytes(), data,
                                              VIEWS_RTOL if key == "views" else RTOL)
                note = f" (from the archived {shortened(as_archived)}, not recomputed)" if as_archived else ""
                log(f"recompute: {'ok      ' if same else 'DIFFERS '} {output}: {detail}{note}")
                counts["ok" if same else "differs"] += 1
                if not same:
                    problems.append(f"{output}: the recomputed table differs: {detail}")
    for output, reason in statement["not_recomputable"].items():
        if output not in produced:
            log(f"recompute: cannot   {output}: {reason}")
            counts["cannot"] += 1
    if checked_records:
        log(f"recompute: the recomputation's params and inputs checked against Snakemake's records of {checked_records} "
            "jobs (provenance/snakemake.json)")
    failed = f", {counts['failed']} failed" if counts["failed"] else ""
    log(f"recompute: {counts['ok']} tables match, {counts['differs']} differ{failed}, {counts['cannot']} cannot be "
        "recomputed from this archive")
    return problems


# ---- command line ----------------------------------------------------------------------------------------
# The rebuild recipe: the docstring's last part, shown by --help (the README quotes it; a test runs it).
REBUILD = __doc__[__doc__.index("Rebuild from an archive"):].rstrip() + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m worldrep.archive", description=__doc__.split("\n\n")[0],
                                     epilog=REBUILD, formatter_class=raw)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write {out}/{name}.tar.gz")
    create.add_argument("--name", required=True)
    create.add_argument("--results", type=Path, default=Path("results"))
    create.add_argument("--config", type=Path, nargs="+", default=[Path("config/config.yaml")],
                        help="the config files the results were made with: a base, then its overlays, in the order "
                             "snakemake's --configfile was given them (default: config/config.yaml)")
    create.add_argument("--with-models", action="store_true", help="include results/models (checkpoints)")
    create.add_argument("--all", action="store_true", dest="include_all",
                        help="include the big arrays too (dataset and mixture splits, representations)")
    create.add_argument("--out", type=Path, help="default: {results}/archive")
    verify = commands.add_parser("verify", help="check an archive against its manifest and re-derive")
    verify.add_argument("archive", type=Path)
    verify.add_argument("--rederive", action=argparse.BooleanOptionalAction, default=True,
                        help="rerun the world and dataset rules under the archived config (default: on)")
    verify.add_argument("--recompute", action="store_true",
                        help="recompute the probe, CKA and generalization tables from the archived representations "
                             "and evaluation table under the archived config, in-process, and compare")
    verify.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    unpack = commands.add_parser("unpack", help="a folder to rebuild in: the archived code, results and provenance",
                                 epilog=REBUILD, formatter_class=raw)
    unpack.add_argument("archive", type=Path)
    unpack.add_argument("dest", type=Path, help="a new (or empty) folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "create":
        try:
            create_archive(args.name, args.results, args.config, args.out or args.results / "archive",
                           args.with_models, args.include_all)
        except (ArchiveError, ValueError, OSError, yaml.YAMLError) as error:
            print(f"archive create failed: {error}", file=sys.stderr)
            return 1
        return 0
    if args.command == "unpack":
        try:
            unpack_archive(args.archive, args.dest)
        except (ArchiveError, OSError) as error:
            print(f"archive unpack failed: {error}", file=sys.stderr)
            return 1
        return 0
    problems = verify_archive(args.archive, args.rederive, args.cores, recompute=args.recompute)
    if problems:
        print(f"FAILED: {args.archive}: {len(problems)} problem(s)", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 1
    print(f"OK: {args.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
