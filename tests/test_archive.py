"""The run archive: what goes in (several config files too), deterministic bytes, the manifest check naming each bad
file, the refusal of results another config made (world, datasets, every run's run.json), the re-derivation of
world and datasets from the archived config with the archived code (on a real tiny workflow run), and the rebuild
recipe (`unpack`, then `verify` and `snakemake` in the unpacked folder, on a real smoke run)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
import yaml

from worldrep import archive
from worldrep.archive import ArchiveError, create_archive, is_archived, main, verify_archive

from test_workflow import planned  # the parser of `snakemake -n` job blocks

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "smoke.yaml"
ALPHAS = [0.01, 1, 100]  # the analysed fixture's probes.ridge_alphas and cka block
SIMILARITY = {"knn_k": 5}
FIXED_PROVENANCE = {"provenance/code_revision.txt": b"test\n"}  # the configs are `create`'s own members


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A results tree with one file of every kind the selection rules treat differently."""
    smoke = yaml.safe_load(SMOKE.read_text())
    r = tmp_path / "wf" / "results"
    write(r / "world/cities.csv", "city_id,name\n1000,A\n")
    write(r / "datasets/pretraining/distance/train.npz", b"\x00big array")
    write(r / "datasets/pretraining/distance/train.txt", "<bos> d i s t <eos>\n")
    write(r / "datasets/pretraining/distance/metadata.json", json.dumps(
        {"params": {"sizes": smoke["datasets"]["pretraining"], "seed": smoke["datasets"]["seed"]},
         "provenance": {"code_revision": "x"}}))
    write(r / "mixtures/pt1-1/train.npz", b"mixture")
    write(r / "mixtures/pt1-1/metadata.json", "{}")
    write(r / "representations/pt1-1_s42/final.npz", b"reps")
    write(r / "evaluation/metrics.csv", "run,metric,value\npt1-1_s42,mae,3.5\n")
    write(r / "evaluation/pt1-1_s42/predictions.csv.gz", gzip.compress(b"a,b\n1,2\n", mtime=0))
    write(r / "evaluation/pt1-1_s42/metrics.csv.partial", "half written")
    write(r / "figures/probe_r2.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    write(r / "figures/probe_r2.pdf", b"%PDF-1.4 fake")
    write(r / "report.html", "<html>report</html>")
    write(r / "models/pt1-1_s42/final/model.safetensors", b"weights")
    write(r / "models/pt1-1_s42/training_log.csv", "step,loss\n10,2.0\n")
    write(r / "models/pt1-1_s42/in_progress/state.pt", b"resume state")
    write(r / "store/0123456789abcdef/final/model.safetensors", b"weights")  # the training cache: never archived
    write(r / "archive/older.tar.gz", b"an older archive")
    # Snakemake's record of one output, stored the way Snakemake names it.
    record = archive.base64.urlsafe_b64encode(b"results/evaluation/metrics.csv").decode()
    write(tmp_path / "wf/.snakemake/metadata" / record, json.dumps({"rule": "evaluation_table"}))
    write(tmp_path / "wf/.snakemake/log/2026-01-01T000000.000000.snakemake.log", "first")
    write(tmp_path / "wf/.snakemake/log/2026-01-02T000000.000000.snakemake.log", "latest")
    return tmp_path / "wf"


def make(workdir: Path, out: Path | None = None, name: str = "run1", **flags) -> Path:
    return create_archive(name, workdir / "results", SMOKE, out or workdir / "results/archive",
                          provenance=FIXED_PROVENANCE, log=lambda _: None, **flags)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def rewrite(path: Path, edit) -> None:
    """Rewrite an archive with plain tarfile after `edit(dict name -> bytes)`: a tamperer's tool, not ours."""
    files = members(path)
    edit(files)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def result_paths(path: Path) -> set[str]:
    return {n.split("/", 1)[1] for n in members(path) if n.split("/", 1)[1].startswith("results/")}


@pytest.mark.parametrize("rel, default, models, everything", [
    ("evaluation/metrics.csv", True, True, True),
    ("figures/probe_r2.png", True, True, True),
    ("datasets/pretraining/distance/metadata.json", True, True, True),
    ("datasets/pretraining/distance/train.npz", False, False, True),
    ("datasets/pretraining/distance/test.txt", False, False, True),
    ("mixtures/pt7/train.npz", False, False, True),
    ("mixtures/pt7/metadata.json", True, True, True),
    ("representations/pt7_s42/final.npz", False, False, True),
    ("models/pt7_s42/final/model.safetensors", False, True, False),
    ("models/pt7_s42/in_progress/state.pt", False, False, False),
    ("store/0123456789abcdef/final/model.safetensors", False, False, False),
    ("store/0123456789abcdef.work/state.pt", False, False, False),
    ("evaluation/pt7_s42/metrics.csv.partial", False, False, False),
    ("archive/old.tar.gz", False, False, False),
])
def test_selection_rules(rel, default, models, everything):
    rel = PurePosixPath(rel)
    assert is_archived(rel) is default
    assert is_archived(rel, with_models=True) is models
    assert is_archived(rel, include_all=True) is everything


def test_create_then_verify(workdir, capsys):
    """Through the command line, with the real provenance collected."""
    out = workdir / "results" / "archive"
    assert main(["create", "--name", "run1", "--results", str(workdir / "results"), "--config", str(SMOKE)]) == 0
    path = out / "run1.tar.gz"
    files = members(path)
    assert list(files)[-1] == "run1/MANIFEST.sha256"
    assert result_paths(path) == {
        "results/world/cities.csv", "results/datasets/pretraining/distance/metadata.json",
        "results/mixtures/pt1-1/metadata.json", "results/evaluation/metrics.csv",
        "results/evaluation/pt1-1_s42/predictions.csv.gz", "results/figures/probe_r2.png",
        "results/figures/probe_r2.pdf", "results/report.html"}
    # One config file: config.yaml is its bytes (comments kept), and its numbered copy is listed.
    assert files["run1/provenance/config.yaml"] == files["run1/provenance/configs/01-smoke.yaml"] == SMOKE.read_bytes()
    assert json.loads(files["run1/provenance/archive.json"])["configs"] == [
        {"file": str(SMOKE), "copy": "provenance/configs/01-smoke.yaml"}]
    revision = files["run1/provenance/code_revision.txt"].decode()
    assert revision.split("\n")[0] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                                     text=True).stdout.strip() or revision == "unknown\n"
    assert b"snakemake==" in files["run1/provenance/pip_freeze.txt"].lower()
    hardware = json.loads(files["run1/provenance/hardware.json"])
    assert hardware["cpu_count"] == os.cpu_count() and "torch" in hardware
    snake = json.loads(files["run1/provenance/snakemake.json"])
    assert snake["records"] == {"results/evaluation/metrics.csv": {"rule": "evaluation_table"}}
    assert snake["latest_log"]["content"] == "latest"
    # The big arrays are not stored but their hashes are, for re-derivation; JSON is compared as content.
    derived = files["run1/provenance/derived.sha256"].decode()
    npz = workdir / "results/datasets/pretraining/distance/train.npz"
    npz_line = f"{hashlib.sha256(npz.read_bytes()).hexdigest()}  results/datasets/pretraining/distance/train.npz\n"
    assert npz_line in derived
    assert "results/world/cities.csv" in derived and ".json" not in derived
    manifest = files["run1/MANIFEST.sha256"].decode().splitlines()
    names = [line.split("  ", 1)[1] for line in manifest]
    assert names == sorted(names) and len(names) == len(files) - 1
    for line in manifest:
        digest, name = line.split("  ")
        assert hashlib.sha256(files[f"run1/{name}"]).hexdigest() == digest
    assert not list(out.glob("*.partial"))
    capsys.readouterr()
    assert main(["verify", str(path), "--no-rederive"]) == 0
    assert "OK" in capsys.readouterr().out


