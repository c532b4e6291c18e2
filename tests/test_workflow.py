"""The smoke DAG end to end on a temporary copy of the workflow: lint, run, no-op replan, exact partial
rebuilds (asserted as sets of job names), and byte-identical reruns."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from worldrep.archive import copy_workflow

REPO = Path(__file__).resolve().parents[1]
SMOKE = "config/smoke.yaml"
MODULES_LOG = "modules.jsonl"
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def planned_jobs(workdir: Path, configfile: str | tuple[str, ...] = SMOKE, *extra: str) -> set[str]:
    """Job names `rule[wildcards]` that `snakemake -n` plans, parsed from its job blocks (config files merged in
    order when several are given)."""
    out = snakemake(workdir, "-n", *extra, "--configfile", *((configfile,) if isinstance(configfile, str) else configfile))
    return planned(out)


def planned(output: str) -> set[str]:
    """Job names `rule[wildcards]` in a `snakemake -n` output: each job block's rule and its wildcards."""
    jobs, rule = set(), None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            if rule:
                jobs.add(rule)
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            jobs.add(f"{rule}[{m.group(1).replace(' ', '')}]")
            rule = None
    if rule:
        jobs.add(rule)
    return jobs


def evaluated_sets(config: dict, mixture: str) -> set[tuple[str, str]]:
    """METHOD §8 by hand: 7-task and fine-tuned models see every standard and Atlantis test set, the others
    the standard sets of their own tasks."""
    mix = config["mixtures"]
    tasks = mix["pretraining"].get(mixture) or mix.get("with_atlantis", {}).get(mixture)
    if tasks is None or set(tasks) == set(config["tasks"]):
        return {(v, t) for v in ("pretraining", "atlantis_required") for t in config["tasks"]}
    return {("pretraining", t) for t in tasks}


def stack_of(config: dict, mixture: str) -> str:
    """The stack a mixture's runs train in (METHOD §7.1), by hand: the mixture itself under `training.stack: mixture`;
    its family under `family`, i.e. the name without its variant number (pt1-6 -> pt1, ftwb2-13 -> ftwb2, pt7)."""
    if config["training"]["stack"] == "mixture":
        return mixture
    return m.group(1) if (m := re.match(r"^((?:pt|ftwb)\d+)-\d+$", mixture)) else mixture


def training_job(config: dict, mixture: str) -> str:
    """The job name of the stack that trains `mixture`: pretrain_pt1, finetune_ftwb2_13, ..."""
    kind = "finetune" if mixture in config["mixtures"]["finetuning"]["mixes"] else "pretrain"
    return f"{kind}_{stack_of(config, mixture).replace('-', '_')}"


def trained_mixtures(jobs: set[str]) -> set[str]:
    """Every mixture whose run (seed 42) a planned job publishes: those retrained, or republished."""
    return {m.group(1) for job in jobs if (m := re.match(r"(?:pre|fine)tuned_model\[mixture=([\w-]+),seed=42\]", job))}


def model_jobs(config: dict, mixture: str) -> set[str]:
    """The job that trains the run of `mixture` (its stack, training only the stale runs) and the one publishing it."""
    publish = "finetuned_model" if mixture in config["mixtures"]["finetuning"]["mixes"] else "pretrained_model"
    return {training_job(config, mixture), f"{publish}[mixture={mixture},seed=42]"}


def downstream_jobs(config: dict, datasets: set[tuple[str, str]], mixtures: set[str], retrained: set[str],
                    republished: set[str] = frozenset()) -> set[str]:
    """Training and evaluation jobs that must rerun after `datasets` (variant, task) and `mixtures` were rebuilt,
    plus runs in `retrained` (every smoke run has the one seed 42) and runs only `republished` from the store. A
    stack trains only its stale runs and computes only its missing products (METHOD §7.5), and fine-tuning starts
    from pt7's weights."""
    mix = config["mixtures"]
    pretraining = [*mix["pretraining"], *mix.get("with_atlantis", {})]
    trained = {m for m in pretraining if m in mixtures or m in retrained}
    finetuned = {m for m in mix["finetuning"]["mixes"] if m in mixtures or m in retrained or "pt7" in trained}
    jobs = {job for m in trained | finetuned for job in model_jobs(config, m)}
    # A republished model (its folder deleted, its entry there) is read again only by what reads its files: its
    # training curves (a single-task run's logs), fine-tuning (a base's final folder). Its evaluation and
    # representations are products of its stored weights, published from their own entries.
    published = {f"{'finetuned' if m in mix['finetuning']['mixes'] else 'pretrained'}_model[mixture={m},seed=42]"
                 for m in republished}
    published |= {f"figure_training_curves[run={m}_s42]" for m in republished if m.startswith("pt1-")}  # its logs
    evaluated = {m for m in [*pretraining, *mix["finetuning"]["mixes"]]
                 if m in trained | finetuned or evaluated_sets(config, m) & datasets}
    jobs |= {f"evaluate[mixture={m},seed=42]" for m in evaluated}
    # The stack job computes its runs' evaluations (METHOD §7.5): a run whose test sets changed has its stack's job
    # planned, which then trains nothing for it and evaluates it from its stored weights.
    jobs |= {training_job(config, m) for m in evaluated}
    if "pt7" in trained or any(v == "pretraining" for v, _ in datasets):
        jobs.add("evaluate_checkpoints[mixture=pt7,seed=42]")
        jobs.add(training_job(config, "pt7"))
    if evaluated:
        jobs.add("evaluation_table")
    if any(v in ("pretraining", "atlantis_required") for v, _ in datasets):
        jobs.add("trivial_baselines")  # the training sets' median or majority answer on every test set
    # Analysis (§10–12) of every retrained model: its representations (and every checkpoint's, for the
    # single-task runs and pt7 seed 42), probes, the CKA of its family, the Atlantis reconstruction of the
    # two-task fine-tuned models and the control; generalization follows the metrics table.
    models = trained | finetuned
    jobs |= {f"representations[mixture={m},seed=42]" for m in models}
    jobs |= {f"probes[mixture={m},seed=42]" for m in models}
    jobs |= {f"checkpoint_representations[mixture={m},seed=42]" for m in trained if m.startswith("pt1-") or m == "pt7"}
    families = {m.split("-")[0] for m in trained if m.split("-")[0] in ("pt1", "pt2", "pt3")}
    jobs |= {f"cka_family[family={f}]" for f in families}
    if models:
        jobs.add("probe_table")
    if families:
        jobs.add("cka_task_count")
    if any(len(mix["finetuning"]["mixes"][m]) == 2 for m in finetuned) or models & set(mix.get("with_atlantis", {})):
        jobs.add("atlantis_reconstruction")
    if evaluated:
        jobs.add("generalization")
    if evaluated or "pt1" in families:
        jobs.add("cka_vs_generalization")
    jobs |= report_jobs(config, jobs)
    return jobs | published | ({"all"} if jobs | published else set())


def figure_jobs(jobs: set[str]) -> set[str]:
    """The §13 figures drawn from the analysis tables that `jobs` rebuild."""
    estimators = ("biased", "debiased")
    figures = set()
    for job in jobs:
        if m := re.match(r"cka_family\[family=(\w+)\]", job):
            figures |= {f"figure_cka_matrix[family={m.group(1)},estimator={e}]" for e in estimators}
            figures.add(f"figure_cka_estimators[family={m.group(1)}]")
    if "cka_task_count" in jobs:
        figures |= {f"figure_cka_task_count[estimator={e}]" for e in estimators}
        figures.add("figure_cka_task_count_estimators")
    if "generalization" in jobs:
        figures |= {"figure_ftwb1_matrix", "figure_deviation_matrix", "figure_deviation_histogram"}
    if "cka_vs_generalization" in jobs:
        figures |= {f"figure_cka_vs_generalization[estimator={e}]" for e in estimators}
        figures.add("figure_cka_vs_generalization_estimators")
    if "atlantis_reconstruction" in jobs:
        figures.add("figure_atlantis_histogram")
    return figures


def report_jobs(config: dict, jobs: set[str]) -> set[str]:
    """Every figure and report table that reads what `jobs` rebuild, with the model choices of METHOD §13
    written out by hand: views of seed-42 models (the smoke grid has seed 42 only), the main views of the
    distance/angle/compass/inside single-task models, pt2-1 (D,T) and pt2-3 (I,P) with their single-task
    insets, the non-crossing single-task gallery, the distance/angle/compass dynamics, the seven-task models,
    every single-task run's training curves, Fig. 4b of each checkpoint run, ftwb2-2/ftwb2-13 predictions."""
    pretraining = {**config["mixtures"]["pretraining"], **config["mixtures"].get("with_atlantis", {})}
    single = {tasks[0]: m for m, tasks in pretraining.items() if m.startswith("pt1-")}
    probed = {m.group(1) for job in jobs if (m := re.match(r"probes\[mixture=([\w-]+),seed=42\]", job))}
    trained = trained_mixtures(jobs) & set(pretraining)
    figures = figure_jobs(jobs)
    if probed & {single[t] for t in ("distance", "angle", "compass", "inside") if t in single}:
        figures.add("figure_representation_views")
    two_task = {m for m in ("pt2-1", "pt2-3") if m in pretraining}
    if probed & (two_task | {single[t] for m in two_task for t in pretraining[m] if t in single}):
        figures.add("figure_two_task_views")
    if probed & {m for t, m in single.items() if t != "crossing"}:
        figures.add("figure_pca_gallery")
    if probed & {single[t] for t in ("distance", "angle", "compass") if t in single}:
        figures.add("figure_dynamics_views")
    figures |= {f"figure_model_views[run={m}_s42]" for m in ("pt7", "pt7-atl") if m in probed}
    figures |= {f"figure_training_curves[run={m}_s42]" for m in single.values() if m in probed | trained}
    figures |= {f"figure_checkpoint_metrics[run={run}]" for run in config["evaluation"]["checkpoint_runs"]
                if f"evaluate_checkpoints[mixture={run.rsplit('_s', 1)[0]},seed=42]" in jobs}
    if "atlantis_reconstruction" in jobs or probed & {"ftwb2-2", "ftwb2-13"}:
        figures.add("figure_atlantis_predictions")
    if jobs & {"evaluation_table", "trivial_baselines", "probe_table"}:
        figures.add("health_report")
    # The §15 checklist reads the probe, health, CKA, generalization and Atlantis tables and the single-task views.
    checklist_inputs = {"probe_table", "cka_family[family=pt1]", "cka_task_count", "cka_vs_generalization",
                        "generalization", "atlantis_reconstruction"}
    if (jobs | figures) & (checklist_inputs | {"health_report"}) or probed & set(single.values()):
        figures.add("claims")
    return figures


