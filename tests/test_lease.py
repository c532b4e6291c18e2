"""The GPU lease with fake device names: mutual exclusion across processes, release on SIGKILL, packing,
CUDA_VISIBLE_DEVICES handling, the SLURM step-aside and the WORLDREP_DEVICE override. No GPU needed."""
from __future__ import annotations

import json
import re
import socket
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from worldrep import lease
from worldrep.lease import acquire_device, detect_devices, job_lease, visible_devices

REPO = Path(__file__).resolve().parents[1]

# Waits for "go" on stdin so that all competitors start together, holds a random 30-80 ms, prints the interval.
COMPETITOR = textwrap.dedent("""
    import json, os, random, sys, time
    from worldrep.lease import acquire_device
    print("ready", flush=True)
    sys.stdin.readline()
    env = dict(os.environ)
    with acquire_device(sys.argv[1], devices=["0", "1"], poll_seconds=0.005, environ=env, log=lambda _: None) as l:
        start = time.monotonic()
        time.sleep(random.uniform(0.03, 0.08))
        end = time.monotonic()
    print(json.dumps({"name": l.name, "start": start, "end": end, "visible": env["CUDA_VISIBLE_DEVICES"]}))
""")

HOLDER = textwrap.dedent("""
    import os, sys, time
    from worldrep.lease import acquire_device
    lease = acquire_device(sys.argv[1], devices=["0"], environ=dict(os.environ))
    print("held", lease.name, flush=True)
    time.sleep(60)
""")


def python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLURM_JOB_ID", None)
    env.pop("WORLDREP_DEVICE", None)
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kwargs)


def acquire(lock_dir, **kwargs):
    """A lease on its own environ copy, never waiting unless asked, silent."""
    kwargs = {"environ": {}, "poll_seconds": 0.01, "timeout_seconds": 0, "log": lambda _: None} | kwargs
    return acquire_device(lock_dir, **kwargs)