def test_hardware_without_torch_and_with_nvidia_smi(monkeypatch):
    """The GPU branch on a CPU machine: nvidia-smi answers through a stand-in, torch is made unimportable."""
    def fake_run(args, cwd=None):
        if args[0] != "nvidia-smi":
            return None
        return "0, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB, 9.0\n" if "--query-gpu" in args[1] else "DRIVER 550\n"

    monkeypatch.setattr(archive, "run_text", fake_run)
    monkeypatch.setitem(sys.modules, "torch", None)
    info = archive.hardware_info()
    assert info["nvidia_smi"] == {"gpus": ["0, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB, 9.0"], "version": "DRIVER 550"}
    assert info["torch"] is None and info["cpu_count"] == os.cpu_count()
    json.dumps(info)


def test_manifest_checks_with_sha256sum(workdir, tmp_path):
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum")
    with tarfile.open(make(workdir), "r:gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"], cwd=tmp_path / "x/run1",
                   check=True)


def test_same_inputs_give_the_same_bytes(workdir, tmp_path):
    first = make(workdir, tmp_path / "a").read_bytes()
    for path in (workdir / "results").rglob("*"):
        os.utime(path, (1e9, 1e9))  # new timestamps, same content
    second = make(workdir, tmp_path / "b").read_bytes()
    assert first == second
    assert first[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(tmp_path / "a/run1.tar.gz", "r:gz") as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar} == {(0, 0, 0, "", "", 0o644)}
    write(workdir / "results/report.html", "<html>report!</html>")
    assert make(workdir, tmp_path / "c").read_bytes() != first


def test_models_only_with_the_flag_and_work_folders_never(workdir):
    models = {"results/models/pt1-1_s42/final/model.safetensors", "results/models/pt1-1_s42/training_log.csv"}
    assert not result_paths(make(workdir)) & models
    with_models = result_paths(make(workdir, with_models=True))
    assert models <= with_models
    assert not any("in_progress" in p or p.endswith(".partial") or "/archive/" in p for p in with_models)
    assert verify_archive(make(workdir, with_models=True), rederive=False, log=lambda _: None) == []


def test_all_flag_stores_the_big_arrays(workdir):
    stored = result_paths(make(workdir, include_all=True))
    assert {"results/datasets/pretraining/distance/train.npz", "results/mixtures/pt1-1/train.npz",
            "results/representations/pt1-1_s42/final.npz"} <= stored
    assert not any(p.startswith("results/models/") for p in stored)


def flip_one_byte(files: dict[str, bytes]) -> None:
    name = "run1/results/figures/probe_r2.png"
    data = bytearray(files[name])
    data[20] ^= 1
    files[name] = bytes(data)


@pytest.mark.parametrize("edit, expected", [
    (flip_one_byte, "results/figures/probe_r2.png: sha256 differs from the manifest"),
    (lambda f: f.pop("run1/results/evaluation/metrics.csv"),
     "results/evaluation/metrics.csv: listed in the manifest but missing from the archive"),
    (lambda f: f.update({"run1/results/figures/extra.png": b"smuggled"}),
     "results/figures/extra.png: in the archive but not in the manifest"),
    (lambda f: f.pop("run1/MANIFEST.sha256"), "MANIFEST.sha256 is missing from the archive"),
])
def test_verify_names_the_bad_file(workdir, edit, expected, capsys):
    path = make(workdir)
    rewrite(path, edit)
    assert verify_archive(path, rederive=False, log=lambda _: None) == [expected]
    assert main(["verify", str(path), "--no-rederive"]) == 1
    assert expected in capsys.readouterr().err


def test_untouched_rewrite_still_verifies(workdir):
    """The tampering tests' rewrite alone (other tar flavour, directory-free) breaks nothing."""
    path = make(workdir)
    rewrite(path, lambda f: None)
    assert verify_archive(path, rederive=False, log=lambda _: None) == []


def test_a_broken_file_is_reported_not_raised(workdir):
    path = make(workdir)
    path.write_bytes(path.read_bytes()[:200])
    problems = verify_archive(path, rederive=False, log=lambda _: None)
    assert len(problems) == 1 and "not a readable .tar.gz" in problems[0]


def test_create_refuses_results_of_another_config(workdir):
    meta = workdir / "results/datasets/pretraining/distance/metadata.json"
    obj = json.loads(meta.read_text())
    obj["params"]["seed"] += 1
    meta.write_text(json.dumps(obj))
    with pytest.raises(ArchiveError, match="pretraining/distance/metadata.json"):
        make(workdir)
    with pytest.raises(ArchiveError, match="archive name"):
        make(workdir, name="../escape")


# ---- several config files; every run's run.json against the config ----------------------------------------------
def run_json(config: dict, run, **changes) -> dict:
    """The fields of results/models/{run}/final/run.json the checks read, as scripts/train.py writes them on a CPU."""
    from worldrep.grid import training_mixture
    from worldrep.recipes import training_params

    params = training_params(config, run)
    return {"run": run.name, "model": params["model"], "recipe": {**params["recipe"], "precision": "fp32"},
            "seed": params["seed"], "mixture": training_mixture(config, run), **changes}


def test_run_json_differences_names_each_key():
    from worldrep.grid import training_runs
    from worldrep.store import run_json_differences

    config = yaml.safe_load(SMOKE.read_text())
    run = next(r for r in training_runs(config) if r.name == "ftwb2-13_s42")
    meta = run_json(config, run)
    assert run_json_differences(config, run, meta) == []
    assert run_json_differences(config, run, {**meta, "recipe": {**meta["recipe"], "precision": "fp16"}}) == []  # cuda
    assert run_json_differences(config, run, {**meta, "recipe": {**meta["recipe"], "precision": "bf16"}}) == [
        "precision"]
    assert run_json_differences(config, run, {**meta, "recipe": {**meta["recipe"], "peak_lr": 1.0}}) == ["recipe"]
    assert run_json_differences(config, run, {**meta, "model": {**meta["model"], "hidden_size": 64}, "seed": 1,
                                              "mixture": "ftwb1-1"}) == ["model", "seed", "mixture"]
    assert run_json_differences(config, run, {}) == ["model", "recipe", "precision", "seed", "mixture"]


def test_create_checks_every_run_json(workdir, tmp_path):
    """A run.json that agrees passes; one trained under another peak lr is named with `recipe`; one of a run the
    config does not plan is named too."""
    from worldrep.grid import training_runs

    config = yaml.safe_load(SMOKE.read_text())
    runs = {r.name: r for r in training_runs(config)}
    for name in ("pt1-1_s42", "ftwb1-1_s42"):
        write(workdir / f"results/models/{name}/final/run.json", json.dumps(run_json(config, runs[name])))
    make(workdir)
    edited = yaml.safe_load(SMOKE.read_text())
    edited["training"]["pretraining"]["peak_lr"] = 1.0e-3  # edited after the runs were trained
    write(tmp_path / "edited.yaml", yaml.safe_dump(edited))
    with pytest.raises(ArchiveError) as refused:
        create_archive("run1", workdir / "results", tmp_path / "edited.yaml", tmp_path / "out",
                       provenance=FIXED_PROVENANCE, log=lambda _: None)
    assert str(refused.value).splitlines()[1:] == [
        f"  {workdir / 'results/models/pt1-1_s42/final/run.json'}: run pt1-1_s42 was trained with another recipe "
        "than the config says"]  # the fine-tuning run's recipe has the fine-tuning peak lr: it agrees
    write(workdir / "results/models/pt9_s42/final/run.json", json.dumps(run_json(config, runs["pt1-1_s42"])))
    with pytest.raises(ArchiveError, match=r"pt9_s42/final/run.json: run pt9_s42 is not planned by this config"):
        make(workdir)