def expected_jobs(config: dict, variants: set[str], tasks: set[str]) -> set[str]:
    """What must rebuild when the datasets of `tasks` in `variants` change, derived from METHOD §4 by hand:
    pretraining mixtures read whole pretraining (or with-Atlantis) sets of their own tasks; every fine-tuning
    mixture reads the Atlantis-required sets of all tasks (the buffer) and the pretraining sets of its own.
    Then every model trained on a rebuilt mixture and every evaluation that reads a rebuilt test set."""
    jobs = {f"dataset[variant={v},task={t}]" for v in variants for t in tasks} | {"all"}
    mix = config["mixtures"]
    mixtures = set()
    for name, listed in mix["pretraining"].items():
        if "pretraining" in variants and tasks & set(listed):
            mixtures.add(name)
            jobs.add(f"pretraining_mixture[mixture={name}]")
    for name, listed in mix.get("with_atlantis", {}).items():
        if "with_atlantis" in variants and tasks & set(listed):
            mixtures.add(name)
            jobs.add(f"pretraining_mixture[mixture={name}]")
    for name, listed in mix["finetuning"]["mixes"].items():
        if "atlantis_required" in variants or ("pretraining" in variants and tasks & set(listed)):
            mixtures.add(name)
            jobs.add(f"finetuning_mixture[mixture={name}]")
    return jobs | downstream_jobs(config, {(v, t) for v in variants for t in tasks}, mixtures, set())


def result_hashes(workdir: Path) -> dict[str, str]:
    """Every output of the DAG; not logs, benchmarks, the report or archives (made on demand by another test), nor
    the store, whose markers record how each run was stacked (the published models are its files, hard-linked)."""
    root = workdir / "results"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in ("logs", "benchmarks", "report.html", "archive", "store")
    }


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    # Every job logs the modules it loaded (scripts/_workflow.py), for test_code_identity_covers_every_module_run.
    snakemake(workdir, "--cores", "2", "--configfile", SMOKE, env={"WORLDREP_MODULES_LOG": str(workdir / MODULES_LOG)})
    return workdir


@pytest.fixture(scope="module")
def smoke_config() -> dict:
    return yaml.safe_load((REPO / SMOKE).read_text())


def test_lint_is_clean(workflow):
    out = snakemake(workflow, "--lint", "--configfile", SMOKE)
    assert "Lints for" not in out, out


