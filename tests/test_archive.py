"""The run archive: what goes in, deterministic bytes, the manifest check naming each bad file, and the
re-derivation of world and datasets from the archived config (on a real tiny workflow run)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest
import yaml

from worldrep import archive
from worldrep.archive import ArchiveError, create_archive, is_archived, main, verify_archive

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "smoke.yaml"
FIXED_PROVENANCE = {"provenance/config.yaml": SMOKE.read_bytes(), "provenance/code_revision.txt": b"test\n"}


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
    assert files["run1/provenance/config.yaml"] == SMOKE.read_bytes()
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
    from worldrep.config import validate_config

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
    lines = []
    assert verify_archive(real_archive, rederive=True, cores=2, log=lines.append) == []
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
        files["tiny/MANIFEST.sha256"] = files["tiny/MANIFEST.sha256"].replace(
            old_hash.encode(), hashlib.sha256(new).hexdigest().encode())

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
