"""The smoke workflow through profiles/slurm on a real, throwaway one-node SLURM cluster (tests/slurm/): GPU rules
reach SLURM with a GPU request and the others without, the cheap rules stay local, and the results are
byte-identical to a local run.

Needs Debian's slurmctld, slurmd, slurm-client and munge, and root (slurmd starts the jobs; the fake GPUs are
device nodes). Skipped without the binaries, unless WORLDREP_REQUIRE_SLURM is set, as CI (.ci/run) does.
The fake GPUs cannot run torch, so the jobs get WORLDREP_DEVICE=cpu (sbatch exports the environment).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from slurm.cluster import Cluster, missing_binaries
from test_workflow import REPO, SMOKE, result_hashes

from worldrep.archive import copy_workflow

pytestmark = pytest.mark.slow

GPU_RULES = {"pretrain", "finetune"}  # the stacks: training, evaluation and extraction in one process
CLUSTER_RULES = GPU_RULES | {"dataset", "pretraining_mixture", "finetuning_mixture", "probes", "atlantis_reconstruction"}
# The plugin's settings a test cluster needs: no accounts, no accounting database (so squeue, not sacct), and
# status checks every second instead of every 40 s (a 3-job chain takes ~40 s instead of ~160 s).
SLURM_ARGS = ["--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks",
              "1", "--seconds-between-status-checks", "1", "--slurm-keep-successful-logs"]
PARTITIONS = "config/partitions.yaml"  # the overlay of the SLURM run: GPU jobs and the rest to their own partitions
TIMEOUT_S = 30 * 60  # a hung status check must fail the test, not hang CI


def unavailable() -> str | None:
    if missing := missing_binaries():
        return f"no SLURM here ({', '.join(missing)} missing): apt-get install slurmctld slurmd slurm-client munge"
    if os.geteuid() != 0:
        return "a test cluster needs root: slurmd starts the jobs, and the fake GPUs are device nodes"
    return None


def snakemake(workdir: Path, *args: str, env: dict[str, str], cluster: Cluster | None = None,
              succeed: bool = True) -> str:
    try:
        proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        out, ok = proc.stdout + proc.stderr, (proc.returncode == 0) == succeed
    except subprocess.TimeoutExpired as e:
        out, ok = f"timed out after {TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}", False
    assert ok, out[-20000:] + (f"\n\ncluster logs:\n{cluster.logs()}" if cluster else "")
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if reason := unavailable():
        if os.environ.get("WORLDREP_REQUIRE_SLURM"):
            pytest.fail(f"WORLDREP_REQUIRE_SLURM is set, but {reason}")
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    """Both copies at once, before either run: the code must not change between them (an edit in this tree
    would otherwise be compared against the code before it)."""
    return {name: copy_workflow(tmp_path_factory.mktemp(name)) for name in ("slurm_run", "local_run")}


@pytest.fixture(scope="module")
def slurm_run(cluster, copies) -> tuple[Path, list[dict[str, str]]]:
    """The smoke run's folder and SLURM's record of each of its jobs (all named after the plugin's run ID)."""
    workdir = copies["slurm_run"]
    env = {**cluster.env, "WORLDREP_DEVICE": "cpu"}
    (workdir / PARTITIONS).write_text(yaml.safe_dump({"slurm": {"gpu_jobs": {"partition": "gpu"},
                                                                "cpu_jobs": {"partition": "main"}}}))
    out = snakemake(workdir, "--profile", "profiles/slurm", *SLURM_ARGS, "--configfile", SMOKE, PARTITIONS, env=env,
                    cluster=cluster)
    # The plan before the first job (worldrep/plan.py): printed under a cluster executor, which it never stops.
    assert "plan (smoke): 10 of 10 runs to train" in out and "jobs go to a cluster executor" in out, out[-3000:]
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    return workdir, [job for job in cluster.jobs() if job["JobName"] == run_id]


@pytest.fixture(scope="module")
def local_run(copies) -> Path:
    workdir = copies["local_run"]
    snakemake(workdir, "--cores", "2", "--configfile", SMOKE, env={**os.environ, "WORLDREP_DEVICE": "cpu"})
    return workdir


def rule_of(job: dict[str, str]) -> str:
    """The plugin's comment on each job: rule_{name} or rule_{name}_wildcards_{values}. The training rules are
    generated, one per stack (pretrain_pt1, finetune_ftwb2, ...): counted as `pretrain` and `finetune`."""
    name = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", job["Comment"]).group(1)
    return re.sub(r"^(pretrain|finetune)_\w+$", r"\1", name)


def test_gpu_rules_get_a_gpu_and_cheap_rules_stay_local(slurm_run):
    """SLURM's own record of every job: which rules were submitted at all, which asked for a GPU (with the default
    profile's threads as CPUs), and which partition each landed in (GPU jobs in `gpu`, the others in `main`)."""
    threads = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text()).get("set-threads", {})
    _, jobs = slurm_run
    assert jobs and all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    submitted = {rule_of(job) for job in jobs}
    assert submitted == CLUSTER_RULES, (f"sent to SLURM but cheap (add to `localrules:` in the Snakefile): "
                                        f"{submitted - CLUSTER_RULES}; not sent: {CLUSTER_RULES - submitted}")
    for job in jobs:
        gpu_request = "gpu" in job.get("TresPerJob", "") + job.get("TresPerNode", "")
        assert gpu_request == (rule_of(job) in GPU_RULES), job
        if gpu_request:
            assert job["TresPerJob"] == "gres:gpu:1", job
        assert job["Partition"] == ("gpu" if gpu_request else "main"), job  # the config's `slurm` block
        assert job["CPUs/Task"] == str(threads.get(rule_of(job), 1)), job