def test_smoke_run_builds_every_dataset_and_mixture(workflow, smoke_config):
    """Every generated dataset obeys the split rules (METHOD §3.3–3.4), read from the workflow's own output."""
    for task in smoke_config["tasks"]:
        for variant in ("pretraining", "atlantis_required", "with_atlantis"):
            meta = json.loads((workflow / f"results/datasets/{variant}/{task}/metadata.json").read_text())
            sizes = smoke_config["datasets"][variant]
            assert meta["sizes"] == {s: sizes[f"n_{s}"] for s in ("train", "val", "test")}
            assert meta["key_overlap_with_train"] == {"val": 0, "test": 0}
            if task in ("inside", "crossing"):
                assert meta["true_count"] == {s: n // 2 for s, n in meta["sizes"].items()}
    mixtures = smoke_config["mixtures"]
    for family in (mixtures["pretraining"], mixtures["with_atlantis"], mixtures["finetuning"]["mixes"]):
        for name in family:
            for split in ("train", "val", "test"):
                assert (workflow / f"results/mixtures/{name}/{split}.npz").stat().st_size > 0
    assert not list((workflow / "results").rglob("*.partial"))
    assert not list((workflow / "results").rglob("in_progress"))


def test_smoke_run_trains_and_evaluates_every_run(workflow, smoke_config):
    """Every run's outputs are complete (§7.2: checkpoints at 0, every ⌈0.25 T⌉ and T for pretraining) and its
    metrics cover the test sets of §8 exactly; nothing is left in progress."""
    import pandas as pd

    mix = smoke_config["mixtures"]
    pretraining = [*mix["pretraining"], *mix["with_atlantis"]]
    runs = [f"{m}_s42" for m in [*pretraining, *mix["finetuning"]["mixes"]]]
    combined = pd.read_csv(workflow / "results/evaluation/metrics.csv")
    assert sorted(combined["run"].unique()) == sorted(runs)
    for run in runs:
        mixture = run.removesuffix("_s42")
        directory = workflow / "results/models" / run
        meta = json.loads((directory / "final/run.json").read_text())
        assert (meta["mixture"], meta["seed"], meta["recipe"]["precision"]) == (mixture, 42, "fp32")
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in (directory / "final").iterdir()}
        assert not (directory / "in_progress").exists()
        total = meta["total_steps"]
        log = pd.read_csv(directory / "training_log.csv")
        assert log["step"].iloc[-1] == total and log["loss"].notna().all()
        if mixture in pretraining:
            interval = -(-total // 4)
            expected = sorted(set(range(0, total + 1, interval)) | {total})
            assert sorted(int(p.name[5:]) for p in (directory / "checkpoints").glob("step-*")) == expected
        else:
            assert not (directory / "checkpoints").exists()
        metrics = pd.read_csv(workflow / f"results/evaluation/{run}/metrics.csv")
        names = {"pretraining": "standard", "atlantis_required": "atlantis"}
        assert set(zip(metrics["test_set"], metrics["task"])) == {
            (names[v], t) for v, t in evaluated_sets(smoke_config, mixture)}
        assert (metrics["n"] == smoke_config["datasets"]["pretraining"]["n_test"]).all()
        predictions = pd.read_csv(workflow / f"results/evaluation/{run}/predictions.csv.gz", keep_default_na=False)
        assert len(predictions) == metrics["n"].sum()
        assert predictions.groupby(["test_set", "task"])["failed"].sum().sort_index().tolist() == \
            metrics.set_index(["test_set", "task"])["failures"].sort_index().tolist()
    trivial = pd.read_csv(workflow / "results/evaluation/trivial_baselines.csv")
    assert len(trivial) == 14 and set(trivial["test_set"]) == {"standard", "atlantis"}
    assert trivial.query("task in ['inside', 'crossing']")["value"].eq(0.5).all()  # 50/50 labels (§3.4)
    curves = pd.read_csv(workflow / "results/evaluation/pt7_s42/checkpoints.csv")
    steps = sorted(int(p.name[5:]) for p in (workflow / "results/models/pt7_s42/checkpoints").glob("step-*"))
    assert sorted(curves["step"].unique()) == steps and len(curves) == 7 * len(steps)


@pytest.mark.usefixtures("one_thread")
def test_stack_jobs_compute_what_the_per_run_path_computes(workflow, smoke_config, tmp_path):
    """Each stack job evaluated and extracted its runs in its own process (METHOD §7.5). The per-run path, written
    out here as the retired per-run jobs ran it (load the published model with the Auto classes, evaluate it, or
    extract it, alone), gives the same bytes on the CPU: final and checkpoint evaluation of pt7 (metrics,
    predictions, curves), final and checkpoint representations of a single-task run and of pt7, and a fine-tuned
    run's (ftwb2-13) evaluation and representations."""
    from worldrep.evaluation import (load_model, resolve_device_precision, test_set_paths, write_checkpoint_evaluation,
                                     write_evaluation)
    from worldrep.grid import configured_tasks, evaluation_sets, run_prompt_task, training_runs
    from worldrep.representations import write_representations

    cpu, results = torch.device("cpu"), workflow / "results"
    evaluation = smoke_config["evaluation"]
    precision = resolve_device_precision(cpu, evaluation["precision"])
    runs = {r.name: r for r in training_runs(smoke_config)}
    compared = []
    for name in ("pt7_s42", "ftwb2-13_s42"):
        sets = test_set_paths([f"{v}/{t}" for v, t in evaluation_sets(smoke_config, runs[name].mixture)], results)
        (tmp_path / name).mkdir()
        write_evaluation(load_model(results / f"models/{name}/final", cpu), sets, evaluation["batch_size"], cpu,
                         precision, tmp_path / name)
        compared += [(tmp_path / name / f, results / f"evaluation/{name}/{f}") for f in ("metrics.csv",
                                                                                         "predictions.csv.gz")]
    checkpoints = sorted((results / "models/pt7_s42/checkpoints").glob("step-*"))
    standard = test_set_paths([f"pretraining/{t}" for t in configured_tasks(smoke_config)], results)
    write_checkpoint_evaluation(checkpoints, standard, evaluation["batch_size"], cpu, precision, tmp_path / "curves.csv")
    compared.append((tmp_path / "curves.csv", results / "evaluation/pt7_s42/checkpoints.csv"))
    layers = smoke_config["representations"]["layers"]
    for name in ("pt1-1_s42", "pt7_s42", "ftwb2-13_s42"):
        task = run_prompt_task(smoke_config, runs[name])
        models = [(results / f"models/{name}/final", tmp_path / f"{name}.npz")]
        compared.append((tmp_path / f"{name}.npz", results / f"representations/{name}/final.npz"))
        if name != "ftwb2-13_s42":
            for checkpoint in sorted((results / f"models/{name}/checkpoints").glob("step-*")):
                models.append((checkpoint, tmp_path / f"{name}.{checkpoint.name}.npz"))
                compared.append((models[-1][1], results / f"representations/{name}/checkpoints/{checkpoint.name}.npz"))
        write_representations(models, task, results / "world/cities.csv", layers, cpu)
    assert len(compared) > 15
    assert [theirs for ours, theirs in compared if ours.read_bytes() != theirs.read_bytes()] == []
    # A GPU's stack job extracts checkpoints fused, up to 21 at a time (the CPU's path is the per-run one above). Run
    # here on the CPU in stacks of 2, it gives each checkpoint's published vectors to float rounding.
    import numpy as np

    from worldrep.representations import load_representations
    from worldrep.stack import from_hf_models

    checkpoints = sorted((results / "models/pt7_s42/checkpoints").glob("step-*"))
    assert len(checkpoints) >= 3  # stacks of 2 and a last one of 1
    fused = [(c, tmp_path / f"fused.{c.name}.npz") for c in checkpoints]
    write_representations(fused, run_prompt_task(smoke_config, runs["pt7_s42"]), results / "world/cities.csv", layers,
                          cpu, make_stack=from_hf_models, stack_size=2)
    for checkpoint, path in fused:
        (ids, ours), (published_ids, theirs) = (load_representations(path), load_representations(
            results / f"representations/pt7_s42/checkpoints/{checkpoint.name}.npz"))
        assert np.array_equal(ids, published_ids) and sorted(ours) == sorted(theirs) == sorted(layers)
        for layer in layers:
            scale = max(1.0, np.abs(theirs[layer]).max())
            np.testing.assert_allclose(ours[layer], theirs[layer], rtol=0, atol=1e-4 * scale)


def test_smoke_run_builds_every_analysis_table(workflow, smoke_config):
    """Representations, probes, CKA, generalization and Atlantis tables of the smoke grid (one seed: the
    seed-averaged CKA diagonals have no cross-seed pair and stay empty, §12)."""
    import numpy as np
    import pandas as pd

    results = workflow / "results"
    cities = pd.read_csv(results / "world/cities.csv", keep_default_na=False)
    eligible = np.sort(cities.city_id[(cities.city_id >= 1000) & (cities.city_id <= 9999)].to_numpy())
    runs = [f"{m}_s42" for m in [*smoke_config["mixtures"]["pretraining"], *smoke_config["mixtures"]["with_atlantis"],
                                 *smoke_config["mixtures"]["finetuning"]["mixes"]]]
    for run in runs:
        with np.load(results / f"representations/{run}/final.npz") as reps:
            assert np.array_equal(reps["city_ids"], eligible)
            assert all(reps[f"layer_{layer}"].shape == (len(eligible), 256) for layer in (3, 4, 5, 6))
        probes = pd.read_csv(results / f"probes/{run}.csv")
        final = probes[probes.step == "final"]
        assert sorted(final.layer) == [3, 4, 5, 6]
        assert (final.n_train == round(len(eligible) * 3250 / 4500)).all()
        assert (final.n_train + final.n_test == len(eligible)).all()
    for run in ("pt1-1_s42", "pt1-6_s42", "pt1-7_s42", "pt7_s42"):
        steps = sorted(p.name for p in (results / f"models/{run}/checkpoints").glob("step-*"))
        assert sorted(p.stem for p in (results / f"representations/{run}/checkpoints").glob("*.npz")) == steps
        probes = pd.read_csv(results / f"probes/{run}.csv")
        assert len(probes) == 4 * (len(steps) + 1)
    assert sorted(pd.read_csv(results / "probes/probe_metrics.csv").run.unique()) == sorted(runs)

    matrix = pd.read_csv(results / "cka/pt1/matrix.csv")
    assert len(matrix) == 4 * 4 * 3 * 3  # layers x estimators (biased, debiased, calibrated, mutual_knn) x 3 x 3
    assert set(matrix.estimator) == {"biased", "debiased", "calibrated", "mutual_knn"}
    diagonal = matrix.row == matrix.column
    assert matrix[diagonal].n.eq(0).all() and matrix[diagonal]["mean"].isna().all()
    assert matrix[~diagonal].n.eq(1).all() and matrix[~diagonal]["mean"].between(-1, 1).all()
    pairs = pd.read_csv(results / "cka/pt1/pairs.csv")
    assert len(pairs) == 4 * 4 * 3
    wide = pairs.pivot_table(index=["layer", "run_a", "run_b"], columns="estimator", values="cka")
    assert (wide.calibrated < wide.biased).all() and wide.mutual_knn.between(0, 1).all()
    counts = pd.read_csv(results / "cka/task_count.csv")
    assert set(zip(counts.variant_a, counts.variant_b)) == {("pt1-1", "pt1-6")}  # pt1-7 left out (§12)
    assert len(counts) == 4 * 4

    ni = pd.read_csv(results / "generalization/normalized_improvement.csv")
    assert len(ni) == 3 * 7 and ni.ni.between(0, 1.5).all()
    ftwb1 = pd.read_csv(results / "generalization/ftwb1_matrix.csv")
    assert set(ftwb1.seed.astype(str)) == {"42", "mean"} and set(ftwb1.finetuned_task) == {"distance", "perimeter"}
    deviation = pd.read_csv(results / "generalization/best_teacher_deviation.csv")
    assert len(deviation) == 7 and np.allclose(deviation.deviation, deviation.ni_ftwb2 - deviation.pred)
    points = pd.read_csv(results / "cka/cka_vs_generalization.csv")
    assert sorted(zip(points.finetuned_task, points.evaluated_task)) == [("distance", "perimeter")] * 4 + \
        [("perimeter", "distance")] * 4  # biased, debiased, calibrated and mutual k-NN
    atlantis = pd.read_csv(results / "probes/atlantis_summary.csv").set_index("group")
    assert atlantis.loc["atlantis_with_distance", "models"] == 1
    assert atlantis.loc["atlantis_without_distance", "models"] == 0
    assert atlantis.loc["baseline", "cities"] == 100 and atlantis.control_atlantis_mean.notna().all()


def test_smoke_run_draws_every_figure_and_the_report(workflow):
    """Every §13 figure this grid supports, as a valid PNG of its kind's size plus PDF and CSV; the report
    lists them all; and with figures and report in place nothing is planned."""
    import matplotlib.image

    from worldrep import figures

    results = workflow / "results"
    names = {p.stem for p in (results / "figures").glob("*.png")}
    estimators = ("biased", "debiased", "estimators")  # the paper's two, and all four side by side
    assert names == {"world_map", "ftwb1_matrix", "deviation_matrix", "deviation_histogram", "atlantis_histogram",
                     *(f"cka_{f}_{e}" for f in ("pt1", "pt2", "pt3") for e in estimators),
                     *(f"cka_task_count_{e}" for e in estimators), *(f"cka_vs_generalization_{e}" for e in estimators),
                     # §13.2, 13.6, 13.12 with the smoke grid's models: D is its only main-view task, pt2-1 its
                     # only two-task panel, pt1-1/pt1-6 its non-crossing gallery, ftwb2-13 its only exemplar
                     "representation_views", "two_task_views", "pca_gallery", "dynamics_views", "views_pt7_s42",
                     "views_pt7-atl_s42", *(f"training_curves_pt1-{k}_s42" for k in (1, 6, 7)),
                     "checkpoint_metrics_pt7_s42", "atlantis_predictions"}
    sizes = {tuple(round(v * figures.DPI) for v in size) for size in figures.FIGSIZE.values()}
    for name in names:
        png = results / f"figures/{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = matplotlib.image.imread(png).shape[:2]
        assert (width, height) in sizes, name
        assert (results / f"figures/{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (results / f"figures/{name}.csv").stat().st_size > 0
    assert matplotlib.image.imread(results / "figures/world_map.png").shape[:2] == (825, 1500)
    snakemake(workflow, "--configfile", SMOKE, "--report", "results/report.html")
    html = (results / "report.html").read_text(errors="replace")
    assert all(f"{name}.png" in html for name in names)
    tables = ["health_report.csv", "metrics.csv", "atlantis_summary.csv", "task_count_summary.csv",
              "cka_vs_generalization_fit.csv", "claims.csv"]
    assert all(table in html for table in tables)
    assert "Made with config" in html and "smoke" in html  # captions name the config
    import pandas as pd

    claims = pd.read_csv(results / "claims.csv")  # smoke runs are noise: nothing about maps is decided
    assert list(claims["claim"]) == list(range(1, 9)) and set(claims["status"]) <= {"not reached", "does not hold"}
    assert "Claims checklist (METHOD §15): config `smoke`" in (results / "claims.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "worldrep.archive", "create", "--name", "smoke", "--config", SMOKE],
                          cwd=workflow, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (results / "archive/smoke.tar.gz").stat().st_size > 0
    assert planned_jobs(workflow) == set()  # report and archive in place: nothing to rebuild


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    """Debian's `chromium`; asked for before `workflow`, so that a run of the browser test alone skips before the
    smoke DAG is built. A skip unless WORLDREP_REQUIRE_CHROMIUM is set, as CI (.ci/run) does: then a failure."""
    import chromium

    if binary := chromium.find_chromium():
        return binary
    reason = "no chromium on PATH (Debian: apt-get install --no-install-recommends chromium)"
    if os.environ.get("WORLDREP_REQUIRE_CHROMIUM"):
        pytest.fail(f"WORLDREP_REQUIRE_CHROMIUM is set, but {reason}")
    pytest.skip(reason)


def test_report_renders_in_headless_chromium(chromium_binary, workflow, tmp_path):
    """The smoke report as a reader sees it: headless Chromium opens results/report.html and goes through
    the menu to every figure and table the report registers, by clicking, as a reader would. Every figure's image
    loads at its PNG's size; every table's view (Snakemake 9 offers a download of the CSV) gives the table's rows;
    no JavaScript error, console error or failed load. Scrolled to the top, every figure starts inside the pane (the
    report stylesheet; the PCA gallery is taller than the window). Screenshots of the landing page, the world map's
    page and the PCA gallery's, from its top, stay in tmp_path (and are copied to the folder
    WORLDREP_KEEP_SCREENSHOTS names, when it is set)."""
    import csv

    import chromium

    results = workflow / "results"
    if not (results / "report.html").exists():  # run alone (-k): the previous test makes it otherwise
        snakemake(workflow, "--configfile", SMOKE, "--report", "results/report.html")
    downloads = tmp_path / "downloads"
    problems, shown, screenshots = [], set(), []
    with chromium.Chromium(chromium_binary, tmp_path / "browser") as browser:
        browser.allow_downloads(downloads)
        page = browser.new_page()
        page.navigate((results / "report.html").as_uri(), timeout=60)
        page.wait_for("typeof app === 'object' && document.querySelectorAll('nav ul a').length > 0", "the menu")
        page.wait_for("document.querySelector('#app svg.marks, #app canvas') !== null", "the landing page's rule graph")
        screenshots.append(page.screenshot(tmp_path / "report_landing.png"))
        assert page.evaluate(chromium.SNAKEMAKE_REPORT_JS)
        page.note("Statistics")  # the runtime and timeline charts (vega), then the embedded packages (About)
        page.wait_for("__wr.click('Statistics')", "the menu item 'Statistics'")
        page.wait_for("app.state.content === 'stats' && document.querySelectorAll('#app canvas').length >= 2",
                      "the statistics charts")
        page.note("About")
        page.wait_for("__wr.click('About')", "the menu item 'About'")
        page.wait_for("app.state.navbarMode === 'reportinfo' && __wr.links().some(a => /^snakemake /.test(a.text))",
                      "the list of embedded packages")
        registered = {path: (mime, category, sub) for path, mime, category, sub in page.evaluate("__wr.registered()")}
        figures = {path for path, (mime, _, _) in registered.items() if mime == "image/png"}
        tables = {path for path, (mime, _, _) in registered.items() if mime == "text/csv"}
        drawn = {f"results/figures/{p.name}" for p in (results / "figures").glob("*.png")}
        assert figures == drawn, f"figures drawn but not in the report: {sorted(drawn - figures)}; " \
            f"in the report but not drawn: {sorted(figures - drawn)}"
        assert tables and not set(registered) - figures - tables, \
            f"registered results of a kind this test does not check: {sorted(set(registered) - figures - tables)}"
        for category, sub in sorted({(category, sub) for _, category, sub in registered.values()}):
            where = f"{category} / {sub}"
            page.note(where)
            page.evaluate("__wr.home()")
            page.wait_for("app.state.navbarMode === 'menu'", "the menu")
            page.wait_for(f"__wr.click({json.dumps(category)})", f"the menu item {category!r}")
            view = page.wait_for("app.state.navbarMode.endsWith('category') && app.state.navbarMode", f"{where}'s view")
            if view == "category":  # a category of several subcategories lists them first
                page.wait_for(f"__wr.click({json.dumps(sub)})", f"the subcategory item {where!r}")
            listed = sorted(path for path, (_, c, s) in registered.items() if (c, s) == (category, sub))
            labels = page.wait_for(f"__wr.rows().length === {len(listed)} && __wr.rowLabels()",
                                   f"{where}: a row for each of {listed}")
            for i, label in enumerate(labels):
                mark = len(browser.events)
                page.note(f"{where} / {label}")
                downloaded = page.evaluate(f"__wr.view({i})")
                if downloaded is None:  # a figure: shown in the content pane
                    page.wait_for(f"__wr.selected({i})", f"{where}: row {label!r} selected")
                    path = page.evaluate("app.state.resultPath")
                    width, height, box = page.wait_for(f"__wr.image({json.dumps(path)})", f"the image of {path}")
                    png = (workflow / path).read_bytes()
                    expected = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # IHDR
                    if (width, height) != expected or box <= 0:
                        problems.append(f"figure {path}: image {width}x{height} shown {box:g} px wide, "
                                        f"expected {expected[0]}x{expected[1]} (0 = broken image)")
                    top, left, tall, pane = page.evaluate(f"__wr.fromTop({json.dumps(path)})")
                    if top < 0 or left < 0:  # rules/captions/report.css: a tall figure is shown from its top
                        problems.append(f"figure {path}: scrolled to the top, its image starts {-top:g} px above "
                                        f"and {max(0, -left):g} px left of the pane")
                    if path.endswith(("/world_map.png", "/pca_gallery.png")):
                        name = Path(path).stem
                        screenshots.append(page.screenshot(tmp_path / f"report_figure_{name}.png"))
                        if name == "pca_gallery":
                            assert tall > pane, f"the PCA gallery ({tall:g} px) no longer outgrows the pane " \
                                f"({pane:g} px): this check of a tall figure's top would check nothing"
                else:  # a table: its view is a download of the CSV
                    path = downloaded
                    guid = browser.wait_event("Browser.downloadWillBegin", since=mark)["guid"]
                    done = browser.wait_event("Browser.downloadProgress", since=mark,
                                              predicate=lambda p, g=guid: p["guid"] == g and p["state"] != "inProgress")
                    if done["state"] != "completed":
                        problems.append(f"table {path}: download {done['state']}")
                        continue
                    with open(downloads / guid, newline="") as f:
                        rows = list(csv.reader(f))
                    with open(workflow / path, newline="") as f:
                        source = list(csv.reader(f))
                    if len(rows) < 2 or rows != source:
                        problems.append(f"table {path}: the report's view has {len(rows) - 1} rows under its header "
                                        f"{rows[:1]}, results/ {len(source) - 1} rows")
                shown.add(path)
        errors = page.errors()
    assert not problems, "\n".join(problems)
    assert shown == set(registered), f"registered but not reachable through the menu: {sorted(set(registered) - shown)}"
    assert not errors, "JavaScript errors in the report:\n" + "\n".join(errors)
    assert len(screenshots) == 3
    if keep := os.environ.get("WORLDREP_KEEP_SCREENSHOTS"):
        import shutil

        Path(keep).mkdir(parents=True, exist_ok=True)
        screenshots = [Path(shutil.copy2(p, keep)) for p in screenshots]
    print("report screenshots:", *screenshots)


def test_plan_of_the_finished_smoke_folder(workflow, smoke_config):
    """The plan (worldrep/plan.py) against what the smoke run made: its disk estimate within 15% of the
    folder's size, and with every final model in place nothing left to train."""
    from worldrep import plan

    results = workflow / "results"
    # The store's files once: the published models are hard links to them.
    made = sum(p.stat().st_size for p in results.rglob("*") if p.is_file()
               and p.relative_to(results).parts[0] not in ("logs", "benchmarks", "archive", "report.html", "store"))
    estimate = plan.disk_bytes(smoke_config, plan.n_cities(smoke_config))
    assert 0.85 < estimate / made < 1.15, (estimate, made)
    proc = subprocess.run([sys.executable, "-m", "worldrep.plan", "--configfile", SMOKE, "--gpus", "0"],
                          cwd=workflow, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("plan (smoke): 0 of 10 runs to train in 0 stack(s)"), proc.stdout
    assert "optimizer steps 0; run-steps 0; other jobs ~0" in proc.stdout


def test_archive_recompute_agrees_with_snakemakes_records(workflow):
    """`archive verify --recompute` on the smoke archive: the tables that follow from the evaluation
    table recompute, and every analysis job it would run is the one Snakemake ran (params and inputs against
    Snakemake's own records), so its copy of the planning in rules/common.smk has not drifted."""
    archive = workflow / "results/archive/smoke.tar.gz"
    if not archive.exists():  # run alone (-k): the report test makes it otherwise
        subprocess.run([sys.executable, "-m", "worldrep.archive", "create", "--name", "smoke", "--config", SMOKE],
                       cwd=workflow, capture_output=True, check=True)
    proc = subprocess.run([sys.executable, "-m", "worldrep.archive", "verify", str(archive), "--no-rederive",
                           "--recompute"], cwd=workflow, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "RECORD" not in out and "DIFFERS" not in out, out
    checked = int(re.search(r"checked against Snakemake's records of (\d+) jobs", out).group(1))
    assert checked >= 18, out  # probes per run, probe table, Atlantis, CKA families, task count, generalization, fit
    assert re.search(r"recompute: [1-9]\d* tables match, 0 differ", out), out
    assert "recompute: ok       results/generalization/ftwb1_matrix.csv" in out, out


def test_a_second_architecture_runs_through_every_stage(workflow, smoke_config, tmp_path):
    """A variant at smoke size: smoke.yaml's `small` variant (hidden 64, 4 heads, 4 layers, layers 2-4) turned on over
    a copy of the finished smoke folder plans exactly its 4 runs, their per-run jobs and its analyses; it trains,
    evaluates and extracts 128-d features; its CKA against the 256-d main-grid pt7 matches the reference
    definition; every model loads with the Auto classes under its own config; editing its width replans exactly
    its jobs, and the main grid stays planned out."""
    import shutil

    import numpy as np
    import pandas as pd
    from transformers import AutoConfig, AutoModelForCausalLM

    from worldrep.cka import kernel_cka
    from worldrep.grid import model_settings, training_runs
    from worldrep.representations import load_representations

    work = tmp_path / "workflow"
    shutil.copytree(workflow, work, symlinks=True)  # results and .snakemake, mtimes kept
    (work / "small.yaml").write_text(yaml.safe_dump({"variants": {"small": {"enabled": True}}}))
    files = (SMOKE, "small.yaml")
    config = yaml.safe_load(yaml.safe_dump(smoke_config))
    config["variants"]["small"]["enabled"] = True
    runs = [r for r in training_runs(config) if r.variant == "small"]
    assert [r.name for r in runs] == ["pt7-small_s42", "ftwb1-1-small_s42", "ftwb1-6-small_s42", "ftwb2-13-small_s42"]
    expected = {"pretrain_pt7_small", "finetune_ftwb1_small", "finetune_ftwb2_small", "all"}
    expected |= {f"{rule}[mixture={r.mixture}-small,seed=42]" for r in runs
                 for rule in ("evaluate", "representations", "probes", f"{r.kind.removesuffix('ing')}ed_model")}
    expected |= {f"{rule}[variant=small]" for rule in (
        "variant_evaluation_table", "variant_probe_table", "variant_generalization", "variant_atlantis_reconstruction",
        "variant_cka", "variant_figure_ftwb1_matrix", "variant_figure_ftwb2_matrix", "variant_figure_deviation_matrix",
        "variant_figure_atlantis_histogram")}
    assert planned_jobs(work, files) == expected
    snakemake(work, "--cores", "2", "--configfile", *files)
    results = work / "results"

    for run in runs:  # 128-d features (2 x hidden 64) at layers 2-4
        ids, reps = load_representations(results / f"representations/{run.name}/final.npz")
        assert sorted(reps) == [2, 3, 4] and {r.shape for r in reps.values()} == {(len(ids), 128)}
        model = AutoModelForCausalLM.from_pretrained(results / f"models/{run.name}/final")
        assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.intermediate_size) == (64, 4, 256)
        assert json.loads((results / f"models/{run.name}/final/run.json").read_text())["model"] == \
            model_settings(config, "small")
    main = AutoConfig.from_pretrained(results / "models/pt7_s42/final")
    assert (main.hidden_size, main.num_hidden_layers) == (128, 6)

    cka = pd.read_csv(results / "variants/small/cka_vs_default.csv")
    assert set(zip(cka.run_a, cka.run_b)) == {("pt7-small_s42", "pt7_s42")} and len(cka) == 3 * 4 * 2
    assert set(cka.width_a) == {128} and set(cka.width_b) == {256}
    cities = pd.read_csv(results / "world/cities.csv")
    atlantis = set(cities.loc[cities.is_atlantis, "city_id"])
    (ids, small), (_, large) = (load_representations(results / f"representations/{r}/final.npz")
                                for r in ("pt7-small_s42", "pt7_s42"))
    keep = ~np.isin(ids, list(atlantis))
    row = cka[(cka.layer_a == 4) & (cka.layer_b == 6) & (cka.estimator == "biased")].cka.item()
    assert row == pytest.approx(kernel_cka(small[4][keep].astype(np.float64), large[6][keep].astype(np.float64)),
                                rel=1e-9)

    table = pd.read_csv(results / "variants/small/evaluation/metrics.csv")
    assert set(table.run) == {r.name for r in runs}
    assert not set(pd.read_csv(results / "evaluation/metrics.csv").run) & {r.name for r in runs}
    ni = pd.read_csv(results / "variants/small/generalization/ftwb1_matrix.csv")
    assert set(ni.finetuned_task) == {"distance", "perimeter"}
    for name in ("ftwb1_matrix", "ftwb2_matrix", "deviation_matrix", "atlantis_histogram"):
        assert (results / f"variants/small/figures/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert planned_jobs(work, files) == set() and planned_jobs(work) == set()
    (work / "small.yaml").write_text(yaml.safe_dump({"variants": {"small": {"enabled": True,
                                                                            "model": {"hidden_size": 32}}}}))
    assert planned_jobs(work, files) == expected  # its width: every job of the variant, nothing of the main grid


# The open questions as experiments (App. C) at smoke size: each experiment's overlay block over smoke.yaml, small.
EXPERIMENTS = {
    "subspace": {"enabled": True, "components": 4},
    "noise": {"enabled": True, "levels": [0.3], "seeds": [42]},
    "gradients": {"enabled": True, "checkpoints": 2, "batches": 2, "batch_size": 16, "seed": 42},
    "scale": {"enabled": True, "sizes": [{"hidden_size": 64, "num_hidden_layers": 2}], "seeds": [42]},
}


def test_the_open_questions_run_at_smoke_size(workflow, smoke_config, tmp_path):
    """All four open-question experiments on over a copy of the finished smoke folder: exactly their jobs are planned
    and run; the noisy datasets hold their clean twins' items with exactly round(p·n) train answers changed and
    val/test byte-identical; the clean condition's CKA is the main grid's pt1 matrix; the scale variant has its own
    architecture and layers; each experiment's own checks pass; and afterwards nothing is planned."""
    import shutil

    import numpy as np
    import pandas as pd
    from transformers import AutoConfig

    import test_gradients
    import test_subspace
    from worldrep.grid import validate_config
    from worldrep.datasets import noise_count

    work = tmp_path / "workflow"
    shutil.copytree(workflow, work, symlinks=True)  # results and .snakemake, mtimes kept
    (work / "experiments.yaml").write_text(yaml.safe_dump({"experiments": EXPERIMENTS}))
    files = (SMOKE, "experiments.yaml")
    config = validate_config({**yaml.safe_load(yaml.safe_dump(smoke_config)), "experiments": EXPERIMENTS})
    singles = ["pt1-1", "pt1-6", "pt1-7"]
    tasks = {"pt1-1": "distance", "pt1-6": "perimeter", "pt1-7": "crossing"}
    new_runs = [f"{m}-{v}_s42" for v in ("noise30", "w64d2") for m in singles]
    expected = {"all", "pretrain_pt1_noise30", "pretrain_pt1_w64d2"}
    expected |= {f"dataset[variant=pretraining-noise30,task={t}]" for t in tasks.values()}
    expected |= {f"pretraining_mixture[mixture={m}-noise30]" for m in singles}
    expected |= {f"{rule}[mixture={run.rsplit('_s', 1)[0]},seed=42]" for run in new_runs
                 for rule in ("evaluate", "representations", "probes", "pretrained_model")}
    expected |= {f"{rule}[variant={v}]" for v in ("noise30", "w64d2")
                 for rule in ("variant_evaluation_table", "variant_probe_table", "variant_cka")}
    expected |= {"noise_summary", "figure_noise_summary", "scale_summary", "figure_scale_summary"}
    expected |= {f"subspace_representations[run=pt7_s42,task={t}]" for t in ("distance", "perimeter")}
    expected |= {"subspace", "figure_subspace_fraction", "figure_subspace_vs_error"}
    expected |= {"gradient_similarity", "gradient_correlation", "figure_gradient_similarity",
                 "figure_gradient_scatter[comparison=cka]", "figure_gradient_scatter[comparison=ftwb1]"}
    assert planned_jobs(work, files) == expected
    snakemake(work, "--cores", "2", "--configfile", *files)
    results = work / "results"

    for task in tasks.values():  # label noise: the clean items, round(p·n) train answers changed, val/test untouched
        clean, noisy = results / f"datasets/pretraining/{task}", results / f"datasets/pretraining-noise30/{task}"
        for split in ("val", "test"):
            assert (noisy / f"{split}.npz").read_bytes() == (clean / f"{split}.npz").read_bytes()
            assert (noisy / f"{split}.txt").read_bytes() == (clean / f"{split}.txt").read_bytes()
        a, b = (np.load(folder / "train.npz") for folder in (clean, noisy))
        assert (a["city_ids"] == b["city_ids"]).all()
        n = len(a["answers"])
        assert (a["answers"] != b["answers"]).sum() == noise_count(n, 0.3) == 75
        meta = json.loads((noisy / "metadata.json").read_text())
        assert meta["label_noise"]["changed"] == 75 and meta["params"]["label_noise"] == 0.3
        assert json.loads((clean / "metadata.json").read_text())["label_noise"] is None
    for m in singles:
        assert json.loads((results / f"models/{m}-noise30_s42/final/run.json").read_text())["mixture"] == f"{m}-noise30"

    summary = pd.read_csv(results / "experiments/noise/summary.csv")
    assert list(summary.group) == ["clean", "clean", "noise30", "noise30"] and list(summary.level) == [0, 0, 0.3, 0.3]
    main = pd.read_csv(results / "cka/pt1/matrix.csv")  # the clean condition is the main grid's pt1 family, seed 42
    main = main[(main.layer == 5) & (main.row != main["column"])]
    for estimator in ("biased", "debiased"):
        cells = main[main.estimator == estimator]
        anchor = (cells.row == "pt1-1") | (cells["column"] == "pt1-1")
        row = summary[(summary.group == "clean") & (summary.estimator == estimator)].iloc[0]
        assert row.anchor_vs_others == pytest.approx(cells[anchor]["mean"].mean(), rel=1e-12)
        assert row.others_vs_others == pytest.approx(cells[~anchor]["mean"].mean(), rel=1e-12)
    probes = pd.read_csv(results / "experiments/noise/probe_r2.csv").set_index("run")
    for m in singles:
        table = pd.read_csv(results / f"probes/{m}-noise30_s42.csv")
        final = table[(table.step.astype(str) == "final") & (table.layer == 5)].iloc[0]
        assert probes.loc[f"{m}-noise30_s42", "r2_mean"] == pytest.approx(final.r2_mean, rel=1e-12)

    scale = pd.read_csv(results / "experiments/scale/summary.csv")
    assert list(dict.fromkeys(scale.group)) == ["w64d2", "model"]  # by parameter count
    assert set(scale[scale.group == "w64d2"].layer) == {1} and set(scale[scale.group == "model"].layer) == {5}
    model = AutoConfig.from_pretrained(results / "models/pt1-6-w64d2_s42/final")
    assert (model.hidden_size, model.num_hidden_layers, model.num_attention_heads) == (64, 2, 2)
    from worldrep.representations import load_representations
    ids, reps = load_representations(results / "representations/pt1-6-w64d2_s42/final.npz")
    assert sorted(reps) == [1, 2] and reps[1].shape == (len(ids), 128)
    for name in ("noise/figures/noise_summary", "scale/figures/scale_summary"):
        assert (results / f"experiments/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    test_subspace.check_smoke_outputs(results, config)
    test_gradients.check_smoke_outputs(results, config)
    assert planned_jobs(work, files) == set() and planned_jobs(work) == set()


def test_training_setting_change_replans_the_runs_it_shapes(workflow, smoke_config):
    """The fine-tuning epochs reach the fine-tuning runs and their evaluations, nothing upstream or beside."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["training"]["finetuning"]["epochs"] += 1
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = downstream_jobs(smoke_config, set(), set(), set(smoke_config["mixtures"]["finetuning"]["mixes"]))
    # publish, evaluate, representations and probes per mix; the two fine-tuning stacks (ftwb1: ftwb1-1, ftwb1-6;
    # ftwb2: ftwb2-13); the combined tables, generalization and what reads it, the Atlantis reconstruction
    # (ftwb2-13), all; 7 figures (FTWB1, deviation matrix and histogram, CKA vs generalization biased, debiased and
    # by estimator, Atlantis histogram), the Atlantis predictions, the health report, the claims
    assert {"finetune_ftwb1", "finetune_ftwb2"} <= expected
    assert len(expected) == 3 * 4 + 2 + 6 + 10
    assert planned_jobs(workflow, "config/edited.yaml") == expected


def test_probe_seed_change_replans_the_probes_only(workflow, smoke_config):
    """The probe seed shapes every probe table and the Atlantis reconstruction, nothing upstream (§11)."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["probes"]["seed"] += 1
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    mix = smoke_config["mixtures"]
    runs = [*mix["pretraining"], *mix["with_atlantis"], *mix["finetuning"]["mixes"]]
    expected = {f"probes[mixture={m},seed=42]" for m in runs} | {"probe_table", "atlantis_reconstruction", "all"}
    # and what draws probes or views: the view figures, training curves, Atlantis figures, health report
    expected |= report_jobs(smoke_config, expected)
    assert {"figure_atlantis_histogram", "figure_representation_views", "health_report"} <= expected
    assert planned_jobs(workflow, "config/edited.yaml") == expected


def test_gpu_lease_settings_replan_nothing(workflow, smoke_config):
    """Where a job runs is not what it computes: packing and the lock folder never replan."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["gpu"] = {"slots_per_device": 4, "lock_dir": "/tmp/elsewhere"}
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    assert planned_jobs(workflow, "config/edited.yaml") == set()


def test_nothing_planned_when_nothing_changed(workflow):
    assert planned_jobs(workflow) == set()


def test_task_settings_change_replans_exactly_that_task(workflow, smoke_config):
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["tasks"]["perimeter"]["city_counts"] = [2, 3, 4]
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = expected_jobs(smoke_config, {"pretraining", "atlantis_required", "with_atlantis"}, {"perimeter"})
    assert planned_jobs(workflow, "config/edited.yaml") == expected
    # Sanity of the expectation itself: some mixtures stay untouched.
    assert "pretraining_mixture[mixture=pt1-1]" not in expected


def test_label_noise_setting_replans_exactly_that_task(workflow, smoke_config):
    """A task's own `label_noise` (METHOD C.2) reaches its datasets and what descends from them, as a task edit does."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["tasks"]["distance"] = {"label_noise": 0.1}
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = expected_jobs(smoke_config, {"pretraining", "atlantis_required", "with_atlantis"}, {"distance"})
    assert planned_jobs(workflow, "config/edited.yaml") == expected


def test_variant_size_change_replans_that_variant_only(workflow, smoke_config):
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["datasets"]["atlantis_required"]["n_test"] += 1
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = expected_jobs(smoke_config, {"atlantis_required"}, set(smoke_config["tasks"]))
    assert planned_jobs(workflow, "config/edited.yaml") == expected
    assert not any(j.startswith("pretraining_mixture") for j in expected)


def test_one_variant_setting_replans_only_that_variant(workflow, smoke_config):
    """Inside's with-Atlantis hull sizes reach only its with-Atlantis set and the control mixture."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["tasks"]["inside"]["hull_sizes_with_atlantis"] = [3, 4, 5]
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = expected_jobs(smoke_config, {"with_atlantis"}, {"inside"})
    assert expected == {"dataset[variant=with_atlantis,task=inside]", "pretraining_mixture[mixture=pt7-atl]", "all",
                        "pretrain_pt7_atl", "pretrained_model[mixture=pt7-atl,seed=42]",
                        "evaluate[mixture=pt7-atl,seed=42]", "evaluation_table",
                        "representations[mixture=pt7-atl,seed=42]", "probes[mixture=pt7-atl,seed=42]", "probe_table",
                        "atlantis_reconstruction", "generalization", "cka_vs_generalization",
                        "figure_atlantis_histogram", "figure_ftwb1_matrix", "figure_deviation_matrix",
                        "figure_deviation_histogram", "figure_cka_vs_generalization[estimator=biased]",
                        "figure_cka_vs_generalization[estimator=debiased]",
                        "figure_cka_vs_generalization_estimators",
                        # the control's own views, the Atlantis predictions (same table), the health report
                        "figure_model_views[run=pt7-atl_s42]", "figure_atlantis_predictions", "health_report",
                        "claims"}
    assert planned_jobs(workflow, "config/edited.yaml") == expected


def test_draw_budget_change_replans_nothing(workflow, smoke_config):
    """max_draw_rounds bounds work, it cannot change a finished dataset: raising it rebuilds nothing."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["datasets"]["max_draw_rounds"] *= 2
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    assert planned_jobs(workflow, "config/edited.yaml") == set()


def test_task_code_edit_replans_exactly_that_task(workflow, smoke_config):
    """A change of code (not a comment: code is tracked by meaning, worldrep.codehash) in one task's module."""
    module = workflow / "worldrep/tasks/angle.py"
    original, stat = module.read_text(), module.stat()
    try:
        module.write_text(original + "\n_EDIT = 1\n")
        expected = expected_jobs(smoke_config, {"pretraining", "atlantis_required", "with_atlantis"}, {"angle"})
        assert planned_jobs(workflow) == expected
    finally:
        module.write_text(original)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(workflow) == set()


# ---- stacks: training.stack family (the smoke config) against mixture -----------------------------------------

MIXTURE = "config/mixture.yaml"


@pytest.fixture(scope="module")
def mixture_workflow(workflow, smoke_config, tmp_path_factory) -> Path:
    """The smoke results retrained under `training.stack: mixture` (one job per mixture) in a copy of the
    workflow: training and evaluation run for real (the store is emptied first: equal recipes would share its
    entries); the rest is marked up to date (`--touch`) so that planning after an edit shows exactly what that
    edit replans in this mode."""
    import shutil

    workdir = copy_workflow(tmp_path_factory.mktemp("mixture"))
    for folder in ("results", ".snakemake"):  # copy2 keeps mtimes: Snakemake must see the same ages
        shutil.copytree(workflow / folder, workdir / folder, symlinks=True)
    shutil.rmtree(workdir / "results/store")
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["training"]["stack"] = "mixture"
    (workdir / MIXTURE).write_text(yaml.safe_dump(edited))
    # Republishing every run and its products needs their entries, so every run trains and is evaluated and extracted
    # again; a missing entry alone would rebuild nothing while what is published from it is up to date (Snakemake
    # rebuilds a missing input only for a job that must run).
    mix = smoke_config["mixtures"]
    models = [f"results/models/{m}_s42/final" for m in [*mix["pretraining"], *mix["with_atlantis"],
                                                         *mix["finetuning"]["mixes"]]]
    snakemake(workdir, "--cores", "2", "results/evaluation/metrics.csv", *models, "--forcerun", "pretrained_model",
              "finetuned_model", "evaluate", "evaluate_checkpoints", "representations", "checkpoint_representations",
              "--configfile", MIXTURE)
    snakemake(workdir, "--touch", "--cores", "1", "--configfile", MIXTURE)
    return workdir


def test_family_stacks_plan_fewer_training_jobs_than_mixture_stacks(tmp_path, smoke_config):
    """From scratch: one training job per family (7) against one per mixture (10), every run in exactly one."""
    workdir = copy_workflow(tmp_path)
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["training"]["stack"] = "mixture"
    (workdir / MIXTURE).write_text(yaml.safe_dump(edited))
    training = {mode: {job for job in planned_jobs(workdir, config) if job.startswith(("pretrain_", "finetune_"))}
                for mode, config in (("family", SMOKE), ("mixture", MIXTURE))}
    assert training["family"] == {"pretrain_pt1", "pretrain_pt2", "pretrain_pt3", "pretrain_pt7", "pretrain_pt7_atl",
                                  "finetune_ftwb1", "finetune_ftwb2"}
    mix = smoke_config["mixtures"]
    every = [*mix["pretraining"], *mix["with_atlantis"], *mix["finetuning"]["mixes"]]
    assert training["mixture"] == {training_job(edited, m) for m in every} and len(training["mixture"]) == 10


def test_family_stacks_train_the_runs_of_mixture_stacks(workflow, mixture_workflow, smoke_config):
    """Every smoke run trained in its family's stack against the same run in its mixture's stack (alone: one seed
    per mixture). On the CPU a stack computes run by run at each run's own width, so the weights agree bit for bit
    (1e-5 would be enough; a fused stack on a GPU pads to its widest mixture: tests/test_stack.py), and so do
    the evaluation tables."""
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    mix = smoke_config["mixtures"]
    runs = [f"{m}_s42" for m in [*mix["pretraining"], *mix["with_atlantis"], *mix["finetuning"]["mixes"]]]
    for run in runs:
        stacks = [json.loads((root / "results/store" / json.loads((root / f"results/models/{run}/final/run.json")
                                                                 .read_text())["recipe_hash"] / "complete.json")
                             .read_text())["stack"] for root in (workflow, mixture_workflow)]
        assert stacks == [stack_of(smoke_config, run[:-4]), run[:-4]]  # both were really trained, in their modes
        a, b = (load_file(root / f"results/models/{run}/final/model.safetensors")
                for root in (workflow, mixture_workflow))
        assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a), run
    family, mixture = (pd.read_csv(root / "results/evaluation/metrics.csv") for root in (workflow, mixture_workflow))
    assert family.equals(mixture)


@pytest.mark.parametrize("mode", ["family", "mixture"])
def test_distance_edit_replans_exactly_its_runs(workflow, mixture_workflow, smoke_config, mode):
    """A code change in the distance task under each `training.stack`: its datasets, mixtures and descendants; a
    stack trains only its stale runs (family: pt1 trains pt1-1 alone, pt2 pt2-1, ...; mixture: one job per mixture
    with distance, and every fine-tuning mix of pt7)."""
    workdir, configfile = (workflow, SMOKE) if mode == "family" else (mixture_workflow, MIXTURE)
    config = yaml.safe_load((workdir / configfile).read_text())
    module = workdir / "worldrep/tasks/distance.py"
    original, stat = module.read_text(), module.stat()
    try:
        module.write_text(original + "\n_EDIT = 1\n")
        expected = expected_jobs(config, {"pretraining", "atlantis_required", "with_atlantis"}, {"distance"})
        training = {job for job in expected if job.startswith(("pretrain_", "finetune_"))}
        assert training == ({"pretrain_pt1", "pretrain_pt2", "pretrain_pt7", "pretrain_pt7_atl", "finetune_ftwb1",
                             "finetune_ftwb2"} if mode == "family" else
                            {"pretrain_pt1_1", "pretrain_pt2_1", "pretrain_pt7", "pretrain_pt7_atl", "finetune_ftwb1_1",
                             "finetune_ftwb1_6", "finetune_ftwb2_13"})
        # the runs without distance keep their models and everything made from them
        assert not {j for j in expected if re.search(r"mixture=(pt1-6|pt1-7|pt3-2),", j)}
        assert planned_jobs(workdir, configfile) == expected
    finally:
        module.write_text(original)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(workdir, configfile) == set()


def test_gpu_window_rehearsal_writes_the_evidence_of_a_window(workflow, tmp_path, smoke_config):
    """`benchmarks/gpu_window.py --rehearse --budget-min 6 --bundle B` on this smoke results folder:
    every stage done on the CPU within 6 minutes; B holds exactly summary.md and evidence.tar.gz, which
    `gpu_bundle.py unpack` turns into an evidence folder with the canary, the throughput rows and the HF Trainer
    baseline, the determinism figures and the stack invariant, and the smoke config's checklist (every §15 claim
    with a status), health report and every figure; small enough to commit."""
    import pandas as pd

    work, bundle = tmp_path / "work", tmp_path / "bundle"
    work.mkdir()
    (work / "smoke").symlink_to(workflow)  # the window's copy of the workflow for `smoke`: this finished one
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_window.py", "--rehearse", "--budget-min", "6", "--bundle",
                           str(bundle), "--work", str(work)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - began < 6 * 60
    assert sorted(p.name for p in bundle.iterdir()) == ["evidence.tar.gz", "summary.md"]
    unpacked = subprocess.run([sys.executable, "benchmarks/gpu_bundle.py", "unpack", str(bundle), "--into",
                               str(tmp_path / "evidence")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert unpacked.returncode == 0, unpacked.stderr
    [out] = (tmp_path / "evidence").iterdir()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-cpu-window", out.name)
    summary = (out / "summary.md").read_text()
    assert summary == (bundle / "summary.md").read_text()
    stages = dict(re.findall(r"^\| (install|facts|canary|throughput|determinism|rates|reproduction: smoke) \| "
                             r"(\w+) \|", summary, flags=re.MULTILINE))
    assert stages == {"install": "done", "facts": "done", "canary": "done", "throughput": "done",
                      "determinism": "done", "rates": "done", "reproduction: smoke": "done"}, summary
    assert "max |Δ weight| 0, max |Δ loss| 0" in (out / "canary.txt").read_text()
    throughput = (out / "throughput.txt").read_text()
    assert len(re.findall(r"^\s+[12]  (run by run|fused) ", throughput, flags=re.MULTILINE)) == 4, throughput
    assert re.search(r"^HF Trainer \(\w+, 2 workers\): [0-9.]+ ms per step", throughput, flags=re.MULTILINE), throughput
    assert "stack invariance (cpu, fused, 2 steps, fp32): run 0 in a stack of 2 vs alone: identical weights" in \
        (out / "determinism.txt").read_text()
    # The rates stage: every rate the plan reads, measured, in facts.json and as the plan.rates block it prints.
    facts = json.loads((out / "facts.json").read_text())
    measured = facts["rates"]["plan"]["rates"]["cpu"]
    assert set(measured) == {"job_start_s", "model_load_s", "eval_10k_s", "extract_s", "checkpoint_s", "source"}
    assert all(measured[key] > 0 for key in measured if key != "source") and "measured" in measured["source"]
    assert [row["k"] for row in facts["rates"]["stacked_decoding"]] == [2]
    assert "## Rates (`rates.txt`)" in summary and re.search(r"^\s+eval_10k_s: [0-9.]+$", summary, re.MULTILINE)
    claims = pd.read_csv(out / "smoke/claims.csv")
    assert list(claims["claim"]) == list(range(1, 9)) and claims["status"].isin(
        ["holds", "does not hold", "not reached"]).all()
    assert all(f"| {n} | " in summary for n in range(1, 9))  # the checklist is in the window's summary too
    assert (out / "smoke/evaluation/health_report.csv").exists()
    figures = {p.name for p in (workflow / "results/figures").glob("*.png")}
    assert figures and figures == {p.name for p in (out / "smoke/figures").glob("*.png")}
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 10 * 2 ** 20
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("*.npz"))


def test_task_modules_import_only_the_shared_base():
    """The dataset rule lists `worldrep/tasks/{task}.py` plus shared modules as inputs; a task module that
    imported another task's module would make an edit there invisible to this task's rebuild."""
    import ast

    for module in sorted((REPO / "worldrep/tasks").glob("*.py")):
        if module.name in ("__init__.py", "base.py"):
            continue
        imports = {node.module for node in ast.walk(ast.parse(module.read_text()))
                   if isinstance(node, ast.ImportFrom) and node.level > 0}
        assert imports == {"base"}, (module.name, imports)


# ---- exact rebuilds: the store, stacks of what is stale, code by meaning (METHOD §7.5) ------------------------------

def copied(workflow: Path, tmp_path: Path) -> Path:
    """A copy of the finished smoke workflow, results and Snakemake's records with their mtimes, to change freely."""
    import shutil

    tmp_path.mkdir(parents=True, exist_ok=True)
    workdir = copy_workflow(tmp_path)
    for folder in ("results", ".snakemake"):
        shutil.copytree(workflow / folder, workdir / folder, symlinks=True)
    return workdir


def recipe_hashes(workdir: Path, *configfiles: str) -> dict[str, str]:
    from worldrep.config import merged
    from worldrep.recipes import Recipes

    config = {}
    for path in configfiles:
        config = merged(config, yaml.safe_load((workdir / path).read_text()))
    return Recipes(config, workdir).run_hashes()


def run_files(workdir: Path, run: str) -> dict[str, tuple[str, int]]:
    """(sha256, mtime) of every file made for one run: model, evaluation, representations, probes, views."""
    results = workdir / "results"
    paths = [p for folder in ("models", "evaluation", "representations") for p in (results / folder / run).rglob("*")]
    paths += [results / f"probes/{run}.csv", results / f"views/{run}.csv.gz"]
    return {str(p.relative_to(results)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in paths if p.is_file()}


def test_code_identity_covers_every_module_run(workflow):
    """Every job of the smoke run logged the modules it loaded (WORLDREP_MODULES_LOG); each must be in the static
    closure of the job's script (worldrep.codehash), but what is loaded by name and named in recipes instead: the one
    task module a dataset job loads, and a stack job's extraction module and its runs' prompt task modules (each
    representation product's recipe names them)."""
    from worldrep.codehash import closure, missing_from_closure

    records = [json.loads(line) for line in (workflow / MODULES_LOG).read_text().splitlines()]
    assert len(records) > 100 and {"dataset", "pretrain_pt7", "pretrained_model", "evaluate", "probes", "claims",
                                   "figure_world_map"} <= {r["rule"] for r in records}
    assert any("worldrep/representations.py" in r["modules"] for r in records if r["rule"] == "pretrain_pt7")
    extraction = closure(["worldrep/representations.py"], workflow)  # a stack job loads it by name for its products
    for record in records:
        missing = missing_from_closure(record["modules"], closure([record["script"]], workflow))
        task_modules = [m for m in missing if re.fullmatch(r"worldrep/tasks/\w+\.py", m)]
        if record["rule"].startswith(("pretrain_", "finetune_")):
            assert set(missing) - set(task_modules) <= set(extraction), (record["rule"], missing)
        else:
            assert missing == task_modules and len(task_modules) <= (record["rule"] == "dataset"), (record["rule"],
                                                                                                   missing)


def test_comments_and_touches_rebuild_nothing_but_training_code_retrains_every_run(workflow, smoke_config):
    """A comment in worldrep/stack.py and a touch of every source file plan nothing; a changed constant there plans
    every training job with every run, and its descendants: the whole DAG below the mixtures."""
    module = workflow / "worldrep/stack.py"
    original, stat = module.read_text(), module.stat()
    try:
        module.write_text(original + "\n# a comment\n")
        for path in [workflow / "Snakefile", *(p for d in ("worldrep", "scripts", "rules", "config", "profiles")
                                               for p in (workflow / d).rglob("*") if p.is_file())]:
            path.touch()
        assert planned_jobs(workflow) == set()
        module.write_text(original + "\n_EDIT = 1\n")
        mix = smoke_config["mixtures"]
        every = {*mix["pretraining"], *mix["with_atlantis"], *mix["finetuning"]["mixes"]}
        expected = downstream_jobs(smoke_config, set(), set(), every)
        assert {j for j in expected if j.startswith(("pretrain_", "finetune_"))} == {
            "pretrain_pt1", "pretrain_pt2", "pretrain_pt3", "pretrain_pt7", "pretrain_pt7_atl", "finetune_ftwb1",
            "finetune_ftwb2"}
        assert planned_jobs(workflow) == expected
    finally:
        module.write_text(original)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(workflow) == set()


def test_a_deleted_model_is_republished_not_retrained(workflow, smoke_config):
    final = workflow / "results/models/pt1-6_s42/final"
    aside = final.with_name("final.aside")
    final.rename(aside)  # a rename keeps the folder's files and mtimes for the restore
    try:
        expected = downstream_jobs(smoke_config, set(), set(), set(), republished={"pt1-6"})
        assert "pretrained_model[mixture=pt1-6,seed=42]" in expected
        assert not {j for j in expected if j.startswith(("pretrain_", "finetune_"))}
        assert planned_jobs(workflow) == expected
    finally:
        aside.rename(final)
    assert planned_jobs(workflow) == set()


def test_one_more_seed_trains_that_run_alone(workflow, smoke_config):
    """Seed 43 for pt1-6: pt1's stack trains that run alone; then its analyses, and the tables and figures that read
    every pt1 run (CKA family, gallery) or every run (evaluation and probe tables), nothing of seed 42."""
    (workflow / "config/seed.yaml").write_text(yaml.safe_dump({"training": {"seeds": {"pt1-6": [42, 43]}}}))
    expected = {
        "pretrain_pt1", "pretrained_model[mixture=pt1-6,seed=43]", "evaluate[mixture=pt1-6,seed=43]",
        "representations[mixture=pt1-6,seed=43]", "checkpoint_representations[mixture=pt1-6,seed=43]",
        "probes[mixture=pt1-6,seed=43]", "evaluation_table", "probe_table", "health_report",
        "cka_family[family=pt1]", "cka_task_count", "cka_vs_generalization",
        "figure_cka_matrix[family=pt1,estimator=biased]", "figure_cka_matrix[family=pt1,estimator=debiased]",
        "figure_cka_task_count[estimator=biased]", "figure_cka_task_count[estimator=debiased]",
        "figure_cka_vs_generalization[estimator=biased]", "figure_cka_vs_generalization[estimator=debiased]",
        "figure_cka_estimators[family=pt1]", "figure_cka_task_count_estimators",
        "figure_cka_vs_generalization_estimators", "figure_pca_gallery", "generalization", "figure_ftwb1_matrix",
        "figure_deviation_matrix", "figure_deviation_histogram", "claims", "all"}
    assert planned_jobs(workflow, (SMOKE, "config/seed.yaml")) == expected
    readme = (REPO / "README.md").read_text()  # the README's worked example shows this very list
    shown = re.search(r"<!-- jobs: one more seed -->\n```\n(.*?)```", readme, flags=re.DOTALL).group(1)
    assert shown.splitlines() == sorted(expected)


def test_an_edited_mixture_retrains_its_runs_alone_and_matches_a_clean_build(workflow, smoke_config, tmp_path):
    """An overlay that gives the single-task mixture pt1-7 another task (angle for crossing) plans its mixture, its
    one run and what descends from it; after the run every other run's files keep their bytes and mtimes, and the
    folder equals, byte for byte, a clean build of the edited config (models, tables, figures)."""
    work = copied(workflow, tmp_path / "steps")
    overlay = {"mixtures": {"pretraining": {"pt1-7": ["angle"]}}}
    (work / "config/angle.yaml").write_text(yaml.safe_dump(overlay))
    configs = (SMOKE, "config/angle.yaml")
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["mixtures"]["pretraining"]["pt1-7"] = ["angle"]
    expected = {"pretraining_mixture[mixture=pt1-7]"} | downstream_jobs(edited, set(), {"pt1-7"}, set())
    assert {j for j in expected if j.startswith(("pretrain_", "finetune_"))} == {"pretrain_pt1"}
    assert planned_jobs(work, configs) == expected
    runs = [r for r in result_hashes(work) if r.startswith("models/") and r.endswith("/final/model.safetensors")]
    others = {run.split("/")[1] for run in runs} - {"pt1-7_s42"}
    before = {run: run_files(work, run) for run in others}
    snakemake(work, "--cores", "2", "--configfile", *configs)
    assert {run: run_files(work, run) for run in others} == before
    assert planned_jobs(work, configs) == set()
    (tmp_path / "clean").mkdir()
    clean = copy_workflow(tmp_path / "clean")
    (clean / "config/angle.yaml").write_text(yaml.safe_dump(overlay))
    snakemake(clean, "--cores", "2", "--configfile", *configs)
    stepped, fresh = result_hashes(work), result_hashes(clean)
    assert len(fresh) > 100 and stepped == fresh


def test_an_evaluation_setting_reevaluates_every_run_from_its_stored_weights(workflow, smoke_config, tmp_path):
    """Another evaluation batch size (1,024: a smoke test set in one batch) changes every evaluation's recipe and no
    run's: each stack's job is planned to evaluate its runs from their entries, trains nothing (no model is
    published again) and leaves every model file as it was; the metrics follow their readers, nothing else."""
    work = copied(workflow, tmp_path)
    (work / "config/batch.yaml").write_text(yaml.safe_dump({"evaluation": {"batch_size": 1024}}))
    configs = (SMOKE, "config/batch.yaml")
    planned = planned_jobs(work, configs)
    stacks = {training_job(smoke_config, m) for m in [*smoke_config["mixtures"]["pretraining"],
                                                       *smoke_config["mixtures"]["with_atlantis"],
                                                       *smoke_config["mixtures"]["finetuning"]["mixes"]]}
    assert stacks <= planned and not {j for j in planned if j.startswith(("pretrained_model", "finetuned_model",
                                                                            "representations", "probes"))}
    assert {j for j in planned if j.startswith("evaluate")} == {
        f"evaluate[mixture={r.rsplit('_s', 1)[0]},seed=42]" for r in recipe_hashes(work, SMOKE)} | {
        "evaluate_checkpoints[mixture=pt7,seed=42]"}
    models = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (work / "results").rglob("model.safetensors")}
    snakemake(work, "--cores", "2", "--configfile", *configs)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in models} == models
    assert all("training 0 run(s)" in (work / f"results/logs/stacks/{stack.split('_', 1)[1].replace('_', '-')}.log")
               .read_text() for stack in stacks)
    assert planned_jobs(work, configs) == set()


def test_a_killed_stack_resumes_to_the_same_bytes(workflow, tmp_path):
    """kill -9 of the whole job while pt7's stack trains (after its first resume state), then a rerun: it resumes
    from that state and writes the entry an uninterrupted run wrote, bit for bit."""
    import signal
    import shutil

    from worldrep.training import STATE_FILE

    work = copied(workflow, tmp_path)
    recipe_hash = recipe_hashes(work, SMOKE)["pt7_s42"]
    entry = work / "results/store" / recipe_hash
    uninterrupted = {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()
                     and p.name != "complete.json"}
    shutil.rmtree(entry)
    target = f"results/store/{recipe_hash}/complete.json"
    command = [sys.executable, "-m", "snakemake", "--cores", "1", target, "--configfile", SMOKE]
    state = work / f"results/store/{recipe_hash}.work" / STATE_FILE
    proc = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    began = time.monotonic()
    while not state.exists() and proc.poll() is None and time.monotonic() - began < 300:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (entry / "complete.json").exists()
    snakemake(work, "--unlock", "--configfile", SMOKE)
    snakemake(work, "--cores", "1", target, "--configfile", SMOKE)
    assert "resuming 1 run(s) from step" in (work / "results/logs/stacks/pt7.log").read_text()
    resumed = {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()
               and p.name != "complete.json"}
    assert resumed.keys() == uninterrupted.keys()
    assert [p for p in resumed if resumed[p] != uninterrupted[p]] == []


def test_a_folder_made_before_the_store_is_adopted_without_training(workflow, tmp_path):
    """The adoption route (README): `python -m worldrep.store adopt`, then `snakemake --touch` once. A folder made
    before the store has no store and Snakemake's records of its models carry the old training rules' params, so
    every run would retrain; after adopting nothing is planned and every published model keeps its bytes."""
    import base64
    import shutil

    work = copied(workflow, tmp_path)
    shutil.rmtree(work / "results/store")
    for record in (work / ".snakemake/metadata").iterdir():  # as the stack rules before the store recorded them
        if base64.urlsafe_b64decode(record.name.encode()).decode().startswith("results/models/"):
            record.write_text(json.dumps({**json.loads(record.read_text()), "params": ["'made before the store'"]}))
    models = {p: p.read_bytes() for p in (work / "results/models").rglob("model.safetensors")}
    assert {j for j in planned_jobs(work) if j.startswith(("pretrain_", "finetune_"))} == {
        "pretrain_pt1", "pretrain_pt2", "pretrain_pt3", "pretrain_pt7", "pretrain_pt7_atl", "finetune_ftwb1",
        "finetune_ftwb2"}
    proc = subprocess.run([sys.executable, "-m", "worldrep.store", "adopt", "--configfile", SMOKE], cwd=work,
                          capture_output=True, text=True)
    # every run, with its 10 evaluations and representations, pt7's checkpoint evaluation and the 4 curve runs'
    # checkpoint representations
    assert proc.returncode == 0 and "adopted 10 run(s) and 25 product(s)" in proc.stdout, proc.stdout + proc.stderr
    snakemake(work, "--touch", "--cores", "1", "--configfile", SMOKE)
    assert planned_jobs(work) == set()
    assert {p: p.read_bytes() for p in models} == models