def test_several_config_files_are_recorded_in_order(workdir, tmp_path, capsys):
    """A base and an overlay, merged as `snakemake --configfile A B` merges them: each file's bytes, numbered in order,
    and their merge as the one config.yaml the rest reads. An overlay alone is refused, naming the fix."""
    from worldrep.grid import load_config

    overlay = write(tmp_path / "other.yaml", "name: other  # changes no output\n")
    results = workdir / "results"
    assert main(["create", "--name", "two", "--results", str(results), "--config", str(SMOKE), str(overlay),
                 "--out", str(tmp_path / "out")]) == 0
    files = members(tmp_path / "out/two.tar.gz")
    assert files["two/provenance/configs/01-smoke.yaml"] == SMOKE.read_bytes()
    assert files["two/provenance/configs/02-other.yaml"] == overlay.read_bytes()
    merged = yaml.safe_load(files["two/provenance/config.yaml"])
    assert merged == load_config([SMOKE, overlay]) and merged["name"] == "other"
    assert list(merged) == list(yaml.safe_load(SMOKE.read_text()))  # the base's key order: it reads like the base
    assert files["two/provenance/config.yaml"].decode().startswith(
        "# The merge of these config files, in order (as `snakemake --configfile A B` merges them):\n"
        "#   provenance/configs/01-smoke.yaml\n#   provenance/configs/02-other.yaml\n")
    assert json.loads(files["two/provenance/archive.json"])["configs"] == [
        {"file": str(SMOKE), "copy": "provenance/configs/01-smoke.yaml"},
        {"file": str(overlay), "copy": "provenance/configs/02-other.yaml"}]
    assert verify_archive(tmp_path / "out/two.tar.gz", rederive=False, log=lambda _: None) == []
    capsys.readouterr()
    assert main(["create", "--name", "alone", "--results", str(results), "--config", str(overlay)]) == 1
    assert "an overlay changes a base config and cannot run alone" in capsys.readouterr().err


# ---- the archived code: verify re-derives with it, unpack writes it --------------------------------------------
def git_repo(root: Path, files: dict[str, str | bytes]) -> Path:
    """A git repository with `files` committed."""
    for rel, data in files.items():
        write(root / rel, data)
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def head(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout with a committed tree, uncommitted edits of a text and a binary file, and a file git does not track."""
    root = git_repo(tmp_path / "checkout", {"Snakefile": "# committed\n", "worldrep/world.py": "SEED = 1\n",
                                            "worldrep/blob.bin": bytes(range(256)), "notes.txt": "kept\n"})
    write(root / "worldrep/world.py", "SEED = 2  # uncommitted\n")
    write(root / "worldrep/blob.bin", bytes(reversed(range(256))))
    write(root / "rules/new.smk", "# not yet committed\n")
    return root


def test_unpack_code_rebuilds_the_checkout(checkout, tmp_path):
    """workflow.tar, then code_diff.patch (a binary hunk too), then untracked/: the checkout's files, byte for byte."""
    contents = archive.Contents("x", {}, archive.code_members(checkout), [])
    dest = tmp_path / "dest"
    assert archive.unpack_code(contents, dest) == (
        f"workflow.tar at {head(checkout)}, code_diff.patch applied, 1 untracked file(s) over it")
    for rel in ("Snakefile", "worldrep/world.py", "worldrep/blob.bin", "rules/new.smk", "notes.txt"):
        assert (dest / rel).read_bytes() == (checkout / rel).read_bytes(), rel
    # A repository of its own, so that git there (the patch, a later `create`) never acts on an enclosing checkout.
    assert subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=dest, capture_output=True,
                          text=True).stdout.strip() == str(dest)
    # Into a folder inside another checkout: the patch still lands in dest.
    inner = checkout / "rebuild"
    archive.unpack_code(contents, inner)
    assert (inner / "worldrep/world.py").read_text() == "SEED = 2  # uncommitted\n"