def test_gpu_jobs_are_given_a_device_and_run_without_a_lease(slurm_run):
    """Every GPU job's log names the device SLURM gave it (the lease stepped aside for WORLDREP_DEVICE=cpu)."""
    workdir, jobs = slurm_run
    gpu_jobs = {job["JobId"] for job in jobs if rule_of(job) in GPU_RULES}
    logs = [*(workdir / "results/logs/stacks").iterdir()]  # one per stack, the only GPU jobs
    given = {}
    for log in logs:
        m = re.search(r"WORLDREP_DEVICE=cpu: running on cpu, no lease taken "
                      r"\(SLURM_JOB_ID=(\d+), CUDA_VISIBLE_DEVICES=(\d)\)", log.read_text())
        assert m, f"{log.name}: no lease line naming the SLURM job and its GPU"
        given[m.group(1)] = m.group(2)
    assert set(given) == gpu_jobs and set(given.values()) <= {"0", "1"}


def test_workers_train_the_stacks_the_main_process_planned(slurm_run):
    """Each SLURM worker re-parses the Snakefile, and with it the stale runs of its stack (worldrep.store): every
    stack's job wrote exactly the entries of the runs the main process planned for it, all ten of the smoke grid."""
    from worldrep.grid import training_stacks, validate_config

    workdir, _ = slurm_run
    config = validate_config(yaml.safe_load((workdir / SMOKE).read_text()))
    for stack in training_stacks(config):
        log = (workdir / f"results/logs/stacks/{stack.name}.log").read_text()
        written = re.search(r"writing the entries of (.+?); products:", log).group(1).split(", ")
        assert written == [run.name for run in stack.runs], (stack.name, written)


def test_results_are_identical_to_a_local_run(slurm_run, local_run):
    workdir, _ = slurm_run
    on_slurm, local = result_hashes(workdir), result_hashes(local_run)
    assert len(local) > 100
    assert sorted(on_slurm) == sorted(local)
    assert [p for p in local if on_slurm[p] != local[p]] == []


def test_gpu_job_that_cannot_use_its_gpu_fails_loudly(cluster, tmp_path):
    """Without WORLDREP_DEVICE=cpu, the first GPU job (on a fake GPU torch cannot use) stops, saying why."""
    workdir = copy_workflow(tmp_path)
    env = {k: v for k, v in cluster.env.items() if k != "WORLDREP_DEVICE"}
    snakemake(workdir, "results/models/pt1-1_s42/final", "--profile", "profiles/slurm", *SLURM_ARGS, "--retries", "0",
              "--configfile", SMOKE, env=env, cluster=cluster, succeed=False)
    log = (workdir / "results/logs/stacks/pt1.log").read_text()  # the smoke config's pt1 family stack
    assert "torch sees no CUDA device" in log and "set WORLDREP_DEVICE=cpu" in log, log