def test_competing_processes_never_share_a_device(tmp_path):
    procs = [python(COMPETITOR, str(tmp_path)) for _ in range(6)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    records = [json.loads(proc.communicate(timeout=15)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert {r["name"] for r in records} == {"0", "1"}
    assert all(r["visible"] == r["name"] for r in records)
    for name in ("0", "1"):
        intervals = sorted((r["start"], r["end"]) for r in records if r["name"] == name)
        for (_, end), (next_start, _) in zip(intervals, intervals[1:]):
            assert end <= next_start, f"device {name} held twice at once: {intervals}"


def test_sigkilled_holder_frees_its_device(tmp_path):
    holder = python(HOLDER, str(tmp_path))
    try:
        assert holder.stdout.readline().split() == ["held", "0"]
        assert f"pid {holder.pid} " in (tmp_path / "gpu-0.slot-0.lock").read_text()
        with pytest.raises(TimeoutError, match=str(tmp_path)):
            acquire(tmp_path, devices=["0"], timeout_seconds=0.1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    with acquire(tmp_path, devices=["0"], timeout_seconds=5) as second:
        assert (second.device, second.name) == ("cuda:0", "0")


def test_waiting_logs_one_line_then_times_out(tmp_path):
    lines = []
    with acquire(tmp_path, devices=["0"]):
        with pytest.raises(TimeoutError):
            acquire(tmp_path, devices=["0"], poll_seconds=0.01, timeout_seconds=0.1, log=lines.append)
    assert len(lines) == 1 and str(tmp_path) in lines[0]


def test_leases_only_the_visible_devices_and_narrows_to_one(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "detect_devices", lambda: pytest.fail("CUDA_VISIBLE_DEVICES is set"))
    envs = [{"CUDA_VISIBLE_DEVICES": "3,5"} for _ in range(3)]
    first, second = acquire(tmp_path, environ=envs[0]), acquire(tmp_path, environ=envs[1])
    assert {first.name, second.name} == {"3", "5"}
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs[:2]] == [first.name, second.name]
    assert first.device == second.device == "cuda:0"
    with pytest.raises(TimeoutError):
        acquire(tmp_path, environ=envs[2])
    assert envs[2]["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_empty_visible_devices_means_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "detect_devices", lambda: pytest.fail("CUDA_VISIBLE_DEVICES is set"))
    lock_dir = tmp_path / "locks"
    cpu = acquire(lock_dir, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert (cpu.device, cpu.name, cpu.slot) == ("cpu", None, None)
    assert not lock_dir.exists()


def test_no_detected_gpu_means_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "detect_devices", lambda: [])
    assert acquire(tmp_path / "locks").device == "cpu"
    assert not (tmp_path / "locks").exists()


def test_detected_devices_are_leased_in_pci_order(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "detect_devices", lambda: ["0", "1"])
    env = {}
    with acquire(tmp_path, environ=env) as got:
        assert got.name == "0"
        assert env == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_packing_fills_slot_zero_of_every_device_first(tmp_path):
    leases = [acquire(tmp_path, devices=["0", "1"], slots_per_device=2) for _ in range(4)]
    assert [(l.name, l.slot) for l in leases] == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]
    with pytest.raises(TimeoutError):
        acquire(tmp_path, devices=["0", "1"], slots_per_device=2)
    leases[1].release()
    refill = acquire(tmp_path, devices=["0", "1"], slots_per_device=2)
    assert (refill.name, refill.slot) == ("1", 0)
    for held in [refill, *leases]:
        held.release()


def test_lock_file_names_are_sanitised(tmp_path):
    with acquire(tmp_path, devices=["MIG-GPU-ab/1/0"]) as got:
        assert got.name == "MIG-GPU-ab/1/0"
        assert [p.name for p in tmp_path.iterdir()] == ["gpu-MIG-GPU-ab_1_0.slot-0.lock"]


@pytest.mark.parametrize("visible, device", [("2", "cuda:0"), ("", "cpu"), (None, "cpu")])
def test_slurm_steps_aside(tmp_path, visible, device):
    env = {"SLURM_JOB_ID": "42"} | ({} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})
    before = dict(env)
    got = acquire(tmp_path / "locks", devices=["0"], environ=env)
    assert (got.device, got.name, got.slot) == (device, None, None)
    assert "SLURM" in got.reason and env == before
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_slots_per_device_is_an_error(tmp_path, bad):
    with pytest.raises(ValueError, match="slots_per_device"):
        acquire(tmp_path, devices=["0"], slots_per_device=bad)


def test_release_is_idempotent_and_frees_the_device(tmp_path):
    first = acquire(tmp_path, devices=["0"])
    first.release()
    first.release()
    with acquire(tmp_path, devices=["0"]) as second:
        assert second.name == "0"
        with pytest.raises(TimeoutError):
            acquire(tmp_path, devices=["0"])
    acquire(tmp_path, devices=["0"]).release()
    second.release()
    assert (tmp_path / "gpu-0.slot-0.lock").exists()


def test_refuses_when_cuda_is_already_initialised(tmp_path, monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES"):
        acquire(tmp_path, environ=os.environ)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    acquire(tmp_path, environ={"CUDA_VISIBLE_DEVICES": "0"}).release()  # another process's environ: fine


def test_visible_devices_parsing():
    assert visible_devices({}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) == ["GPU-1a2b"]


def test_detect_devices_reads_nvidia_smi_or_finds_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_devices() == []
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    assert detect_devices() == ["0", "1"]
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
    assert detect_devices() == []


def test_slurm_allocation_with_several_gpus_still_leases(tmp_path):
    """Snakemake run inside one multi-GPU allocation (`sbatch ... snakemake --resources gpu=2`): its jobs
    must spread over the allocation's devices, not all land on the first."""
    envs = [{"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "4,7"} for _ in range(2)]
    first = acquire(tmp_path, environ=envs[0])
    second = acquire(tmp_path, environ=envs[1])
    assert {first.name, second.name} == {"4", "7"}
    assert {envs[0]["CUDA_VISIBLE_DEVICES"], envs[1]["CUDA_VISIBLE_DEVICES"]} == {"4", "7"}
    first.release()
    second.release()


@pytest.mark.parametrize("env", [
    {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "1"},  # a SLURM job given a (fake) GPU
    {"CUDA_VISIBLE_DEVICES": "0,1"},
    {},
])
def test_worldrep_device_cpu_overrides_any_gpu(tmp_path, env):
    """A test cluster's fake GPUs: the job runs on the CPU, takes no lease, and its log says what it was given."""
    env = {**env, "WORLDREP_DEVICE": "cpu"}
    before = dict(env)
    got = acquire(tmp_path / "locks", devices=["0"], environ=env)
    assert (got.device, got.name, got.slot) == ("cpu", None, None)
    assert "WORLDREP_DEVICE=cpu" in got.reason and env.get("CUDA_VISIBLE_DEVICES", "no GPU") in got.reason
    assert env == before and not (tmp_path / "locks").exists()


def test_unknown_worldrep_device_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="WORLDREP_DEVICE='cuda'"):
        acquire(tmp_path, devices=["0"], environ={"WORLDREP_DEVICE": "cuda"})


def test_job_given_a_gpu_torch_cannot_use_fails_loudly(tmp_path, monkeypatch):
    """A SLURM job handed a GPU on a node where torch sees no CUDA must not train on the CPU for days."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("WORLDREP_DEVICE", raising=False)
    config = {"lock_dir": str(tmp_path), "slots_per_device": 1}
    with pytest.raises(RuntimeError, match="WORLDREP_DEVICE=cpu"):
        job_lease(config, log=lambda _: None, cuda_available=lambda: False)
    assert job_lease(config, log=lambda _: None, cuda_available=lambda: True).device == "cuda:0"
    monkeypatch.setenv("WORLDREP_DEVICE", "cpu")
    assert job_lease(config, log=lambda _: None, cuda_available=lambda: pytest.fail("not asked")).device == "cpu"


def test_job_lease_frees_the_device_it_cannot_use(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("WORLDREP_DEVICE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(lease, "check_cuda_not_initialised", lambda: None)  # this process may have used torch
    config = {"lock_dir": str(tmp_path), "slots_per_device": 1}
    with pytest.raises(RuntimeError, match="leased GPU 0"):
        job_lease(config, log=lambda _: None, cuda_available=lambda: False)
    acquire(tmp_path, devices=["0"]).release()  # not left held


def test_a_cpu_lease_while_torch_sees_cuda_is_an_error(tmp_path, monkeypatch):
    """No nvidia-smi in the image, so the lease finds no GPU, but torch sees one: the job must not train on the
    CPU; WORLDREP_DEVICE=cpu says it may."""
    for name in ("SLURM_JOB_ID", "WORLDREP_DEVICE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(lease, "detect_devices", lambda: [])
    config = {"lock_dir": str(tmp_path), "slots_per_device": 1}
    with pytest.raises(RuntimeError, match=r"no GPU in nvidia-smi, running on cpu; but torch sees a CUDA device "
                                           r"\(CUDA_VISIBLE_DEVICES=unset\).*WORLDREP_DEVICE=cpu"):
        job_lease(config, log=lambda _: None, cuda_available=lambda: True)
    assert job_lease(config, log=lambda _: None, cuda_available=lambda: False).device == "cpu"
    monkeypatch.setenv("WORLDREP_DEVICE", "cpu")
    assert job_lease(config, log=lambda _: None, cuda_available=lambda: pytest.fail("not asked")).device == "cpu"


@pytest.mark.parametrize("given, refused", [
    ({"SLURM_JOB_GPUS": "0"}, "SLURM_JOB_GPUS=0"),
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_STEP_GPUS": "1,3"}, "SLURM_STEP_GPUS=1,3, SLURM_GPUS_ON_NODE=2"),
    ({"SLURM_TRES_PER_TASK": "cpu=2,gres/gpu=1"}, "SLURM_TRES_PER_TASK=cpu=2,gres/gpu=1"),
    ({"SLURM_TRES_PER_TASK": "cpu=2", "SLURM_GPUS_ON_NODE": "0"}, None),
    ({"SLURM_TRES_PER_TASK": "cpu=2,gres/gpu=0"}, None),
    ({"SLURM_TRES_PER_TASK": "gres/gpu:a100=2"}, "SLURM_TRES_PER_TASK=gres/gpu:a100=2"),
])
def test_a_slurm_job_with_gpus_it_cannot_see_is_refused(tmp_path, given, refused):
    env = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "", **given}
    if refused is None:
        assert acquire(tmp_path, environ=env).device == "cpu"
    else:
        with pytest.raises(RuntimeError, match=f"SLURM job 42 has GPUs \\({re.escape(refused)}\\) but "
                                               "CUDA_VISIBLE_DEVICES is empty"):
            acquire(tmp_path, environ=env)
    assert acquire(tmp_path, environ={**env, "WORLDREP_DEVICE": "cpu"}).device == "cpu"


def test_a_lock_file_names_its_slurm_job(tmp_path):
    env = {"SLURM_JOB_ID": "4242", "CUDA_VISIBLE_DEVICES": "4,7"}  # a whole-node allocation: leases are taken
    with acquire(tmp_path, environ=env) as got:
        text = lease.lock_path(tmp_path, got.name, got.slot).read_text()
    assert text == f"pid {os.getpid()} host {socket.gethostname()} slurm_job 4242\n"


def test_the_lock_dir_falls_back_to_the_uid_without_a_user_name(monkeypatch):
    def nobody():
        raise OSError("No username set in the environment")

    monkeypatch.setattr(lease.getpass, "getuser", nobody)
    assert lease.default_lock_dir().name == f"worldrep-gpu-leases-uid{os.getuid()}"