def test_unpack_code_refuses_what_does_not_apply(checkout, tmp_path):
    small = archive.code_members(checkout)
    assert archive.unpack_code(archive.Contents("x", {}, {}, []), tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
    bad = {**small, "provenance/code_diff.patch": small["provenance/code_diff.patch"].replace(b"-SEED = 1", b"-SEED = 7")}
    with pytest.raises(ArchiveError, match="code_diff.patch does not apply to the code of provenance/workflow.tar: "
                                           "git apply says: .*worldrep/world.py"):
        archive.unpack_code(archive.Contents("x", {}, bad, []), tmp_path / "bad")
    escape = {**small, "provenance/untracked/../outside.py": b"x"}
    with pytest.raises(ArchiveError, match="not a path inside the folder"):
        archive.unpack_code(archive.Contents("x", {}, escape, []), tmp_path / "escape")
    assert not (tmp_path / "outside.py").exists()


def test_verify_rederives_with_the_archived_code(workdir, checkout, tmp_path, monkeypatch):
    """The scratch folder Snakemake would run in holds the archived files, not this checkout's; without a
    workflow.tar it holds this checkout's, and the log says which."""
    seen = {}

    def snakemake_stand_in(folder, targets, cores):
        seen.update({rel: (folder / rel).read_bytes() if (folder / rel).is_file() else None
                     for rel in ("worldrep/world.py", "rules/new.smk", "Snakefile", "rules/training.smk")})
        seen["targets"], seen["config"] = targets, (folder / "archived_config.yaml").read_bytes()
        return subprocess.CompletedProcess([], 1, "", "stopped by the test")

    monkeypatch.setattr(archive, "run_rederivation", snakemake_stand_in)
    path = create_archive("code", workdir / "results", SMOKE, tmp_path / "out", provenance=archive.code_members(checkout),
                          log=lambda _: None)
    lines = []
    problems = verify_archive(path, rederive=True, log=lines.append)
    assert problems == ["re-derivation failed: snakemake exited 1:\nstopped by the test"]
    assert lines[1] == (f"re-derivation with the archived code (workflow.tar at {head(checkout)}, code_diff.patch "
                        "applied, 1 untracked file(s) over it)")
    assert seen["worldrep/world.py"] == b"SEED = 2  # uncommitted\n" != (REPO / "worldrep/world.py").read_bytes()
    assert seen["rules/new.smk"] == b"# not yet committed\n" and seen["rules/training.smk"] is None
    assert seen["config"] == SMOKE.read_bytes()
    assert seen["targets"] == ["results/world/cities.csv", "results/datasets/pretraining/distance/metadata.json"]
    lines.clear()
    verify_archive(make(workdir), rederive=True, log=lines.append)  # FIXED_PROVENANCE: no workflow.tar
    current = archive.code_revision()[0].split("\n")[0]
    assert lines[1] == ("re-derivation with this checkout's code: the archive holds no workflow.tar (archived at code "
                        f"revision test, this checkout is at {current})")
    assert seen["worldrep/world.py"] == (REPO / "worldrep/world.py").read_bytes()


def test_unpack_writes_code_results_and_provenance(workdir, tmp_path, capsys):
    """Every member at its path under DEST, the results with one modification time; this checkout's code where the
    archive holds none (said so); a non-empty DEST and an archive that does not check out are refused."""
    path = make(workdir, with_models=True)
    dest = tmp_path / "rebuild"
    assert main(["unpack", str(path), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "this checkout's code: the archive holds no workflow.tar" in out
    files = {name.split("/", 1)[1]: data for name, data in members(path).items()}
    assert {rel: (dest / rel).read_bytes() for rel in files} == files
    assert (dest / "provenance/config.yaml").read_bytes() == SMOKE.read_bytes()
    assert (dest / "Snakefile").read_bytes() == (REPO / "Snakefile").read_bytes()
    stamps = {(dest / rel).stat().st_mtime_ns for rel in files if rel.startswith("results/")}
    assert len(stamps) == 1 and min(stamps) >= (dest / "Snakefile").stat().st_mtime_ns
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"], cwd=dest, check=True)
    assert main(["unpack", str(path), str(dest)]) == 1
    assert "exists and is not an empty folder: unpack into a new one" in capsys.readouterr().err
    rewrite(path, flip_one_byte)
    assert main(["unpack", str(path), str(tmp_path / "other")]) == 1
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  results/figures/probe_r2.png: sha256 differs from the manifest"]
    assert not (tmp_path / "other").exists()


def test_unpack_leaves_no_half_made_folder(workdir, checkout, tmp_path, capsys):
    """An archived patch that does not apply: unpack says so and leaves nothing to rebuild in by mistake."""
    small = archive.code_members(checkout)
    small["provenance/code_diff.patch"] = small["provenance/code_diff.patch"].replace(b"-SEED = 1", b"-SEED = 7")
    path = create_archive("bad", workdir / "results", SMOKE, tmp_path / "out", provenance=small, log=lambda _: None)
    assert main(["unpack", str(path), str(tmp_path / "rebuild")]) == 1
    assert "code_diff.patch does not apply to the code of provenance/workflow.tar" in capsys.readouterr().err
    assert not (tmp_path / "rebuild").exists()


RECIPE = ["python -m worldrep.archive unpack results/archive/NAME.tar.gz rebuild",
          "cd rebuild && python -m worldrep.archive verify ../results/archive/NAME.tar.gz",
          "snakemake --cores 2 --configfile provenance/config.yaml"]


def recipe_commands() -> list[str]:
    """The rebuild recipe's command lines as --help shows them (the README quotes them): its first indented block."""
    block = archive.REBUILD.split("\n\n")[1]
    assert all(line.startswith("    ") for line in block.splitlines())
    return [line[4:] for line in block.splitlines()]


def test_help_shows_the_rebuild_recipe(capsys):
    assert recipe_commands() == RECIPE
    for page in (REPO / "README.md", REPO / "docs" / "OUTPUTS.md"):  # the guide quotes the same three lines
        assert "```bash\n" + "\n".join(RECIPE) + "\n```" in page.read_text(), page
    for argv in (["--help"], ["unpack", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert archive.REBUILD.strip() in capsys.readouterr().out


# ---- re-derivation on a real run of the world and dataset rules ---------------------------------------
def tiny_config() -> dict:
    """config/smoke.yaml cut to two tasks and a few dozen items per split: seconds per dataset."""
    config = yaml.safe_load(SMOKE.read_text())
    config["tasks"] = {"distance": {}, "compass": {}}
    for variant in ("pretraining", "atlantis_required", "with_atlantis"):
        config["datasets"][variant] = {"n_train": 50, "n_val": 8, "n_test": 20}
    config["mixtures"] = {"seed": 42, "pretraining": {"pt1-1": ["distance"]}, "with_atlantis": {},
                          "finetuning": {"replay_items": 10, "buffer_items": 4, "mixes": {}}}
    config["training"]["seeds"] = {"default": [42]}
    config["evaluation"]["checkpoint_runs"] = []
    return config


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory) -> Path:
    from worldrep.grid import validate_config

    root = tmp_path_factory.mktemp("real")
    archive.copy_workflow(root)
    config = validate_config(tiny_config())
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/datasets/{v}/{t}/metadata.json" for v in ("pretraining", "atlantis_required")
               for t in config["tasks"]]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "results/world/cities.csv", *targets, "--cores", "2",
                           "--configfile", "tiny.yaml"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return create_archive("tiny", root / "results", root / "tiny.yaml", root / "out", log=lambda _: None)


@pytest.mark.slow
def test_rederivation_reproduces_world_and_datasets(real_archive):
    """With the archived code: this checkout's committed tree, its uncommitted edits and untracked files."""
    lines = []
    assert verify_archive(real_archive, rederive=True, cores=2, log=lines.append) == []
    assert lines[1].startswith(f"re-derivation with the archived code (workflow.tar at {head(REPO)}")
    derived = members(real_archive)["tiny/provenance/derived.sha256"].decode().splitlines()
    assert len(derived) == 1 + 4 * 6  # cities.csv + (train, val, test) × (txt, npz) of 4 datasets
    assert f"re-derivation: {len(derived) + 1 + 4} world and dataset files match" in lines  # + 5 JSON files


@pytest.mark.slow
def test_changed_config_with_a_consistent_manifest_fails_only_on_rederivation(real_archive, tmp_path):
    path = tmp_path / "tampered.tar.gz"
    shutil.copy(real_archive, path)

    def reseed(files):
        config = yaml.safe_load(files["tiny/provenance/config.yaml"])
        config["datasets"]["seed"] = 43
        new = yaml.safe_dump(config).encode()
        old_hash = hashlib.sha256(files["tiny/provenance/config.yaml"]).hexdigest()
        files["tiny/provenance/config.yaml"] = new
        files["tiny/MANIFEST.sha256"] = files["tiny/MANIFEST.sha256"].replace(  # (configs/01-tiny.yaml keeps its)
            f"{old_hash}  provenance/config.yaml".encode(),
            f"{hashlib.sha256(new).hexdigest()}  provenance/config.yaml".encode())

    rewrite(path, reseed)
    assert verify_archive(path, rederive=False, log=lambda _: None) == []
    problems = verify_archive(path, rederive=True, cores=2, log=lambda _: None)
    named = {p.split(":")[0] for p in problems}
    datasets = {f"results/datasets/{v}/{t}/{s}.{e}" for v in ("pretraining", "atlantis_required")
                for t in ("distance", "compass") for s in ("train", "val", "test") for e in ("txt", "npz")}
    assert datasets <= named
    assert {f"results/datasets/{v}/{t}/metadata.json" for v in ("pretraining", "atlantis_required")
            for t in ("distance", "compass")} <= named
    assert not any(n.startswith("results/world/") for n in named)  # the world does not use the dataset seed
    assert all("differs" in p for p in problems)


def with_manifest(files: dict[str, bytes]) -> None:
    """MANIFEST.sha256 rewritten for the members as they are now: a tamperer who knows the format."""
    top = next(iter(files)).split("/")[0]
    files[f"{top}/MANIFEST.sha256"] = archive.checksum_lines(
        {name.split("/", 1)[1]: hashlib.sha256(data).hexdigest() for name, data in files.items()
         if name != f"{top}/MANIFEST.sha256"})


def code_tar(root: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            tar.add(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


@pytest.mark.slow
def test_rederivation_runs_the_archived_code_not_this_checkout(real_archive, tmp_path):
    """An archive whose workflow.tar is this checkout's workflow with one world-generation constant changed (the city
    IDs are drawn with the seed + 1): re-derived with that code the world and every dataset come out different, where
    this checkout's code reproduces them (the test above). So the code that runs is the archive's."""
    (tmp_path / "code").mkdir()
    code = archive.copy_workflow(tmp_path / "code")
    world = code / "worldrep/world.py"
    text = world.read_text()
    drawn = "np.random.default_rng(seed).choice(MAX_CITY_ID + 1,"
    assert text.count(drawn) == 1
    world.write_text(text.replace(drawn, "np.random.default_rng(seed + 1).choice(MAX_CITY_ID + 1,"))
    path = tmp_path / "planted.tar.gz"
    shutil.copy(real_archive, path)

    def plant(files):
        for name in [n for n in files if n.startswith(("tiny/provenance/untracked/", "tiny/provenance/code_diff"))]:
            del files[name]
        files["tiny/provenance/workflow.tar"] = code_tar(code)
        with_manifest(files)

    rewrite(path, plant)
    assert verify_archive(path, rederive=False, log=lambda _: None) == []
    lines = []
    problems = verify_archive(path, rederive=True, cores=2, log=lines.append)
    assert lines[1] == f"re-derivation with the archived code (workflow.tar at {head(REPO)})"
    named = {p.split(":")[0] for p in problems}
    assert "results/world/cities.csv" in named
    assert {f"results/datasets/{v}/{t}/{s}.npz" for v in ("pretraining", "atlantis_required")
            for t in ("distance", "compass") for s in ("train", "val", "test")} <= named
    assert all("differs" in p for p in problems)


def test_code_snapshot_is_the_committed_tree():
    """provenance/workflow.tar: the committed code, byte for byte, so an archive rebuilds without the repo."""
    import io
    import tarfile

    if archive.run_text(["git", "rev-parse", "HEAD"], cwd=archive.WORKFLOW_ROOT) is None:
        pytest.skip("not a git checkout")
    snapshot = archive.code_snapshot()
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as tar:
        names = set(tar.getnames())
        committed = subprocess.run(["git", "show", "HEAD:worldrep/archive.py"], cwd=archive.WORKFLOW_ROOT,
                                   capture_output=True, check=True).stdout
        assert tar.extractfile("worldrep/archive.py").read() == committed
    tracked = subprocess.run(["git", "ls-files"], cwd=archive.WORKFLOW_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert set(tracked) <= names and "Snakefile" in names and not any(n.startswith("results/") for n in names)
    assert archive.code_snapshot() == snapshot  # deterministic for one commit
    assert archive.code_snapshot(Path("/")) is None


def test_untracked_workflow_files_are_listed(tmp_path):
    """A new rule file not yet committed is in neither workflow.tar nor code_diff.patch: it goes to untracked/."""
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules/old.smk").write_text("# committed\n")
    (tmp_path / ".gitignore").write_text("rules/*.tmp\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    (tmp_path / "rules/new.smk").write_text("# not yet committed\n")
    (tmp_path / "rules/scratch.tmp").write_text("ignored\n")
    (tmp_path / "notes.txt").write_text("outside the workflow parts\n")
    assert archive.untracked_workflow_files(tmp_path) == ["rules/new.smk"]
    assert archive.untracked_workflow_files(Path("/")) == []


# ---- verify --recompute: the analysis tables from the archived representations and evaluation table ----------
# A small config (two seeds, two extracted layers, a reduced Atlantis protocol), synthetic representations and
# evaluation table, and the analysis tables written by the job scripts themselves (scripts/*.py, run with a
# stand-in for Snakemake's `snakemake` object, params written out by hand from rules/*.smk): no training, no DAG.
PRE, FINE, SEEDS = ["pt1-1", "pt1-6", "pt1-7", "pt2-1", "pt3-2", "pt7"], ["ftwb1-1", "ftwb1-6", "ftwb2-13"], [42, 1]
RUNS = ([(m, s, "pretraining") for m in PRE for s in SEEDS] + [("pt7-atl", 42, "pretraining")]
        + [(m, s, "finetuning") for m in FINE for s in SEEDS])
CURVE_RUNS = [f"{m}_s{s}" for m in ("pt1-1", "pt1-6", "pt1-7") for s in SEEDS] + ["pt7_s42"]
STEPS = [0, 2, 4]


def recompute_config() -> dict:
    config = yaml.safe_load(SMOKE.read_text())
    config["training"]["seeds"] = {"default": SEEDS, "pt7-atl": [42]}
    config["representations"] = {"layers": [5, 6], "analysis_layer": 5}
    config["probes"] = {"seed": 42, "atlantis_train": 150, "atlantis_baseline": 30, "ridge_alphas": ALPHAS,
                        "control_seed": 7}
    config["cka"] = SIMILARITY
    return config


def final(run: str) -> str:
    return f"results/representations/{run}/final.npz"


def script_jobs() -> list[dict]:
    """Each analysis job as its rule would run it under recompute_config(): script, input, output, params."""
    cities = "results/world/cities.csv"
    jobs = []
    for m, s, _ in RUNS:
        run = f"{m}_s{s}"
        jobs.append({"script": "probes.py", "params": {"seed": 42, "layer": 5, "ridge_alphas": ALPHAS,
                                                       "control_seed": 7},
                     "input": {"final": final(run), "cities": cities, "checkpoints": [
                         f"results/representations/{run}/checkpoints"] if run in CURVE_RUNS else []},
                     "output": {"metrics": f"results/probes/{run}.csv", "views": f"results/views/{run}.csv.gz"}})
    jobs.append({"script": "run_table.py", "input": [f"results/probes/{m}_s{s}.csv" for m, s, _ in RUNS],
                 "output": ["results/probes/probe_metrics.csv"],
                 "params": {"runs": [{"run": f"{m}_s{s}", "mixture": m, "kind": k, "seed": s} for m, s, k in RUNS]}})
    jobs.append({"script": "atlantis_reconstruction.py",
                 "input": {"representations": [final("ftwb2-13_s42"), final("ftwb2-13_s1")],
                           "controls": [final("pt7-atl_s42")], "cities": cities},
                 "output": {"errors": "results/probes/atlantis_errors.csv.gz",
                            "summary": "results/probes/atlantis_summary.csv"},
                 "params": {"runs": ["ftwb2-13_s42", "ftwb2-13_s1"], "includes_distance": [True, True],
                            "controls": ["pt7-atl_s42"], "seed": 42, "n_train": 150, "n_baseline": 30, "layer": 5}})
    for family, variants in {"pt1": ["pt1-1", "pt1-6", "pt1-7"], "pt2": ["pt2-1"], "pt3": ["pt3-2"]}.items():
        runs = [f"{v}_s{s}" for v in variants for s in SEEDS]
        jobs.append({"script": "cka_family.py", "wildcards": {"family": family},
                     "input": {"representations": [final(r) for r in runs], "cities": cities},
                     "output": {"pairs": f"results/cka/{family}/pairs.csv", "matrix": f"results/cka/{family}/matrix.csv"},
                     "params": {"runs": runs, "variants": variants, "seeds": {v: SEEDS for v in variants},
                                "similarity": SIMILARITY}})
    jobs.append({"script": "cka_task_count.py",
                 "input": {"pairs": [f"results/cka/{f}/pairs.csv" for f in ("pt1", "pt2", "pt3")]},
                 "output": {"values": "results/cka/task_count.csv", "summary": "results/cka/task_count_summary.csv"},
                 "params": {"task_sets": {"pt1": {"pt1-1": ["distance"], "pt1-6": ["perimeter"]},
                                          "pt2": {"pt2-1": ["distance", "trianglearea"]},
                                          "pt3": {"pt3-2": ["compass", "inside", "perimeter"]}}}})
    jobs.append({"script": "generalization.py", "input": {"metrics": "results/evaluation/metrics.csv"},
                 "output": {key: f"results/generalization/{name}.csv" for key, name in (
                     ("ni", "normalized_improvement"), ("ftwb1", "ftwb1_matrix"), ("ftwb2", "ftwb2_matrix"),
                     ("deviation", "best_teacher_deviation"), ("deviation_matrix", "deviation_matrix"))},
                 "params": {"mixes": {"ftwb1-1": ["distance"], "ftwb1-6": ["perimeter"],
                                      "ftwb2-13": ["perimeter", "distance"]}, "base": "pt7"}})
    jobs.append({"script": "cka_vs_generalization.py",
                 "input": {"cka": "results/cka/pt1/matrix.csv", "ftwb1": "results/generalization/ftwb1_matrix.csv"},
                 "output": {"points": "results/cka/cka_vs_generalization.csv",
                            "fit": "results/cka/cka_vs_generalization_fit.csv"},
                 "params": {"variant_task": {"pt1-1": "distance", "pt1-6": "perimeter", "pt1-7": "crossing"},
                            "layer": 5}})
    return jobs


def outputs_of(job: dict) -> list[str]:
    return job["output"] if isinstance(job["output"], list) else list(job["output"].values())


# Runs each job's script as Snakemake's `script:` does: a `snakemake` object with input, output, params, log and
# wildcards (named entries are attributes, and the object is also the list of every path).
SCRIPT_RUNNER = r'''
import json, os, runpy, sys, traceback
from argparse import Namespace

class IO(list):
    def __init__(self, spec):
        named = spec if isinstance(spec, dict) else {}
        items = spec if isinstance(spec, list) else [x for v in named.values() for x in (v if isinstance(v, list) else [v])]
        super().__init__(items)
        self.__dict__.update(named)

scripts = sys.argv[1]
sys.path.insert(0, scripts)
for number, job in enumerate(json.load(open(sys.argv[2]))):
    for path in IO(job["output"]):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    snakemake = Namespace(input=IO(job["input"]), output=IO(job["output"]), params=Namespace(**job["params"]),
                          log=[f"logs/{number}.log"], wildcards=Namespace(**job.get("wildcards", {})))
    try:
        runpy.run_path(f"{scripts}/{job['script']}", init_globals={"snakemake": snakemake}, run_name="__main__")
    except BaseException:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        print(f"job {number} ({job['script']}) failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
'''


def synthetic_inputs(root: Path) -> None:
    """results/world/cities.csv (300 cities, 30 of them Atlantis), every run's representations (final, and three
    checkpoints of the curve runs) and results/evaluation/metrics.csv."""
    from worldrep.evaluation import METRIC_NAME
    from worldrep.representations import save_representations
    from worldrep.tasks import TASK_NAMES

    rng = np.random.default_rng(7)
    n, n_atlantis = 300, 30
    ids = np.sort(rng.choice(np.arange(1000, 10000), n, replace=False))
    atlantis = np.zeros(n, bool)
    atlantis[rng.choice(n, n_atlantis, replace=False)] = True
    x, y = rng.integers(-1800, 1800, n), rng.integers(-900, 900, n)
    x[atlantis], y[atlantis] = -350 + rng.integers(-30, 30, n_atlantis), 350 + rng.integers(-30, 30, n_atlantis)
    regions = np.where(atlantis, "Atlantis", rng.choice(["Europe", "Africa", "South America"], n))
    cities = pd.DataFrame({"city_id": ids, "name": [f"c{i}" for i in ids], "longitude": x / 10, "latitude": y / 10,
                           "x": x, "y": y, "country_code": np.where(atlantis, "XX", "NA"), "region": regions,
                           "is_atlantis": atlantis, "geonameid": np.where(atlantis, None, ids * 3)})
    write(root / "results/world/cities.csv", cities.to_csv(index=False))
    xy = np.column_stack([x, y]).astype(np.float64)
    for number, (m, s, _) in enumerate(RUNS):
        run = f"{m}_s{s}"
        mixing = np.random.default_rng(number).normal(size=(2, 8))

        def reps(noise, mixing=mixing):
            return {layer: (xy @ mixing + rng.normal(scale=noise * layer, size=(n, 8)) * 300).astype(np.float32)
                    for layer in (5, 6)}

        folder = root / f"results/representations/{run}"
        (folder / "checkpoints" if run in CURVE_RUNS else folder).mkdir(parents=True)
        save_representations(root / final(run), ids, reps(0.5 + 0.1 * number))
        for step in STEPS if run in CURVE_RUNS else []:
            save_representations(root / f"results/representations/{run}/checkpoints/step-{step:06d}.npz", ids,
                                 reps(3.0 - 0.5 * step))
    rows = []
    for m, s, kind in RUNS:
        for test_set in ("standard", "atlantis"):
            for task in TASK_NAMES:
                accuracy = METRIC_NAME[task] == "accuracy"
                good = 0.9 if accuracy else 50.0
                value = good * (1 - rng.uniform(0, 0.6)) if accuracy else good * (1 + rng.uniform(0, 5))
                if m == "pt7" and test_set == "atlantis":
                    value = 0.3 if accuracy else 900.0  # the base model is poor on Atlantis: NI has room
                rows.append({"run": f"{m}_s{s}", "mixture": m, "kind": kind, "seed": s, "test_set": test_set,
                             "task": task, "metric": METRIC_NAME[task], "value": value, "n": 100, "failures": 0,
                             "precision": "fp32"})
    write(root / "results/evaluation/metrics.csv", pd.DataFrame(rows).to_csv(index=False))


def snakemake_record(job: dict) -> dict:
    """What Snakemake records of a job's outputs: its params as sorted reprs, the code identity the Snakefile adds
    to every rule's params among them, and its input paths sorted."""
    from worldrep.codehash import code_hash

    inputs = job["input"] if isinstance(job["input"], list) else [
        p for v in job["input"].values() for p in (v if isinstance(v, list) else [v])]
    params = [*job["params"].values(), code_hash([f"scripts/{job['script']}"])]
    return {"rule": job["script"], "params": sorted(repr(v) for v in params), "input": sorted(inputs)}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> dict:
    """{"root": the folder with results/, "all": its archive made with --all, "default": the one without}; their
    provenance/snakemake.json holds the record Snakemake would keep of each analysis table."""
    root = tmp_path_factory.mktemp("analysed")
    (root / "config.yaml").write_text(yaml.safe_dump(recompute_config()))
    synthetic_inputs(root)
    (root / "logs").mkdir()
    (root / "jobs.json").write_text(json.dumps(script_jobs()))
    (root / "runner.py").write_text(SCRIPT_RUNNER)
    proc = subprocess.run([sys.executable, "runner.py", str(REPO / "scripts"), "jobs.json"], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = {out: snakemake_record(job) for job in script_jobs() for out in outputs_of(job)}
    provenance = {"provenance/config.yaml": (root / "config.yaml").read_bytes(),
                  "provenance/code_revision.txt": b"test\n",
                  "provenance/snakemake.json": archive.to_json({"records": records})}
    made = {}
    for name, flags in (("all", {"include_all": True}), ("default", {})):
        made[name] = create_archive(name, root / "results", root / "config.yaml", root / "out",
                                    provenance=provenance, log=lambda _: None, **flags)
    return made | {"root": root}


def analysis_tables() -> set[str]:
    return {out for job in script_jobs() for out in outputs_of(job)}


def recompute(path: Path) -> tuple[list[str], list[str]]:
    lines = []
    return verify_archive(path, rederive=False, recompute=True, log=lines.append), lines


def replace_field(text: str, match: dict, column: str, value) -> tuple[str, float]:
    """A CSV with one cell replaced (the row whose fields equal `match`), as a tamperer edits it by hand: every
    other byte stays. Returns the new text and the old value."""
    lines = text.splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    for number, line in enumerate(lines[1:], 1):
        fields = line.rstrip("\n").split(",")
        if all(fields[header.index(k)] == str(v) for k, v in match.items()):
            old = float(fields[header.index(column)])
            fields[header.index(column)] = str(value(old))
            lines[number] = ",".join(fields) + "\n"
            return "".join(lines), old
    raise AssertionError(f"no row {match}")


def tamper(path: Path, out: Path, member: str, edit, passes: bool = True) -> None:
    """Edit one member of the archive and rewrite its manifest line, so that the plain manifest check passes (and,
    with `passes`, verify without re-derivation: the edit is one only a recomputation can catch)."""
    shutil.copy(path, out)

    def change(files):
        top = next(iter(files)).split("/")[0]
        old = files[f"{top}/{member}"]
        new = edit(old)
        files[f"{top}/{member}"] = new
        files[f"{top}/MANIFEST.sha256"] = files[f"{top}/MANIFEST.sha256"].replace(
            f"{hashlib.sha256(old).hexdigest()}  {member}\n".encode(), f"{hashlib.sha256(new).hexdigest()}  {member}\n".encode())

    rewrite(out, change)
    assert not passes or verify_archive(out, rederive=False, log=lambda _: None) == []


def test_the_archive_states_what_it_can_recompute(analysed):
    every = analysis_tables()
    assert len(every) == 19 * 2 + 1 + 2 + 6 + 2 + 5 + 2
    stated = json.loads(members(analysed["all"])["all/provenance/recompute.json"])
    assert set(stated["recomputable"]) == every and stated["not_recomputable"] == {}
    assert stated["recomputable"]["results/cka/pt1/matrix.csv"] == {
        "rule": "cka_family", "inputs": [final(r) for r in ("pt1-1_s42", "pt1-1_s1", "pt1-6_s42", "pt1-6_s1",
                                                            "pt1-7_s42", "pt1-7_s1")] + ["results/world/cities.csv"],
        "inputs_as_archived": []}
    assert stated["tolerance"] == {"rtol": 1e-9, "atol": 1e-9, "views_rtol": 1e-5}
    # Without --all the representations stay out: only what follows from the evaluation table and archived tables.
    stated = json.loads(members(analysed["default"])["default/provenance/recompute.json"])
    generalization = {out for job in script_jobs() if job["script"] == "generalization.py" for out in outputs_of(job)}
    assert set(stated["recomputable"]) == generalization | {
        "results/probes/probe_metrics.csv", "results/cka/task_count.csv", "results/cka/task_count_summary.csv",
        "results/cka/cka_vs_generalization.csv", "results/cka/cka_vs_generalization_fit.csv"}
    assert stated["recomputable"]["results/cka/task_count.csv"]["inputs_as_archived"] == [
        f"results/cka/{f}/pairs.csv" for f in ("pt1", "pt2", "pt3")]
    assert stated["recomputable"]["results/cka/cka_vs_generalization.csv"]["inputs_as_archived"] == [
        "results/cka/pt1/matrix.csv"]
    assert set(stated["not_recomputable"]) == every - set(stated["recomputable"])
    assert stated["not_recomputable"]["results/cka/pt2/pairs.csv"] == (
        "needs results/representations/pt2-1_s42/final.npz, results/representations/pt2-1_s1/final.npz, not in the "
        "archive (representations are archived with --all only)")
    assert stated["not_recomputable"]["results/probes/pt7_s42.csv"].startswith(
        "needs results/representations/pt7_s42/final.npz, results/representations/pt7_s42/checkpoints/step-*.npz, not")


def test_an_untouched_archive_recomputes(analysed, capsys):
    """Every table the job scripts wrote comes out of the library again: same params (checked against the
    Snakemake records too), same inputs."""
    problems, lines = recompute(analysed["all"])
    assert problems == []
    ok = {line.split()[2].rstrip(":") for line in lines if line.startswith("recompute: ok ")}
    assert ok == analysis_tables()
    assert "recompute: ok       results/cka/pt1/matrix.csv: identical" in lines
    assert "recompute: ok       results/probes/pt1-1_s42.csv: identical" in lines
    assert "recompute: the recomputation's params and inputs checked against Snakemake's records of 27 jobs " \
           "(provenance/snakemake.json)" in lines
    assert lines[-1] == "recompute: 56 tables match, 0 differ, 0 cannot be recomputed from this archive"
    assert main(["verify", str(analysed["all"]), "--no-rederive", "--recompute"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"OK: {analysed['all']}"


def test_a_tampered_cka_matrix_is_named(analysed, tmp_path, capsys):
    """One family-matrix cell changed by 0.05 and its manifest line rewritten: the manifest check passes, the
    recomputation names the file, the column, the cell and the difference, and nothing else."""
    path = tmp_path / "tampered.tar.gz"
    match = {"layer": 5, "estimator": "biased", "row": "pt1-1", "column": "pt1-6"}
    found = {}

    def edit(data):
        text, found["old"] = replace_field(data.decode(), match, "mean", lambda v: repr(v + 0.05))
        return text.encode()

    tamper(analysed["all"], path, "results/cka/pt1/matrix.csv", edit)
    problems, lines = recompute(path)
    assert len(problems) == 1
    table = pd.read_csv(analysed["root"] / "results/cka/pt1/matrix.csv")
    line = int(np.flatnonzero((table.layer == 5) & (table.estimator == "biased") & (table.row == "pt1-1")
                              & (table.column == "pt1-6"))[0]) + 2
    assert problems[0] == (
        f"results/cka/pt1/matrix.csv: the recomputed table differs: column mean: 1 of 72 cells differ, first on line "
        f"{line} (layer=5, estimator=biased, row=pt1-1, column=pt1-6, n=4): archived {found['old'] + 0.05!r}, "
        f"recomputed {found['old']!r}; max abs diff 0.05")
    assert 0 < found["old"] < 1
    # Downstream tables are recomputed from the recomputed matrix, so they match: only the edited file is named.
    assert "recompute: ok       results/cka/cka_vs_generalization.csv: identical" in lines
    assert lines[-1] == "recompute: 55 tables match, 1 differ, 0 cannot be recomputed from this archive"
    assert main(["verify", str(path), "--no-rederive", "--recompute"]) == 1
    captured = capsys.readouterr()
    assert "DIFFERS  results/cka/pt1/matrix.csv: column mean: 1 of 72 cells differ" in captured.out
    assert captured.err.splitlines()[0] == f"FAILED: {path}: 1 problem(s)"
    assert "results/cka/pt1/matrix.csv: the recomputed table differs" in captured.err


def test_a_tampered_probe_table_is_named(analysed, tmp_path):
    path = tmp_path / "tampered.tar.gz"
    found = {}

    def edit(data):
        text, found["old"] = replace_field(data.decode(), {"step": "final", "layer": 5}, "r2_x", lambda v: repr(v - 0.2))
        return text.encode()

    tamper(analysed["all"], path, "results/probes/pt1-1_s42.csv", edit)
    problems, lines = recompute(path)
    # final first, then the 3 checkpoints, 2 layers each; 217 = round(300 · 3250/4500) train cities
    assert problems == [(f"results/probes/pt1-1_s42.csv: the recomputed table differs: column r2_x: 1 of 8 cells "
                         f"differ, first on line 2 (step=final, layer=5, n_train=217, n_test=83): archived "
                         f"{found['old'] - 0.2!r}, recomputed {found['old']!r}; max abs diff 0.2")]
    assert 0.5 < found["old"] < 1
    assert "recompute: ok       results/probes/probe_metrics.csv: identical" in lines  # from the recomputed table


def test_without_the_representations_it_says_what_it_cannot_recompute(analysed, tmp_path):
    problems, lines = recompute(analysed["default"])
    assert problems == []
    cannot = {line.split()[2].rstrip(":") for line in lines if line.startswith("recompute: cannot ")}
    stated = json.loads(members(analysed["default"])["default/provenance/recompute.json"])
    assert cannot == set(stated["not_recomputable"]) and len(cannot) == 46
    assert ("recompute: cannot   results/cka/pt1/matrix.csv: needs results/representations/pt1-1_s42/final.npz, "
            "results/representations/pt1-1_s1/final.npz, results/representations/pt1-6_s42/final.npz and 3 more, not "
            "in the archive (representations are archived with --all only)") in lines
    assert ("recompute: ok       results/cka/task_count.csv: identical (from the archived results/cka/pt1/pairs.csv, "
            "results/cka/pt2/pairs.csv, results/cka/pt3/pairs.csv, not recomputed)") in lines
    assert ("recompute: ok       results/probes/probe_metrics.csv: identical (from the archived "
            "results/probes/pt1-1_s42.csv, results/probes/pt1-1_s1.csv, results/probes/pt1-6_s42.csv and 16 more, not "
            "recomputed)") in lines
    assert lines[-1] == "recompute: 10 tables match, 0 differ, 46 cannot be recomputed from this archive"
    # What it can recompute, it still checks: a changed NI in an archive without representations.
    path = tmp_path / "tampered.tar.gz"
    tamper(analysed["default"], path, "results/generalization/normalized_improvement.csv",
           lambda data: data.replace(b",distance,mean_absolute_error,", b",distance,mean_absolute_error,1", 1))
    problems, _ = recompute(path)
    assert [p.split(": ")[0] for p in problems] == ["results/generalization/normalized_improvement.csv"]
    assert "column v: 1 of 42 cells differ, first on line 2" in problems[0]


def test_params_that_disagree_with_snakemakes_record_are_named(analysed, tmp_path):
    """The recomputation's mirror of the rules is checked against how Snakemake made each archived table."""
    path = tmp_path / "tampered.tar.gz"

    def edit(data):
        obj = json.loads(data)
        record = obj["records"]["results/probes/pt2-1_s1.csv"]
        record["params"] = ["43" if v == "42" else v for v in record["params"]]
        return archive.to_json(obj)

    tamper(analysed["all"], path, "provenance/snakemake.json", edit)
    problems, _ = recompute(path)
    assert problems == [("results/probes/pt2-1_s1.csv: Snakemake recorded the params ['43'] for rule probes, where "
                         "the recomputation has ['42']")]


def test_a_table_made_by_other_code_is_named(analysed, tmp_path):
    """A record whose code hash is not this checkout's: the message says the code differs."""
    path = tmp_path / "tampered.tar.gz"

    def edit(data):
        obj = json.loads(data)
        record = obj["records"]["results/probes/pt2-1_s1.csv"]
        record["params"] = [v if len(v) != 18 else "'0123456789abcdef'" for v in record["params"]]
        return archive.to_json(obj)

    tamper(analysed["all"], path, "provenance/snakemake.json", edit)
    problems, _ = recompute(path)
    assert len(problems) == 1 and "0123456789abcdef" in problems[0], problems
    assert "this checkout runs other code than the one that made the table" in problems[0]


@pytest.mark.parametrize("archived, recomputed, same, detail", [
    ("a,b\nx,1.0\n", "a,b\nx,1.0\n", True, "identical"),
    ("a,b\nx,1000.0\n", "a,b\nx,1000.0000001\n", True, "within tolerance (rtol 1e-09, atol 1e-09); max abs diff 1e-07"),
    ("a,b\nx,\n", "a,b\nx,nan\n", True, "within tolerance (rtol 1e-09, atol 1e-09); max abs diff 0"),
    ("a,b\nx,1.0\n", "a,b\nx,1.00001\n", False,
     "column b: 1 of 1 cells differ, first on line 2 (a=x): archived 1.0, recomputed 1.00001; max abs diff 1e-05"),
    ("a,n\nx,3\n", "a,n\nx,4\n", False,
     "column n: 1 of 1 cells differ, first on line 2 (a=x): archived 3, recomputed 4; max abs diff 1"),
    ("a,b\nx,1\ny,2\n", "a,b\nx,1\nz,2\n", False,
     "column a: 1 of 2 cells differ, first on line 3 (b=2): archived 'y', recomputed 'z'; max abs diff 0"),
    ("a,b\nx,1\n", "a,c\nx,1\n", False, "columns differ: archived ['a', 'b'], recomputed ['a', 'c']"),
    ("a,b\nx,1\n", "a,b\nx,1\ny,2\n", False, "1 rows archived, 2 recomputed"),
])
def test_compare_tables(archived, recomputed, same, detail):
    assert archive.compare_tables("t.csv", archived.encode(), recomputed.encode()) == (same, detail)


# ---- a real smoke run: run.json checks, a base and an overlay, the rebuild recipe ---------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """The smoke workflow, run once in a copy of this workflow: every run trained, every table and figure made."""
    root = archive.copy_workflow(tmp_path_factory.mktemp("smoke"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    return root


@pytest.mark.slow
def test_smoke_results_are_checked_run_by_run(smoke, tmp_path):
    """Under the smoke config and an overlay that changes no run (`name: other`) the smoke results archive, both files
    listed in order, and the archive verifies with re-derivation; its config edited after the runs were trained (and
    the manifest line rewritten), verify names exactly the pretraining runs; an edited pretraining peak lr names exactly the pretraining runs, an overlay with another
    fine-tuning peak lr exactly the fine-tuning runs, each with `recipe`."""
    from worldrep.grid import training_runs

    config = yaml.safe_load(SMOKE.read_text())
    recorded = sorted(p.parent.parent.name for p in (smoke / "results/models").glob("*/final/run.json"))
    assert recorded == sorted(r.name for r in training_runs(config)) and len(recorded) == 10
    base, other = SMOKE, write(tmp_path / "other.yaml", "name: other\n")
    path = create_archive("two", smoke / "results", [base, other], tmp_path / "out", provenance=FIXED_PROVENANCE,
                          log=lambda _: None)
    files = members(path)
    assert [n for n in files if n.startswith("two/provenance/configs/")] == [
        "two/provenance/configs/01-smoke.yaml", "two/provenance/configs/02-other.yaml"]
    assert [c["file"] for c in json.loads(files["two/provenance/archive.json"])["configs"]] == [str(base), str(other)]
    assert yaml.safe_load(files["two/provenance/config.yaml"]) == {**config, "name": "other"}
    lines = []  # and it verifies: manifest, run records, then the world and datasets re-derived under the merge
    assert verify_archive(path, cores=2, log=lines.append) == [], lines
    assert "runs: 10 run records (provenance/runs/) agree with the archived config" in lines, lines
    assert any(line.startswith("re-derivation: ") and "files match" in line for line in lines), lines

    def faster(data: bytes) -> bytes:  # the archived config says another pretraining peak lr than the runs had
        edited = yaml.safe_load(data)
        edited["training"]["pretraining"]["peak_lr"] *= 2
        return yaml.safe_dump(edited, sort_keys=False).encode()

    tamper(path, tmp_path / "edited.tar.gz", "provenance/config.yaml", faster, passes=False)
    problems = verify_archive(tmp_path / "edited.tar.gz", rederive=False, log=lambda _: None)
    pretrained = {r.name for r in training_runs(config) if r.kind == "pretraining"}
    assert problems == [f"provenance/runs/{run}.json: run {run} was trained with another recipe than the archived "
                        "config says" for run in sorted(pretrained)]

    def refused(configs) -> dict[str, str]:
        with pytest.raises(ArchiveError) as error:
            create_archive("no", smoke / "results", configs, tmp_path / "out", provenance=FIXED_PROVENANCE,
                           log=lambda _: None)
        lines = str(error.value).splitlines()[1:]
        return {re.search(r"run (\S+) ", line).group(1): line.split(" was trained with ")[1] for line in lines}

    edited = yaml.safe_load(SMOKE.read_text())
    edited["training"]["pretraining"]["peak_lr"] = 1.0e-3
    pretraining = {r.name for r in training_runs(config) if r.kind == "pretraining"}
    assert refused([write(tmp_path / "edited.yaml", yaml.safe_dump(edited))]) == {
        name: "another recipe than the config says" for name in pretraining}
    overlay = write(tmp_path / "lr.yaml", "training: {finetuning: {peak_lr: 5.0e-5}}\n")
    assert refused([base, overlay]) == {name: "another recipe than the config says"
                                        for name in {r.name for r in training_runs(config)} - pretraining}


def dry_run(folder: Path, *args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args, "--configfile", "provenance/config.yaml"],
                          cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return planned(proc.stdout)


@pytest.mark.slow
def test_the_rebuild_recipe(smoke, tmp_path):
    """The recipe of --help, pasted into a shell in the smoke folder with `-n` added to its snakemake line: unpack
    writes the archived code, results and configs; verify, the archived code's own, passes with re-derivation; the
    dry run in the rebuild folder plans every job a bare copy of the archived code plans (every run trained again: the
    archive holds neither the models nor the store) but the world, the tokenizer and the world map, archived and up to
    date. From an archive made --with-models it plans nothing, and with --forceall everything."""
    from worldrep.grid import training_stacks

    assert main(["create", "--name", "smoke", "--results", str(smoke / "results"), "--config", str(SMOKE)]) == 0
    commands = [c.replace("NAME", "smoke") for c in recipe_commands()]
    commands[2] = "echo '--- dry run ---' && " + commands[2].replace("snakemake ", "snakemake -n ", 1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-e", "-c", "\n".join(commands)], cwd=smoke, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    before, dry = proc.stdout.split("--- dry run ---", 1)
    assert "re-derivation: " in before and "world and dataset files match" in before
    assert f"re-derivation with the archived code (workflow.tar at {head(REPO)}" in before
    assert before.rstrip().endswith("OK: ../results/archive/smoke.tar.gz")
    rebuild = smoke / "rebuild"
    assert (rebuild / "worldrep/archive.py").read_bytes() == (REPO / "worldrep/archive.py").read_bytes()
    assert (rebuild / "provenance/configs/01-smoke.yaml").read_bytes() == SMOKE.read_bytes()
    bare = tmp_path / "bare"  # the archived code alone, no results
    assert archive.unpack_code(archive.read_archive(smoke / "results/archive/smoke.tar.gz"), bare) is not None
    (bare / "provenance").mkdir()
    shutil.copy(rebuild / "provenance/config.yaml", bare / "provenance/config.yaml")
    everything = dry_run(bare)
    assert {"world", "tokenizer", "figure_world_map", "all"} < everything
    assert planned(dry) == everything - {"world", "tokenizer", "figure_world_map"}
    stacks = {stack.rule for stack in training_stacks(yaml.safe_load(SMOKE.read_text()))}
    assert {job for job in planned(dry) if job.startswith(("pretrain_", "finetune_"))} == stacks and len(stacks) == 7
    # With the models: nothing to do (Snakemake remakes nothing for missing intermediates: the store, the splits).
    with_models = create_archive("models", smoke / "results", SMOKE, tmp_path / "out", with_models=True,
                                 log=lambda _: None)
    models_rebuild = archive.unpack_archive(with_models, tmp_path / "rebuild", log=lambda _: None)
    assert dry_run(models_rebuild) == set()
    assert dry_run(models_rebuild, "--forceall") == everything
