"""A GPU lease: which device a job uses, when Snakemake's `resources: gpu=1` only says how many jobs run.

Each job takes one free (device, slot) under an exclusive `flock` on `{lock_dir}/gpu-{name}.slot-{j}.lock`
and narrows CUDA_VISIBLE_DEVICES to that device, so the job always sees it as "cuda:0". The kernel drops
a flock when the last descriptor of its open file closes, so a crashed or SIGKILLed job frees its device
without cleanup. `slots_per_device` > 1 packs that many small jobs per device; `--resources gpu=N` then
counts slots. flock is only reliable between processes of one machine: keep lock_dir on a local disk.
Under SLURM the allocation already chose the device, so the lease steps aside.

WORLDREP_DEVICE=cpu puts a job on the CPU whatever GPUs it is given: for test clusters whose GPUs are fake
(tests/test_slurm.py). Without it a GPU never silently becomes a CPU (`job_lease`): a job handed a GPU that torch
cannot use fails at once, and so does a job the lease would put on the CPU while torch sees a CUDA device (no
nvidia-smi in the image) or SLURM says the job has GPUs that CUDA_VISIBLE_DEVICES does not show, rather than
quietly training on the CPU for days.
"""
from __future__ import annotations

import fcntl
import getpass
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NVIDIA_SMI = "nvidia-smi"
DEVICE_ENV = "WORLDREP_DEVICE"


@dataclass
class DeviceLease:
    device: str  # torch device string: "cuda:0" (the leased device, alone in CUDA_VISIBLE_DEVICES) or "cpu"
    name: str | None  # the device as named in CUDA_VISIBLE_DEVICES / nvidia-smi; None for cpu or step-aside
    slot: int | None
    reason: str  # one line for the job log: why this device
    _fd: int | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty lock file reads as "free" to a human; a stale pid means a crash
        finally:
            # Unlock explicitly: forked children (DataLoader workers) share this open file, and closing
            # only our descriptor would leave the lock held until they exit too.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DeviceLease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def visible_devices(environ=os.environ) -> list[str] | None:
    """Entries of CUDA_VISIBLE_DEVICES ("" -> [], meaning no GPU), or None when it is unset."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def detect_devices() -> list[str]:
    """GPU indices from nvidia-smi; [] without it. Not torch: initialising CUDA would fix the visible devices."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def lock_path(lock_dir: Path, name: str, slot: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)  # UUIDs and MIG names ("MIG-GPU-.../1/0") carry slashes
    return Path(lock_dir) / f"gpu-{safe}.slot-{slot}.lock"


def holder_line(environ) -> str:
    """What a held lock file says of its holder: pid, host and, under SLURM, the job, for `scancel`."""
    job = f" slurm_job {environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in environ else ""
    return f"pid {os.getpid()} host {socket.gethostname()}{job}\n"


def try_lock(path: Path, environ=os.environ) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if another open file holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, holder_line(environ).encode())
    return fd


def slot_major(devices: list[str], slots_per_device: int) -> list[tuple[str, int]]:
    """Slot 0 of every device before slot 1 of any, so packed jobs spread over all devices first."""
    return [(name, slot) for slot in range(slots_per_device) for name in devices]


def check_slots(slots_per_device) -> None:
    if isinstance(slots_per_device, bool) or not isinstance(slots_per_device, int) or slots_per_device < 1:
        raise ValueError(f"slots_per_device must be an integer >= 1, got {slots_per_device!r}")


def check_cuda_not_initialised() -> None:
    torch = sys.modules.get("torch")  # never import torch here: importing it is slow and the check needs none
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("CUDA is already initialised in this process: acquire the GPU lease before "
                           "touching CUDA, since CUDA reads CUDA_VISIBLE_DEVICES only once")


# Where SLURM says a job or step has GPUs, whatever CUDA_VISIBLE_DEVICES shows: device index lists, counts
# ("2" or "a100:2"; "0" is none), and the TRES of a task ("cpu=2,gres/gpu=1").
SLURM_GPU_INDICES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
SLURM_GPU_COUNTS = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")


def tres_gpus(item: str) -> int:
    """GPUs in one TRES item: "gres/gpu=2" and "gres/gpu:a100=2" -> 2, "gres/gpu=0" -> 0, "cpu=2" -> 0."""
    if "gpu" not in item:
        return 0
    count = re.search(r"[=:](\d+)$", item)
    return int(count.group(1)) if count else 1


def slurm_gpus(environ) -> list[str]:
    """The SLURM variables that give this job GPUs ("SLURM_JOB_GPUS=0"), [] when none does."""
    found = []
    for name in (*SLURM_GPU_INDICES, *SLURM_GPU_COUNTS, "SLURM_TRES_PER_TASK"):
        value = environ.get(name, "").strip()
        if not value or value == "(null)":
            continue
        if name in SLURM_GPU_COUNTS and value.rsplit(":", 1)[-1] == "0":
            continue
        if name == "SLURM_TRES_PER_TASK" and not any(tres_gpus(item) for item in value.split(",")):
            continue
        found.append(f"{name}={value}")
    return found


def step_aside(environ) -> DeviceLease:
    job, visible = environ["SLURM_JOB_ID"], environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible.strip():
        return DeviceLease("cuda:0", None, None, f"SLURM job {job}: the allocation's GPU "
                           f"(CUDA_VISIBLE_DEVICES={visible}), no lease taken")
    given = slurm_gpus(environ)
    if given:
        raise RuntimeError(f"SLURM job {job} has GPUs ({', '.join(given)}) but CUDA_VISIBLE_DEVICES is "
                           f"{'empty' if 'CUDA_VISIBLE_DEVICES' in environ else 'unset'}: refusing to run on the CPU "
                           f"instead; set {DEVICE_ENV}=cpu to do that on purpose")
    return DeviceLease("cpu", None, None, f"SLURM job {job}: no GPU in the allocation, running on cpu")


def candidates(devices, environ) -> tuple[list[str], str]:
    """The devices to lease from, and where that list came from (for the reason line)."""
    if devices is not None:
        return list(devices), "the configured device list"
    visible = visible_devices(environ)
    if visible is not None:
        return visible, f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r}"
    return detect_devices(), NVIDIA_SMI


def first_free(lock_dir: Path, order: list[tuple[str, int]], environ=os.environ) -> tuple[str, int, int] | None:
    for name, slot in order:
        fd = try_lock(lock_path(lock_dir, name, slot), environ)
        if fd is not None:
            return name, slot, fd
    return None


def wait_for_slot(lock_dir: Path, order, poll_seconds, timeout_seconds, log, environ=os.environ
                  ) -> tuple[str, int, int]:
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    logged = False
    while (found := first_free(lock_dir, order, environ)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no free GPU slot in {lock_dir} after {timeout_seconds} s "
                               f"({len(order)} slots, all held)")
        if not logged:
            log(f"all {len(order)} GPU slots in {lock_dir} are held; waiting for one to free up")
            logged = True
        remaining = poll_seconds if deadline is None else max(0.0, deadline - time.monotonic())
        time.sleep(min(poll_seconds, remaining))
    return found


def forced_cpu(environ) -> bool:
    value = environ.get(DEVICE_ENV, "")
    if value not in ("", "cpu"):
        raise ValueError(f"{DEVICE_ENV}={value!r}: the only override is 'cpu' (unset: use the GPU if there is one)")
    return value == "cpu"


def acquire_device(lock_dir, *, devices=None, slots_per_device=1, poll_seconds=1.0, timeout_seconds=None,
                   environ=os.environ, log=print) -> DeviceLease:
    """Lease one free (device, slot), waiting for one if all are held; see the module docstring."""
    check_slots(slots_per_device)
    if forced_cpu(environ):
        # What the job was given, for the log: a test checks that SLURM handed each GPU job a device.
        given = ", ".join(f"{k}={environ[k]}" for k in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES") if k in environ)
        return DeviceLease("cpu", None, None, f"{DEVICE_ENV}=cpu: running on cpu, no lease taken ({given or 'no GPU'})")
    # A SLURM executor job gets its own GPU: step aside. A whole-node allocation running Snakemake inside it
    # (`sbatch ... snakemake --resources gpu=4`) sees several devices, and its jobs still need leases.
    if "SLURM_JOB_ID" in environ and len(visible_devices(environ) or []) <= 1:
        return step_aside(environ)
    names, source = candidates(devices, environ)
    if not names:
        return DeviceLease("cpu", None, None, f"no GPU in {source}, running on cpu")
    # A dict standing in for the environment (tests, a child's env) cannot be too late for this process.
    if environ is os.environ:
        check_cuda_not_initialised()
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    name, slot, fd = wait_for_slot(lock_dir, slot_major(names, slots_per_device), poll_seconds,
                                   timeout_seconds, log, environ)
    if source == NVIDIA_SMI:
        # nvidia-smi numbers GPUs in PCI bus order, CUDA fastest first: without this, "GPU 1" in the log
        # could be nvidia-smi's GPU 0 on a machine with mixed GPUs.
        environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    environ["CUDA_VISIBLE_DEVICES"] = name
    reason = f"leased GPU {name} from {source}: holding {lock_path(lock_dir, name, slot)}"
    return DeviceLease("cuda:0", name, slot, reason, fd)


def user_name() -> str:
    """The login name, or `uid{N}` where there is none (a container user without a passwd entry, no $USER)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # OSError from Python 3.13, KeyError (pwd) before
        return f"uid{os.getuid()}"


def default_lock_dir() -> Path:
    """Per user and machine, so two workflows on one box share their leases and never share a GPU."""
    return Path(tempfile.gettempdir()) / f"worldrep-gpu-leases-{user_name()}"


def torch_cuda_available() -> bool:
    import torch  # only once the lease has narrowed CUDA_VISIBLE_DEVICES: CUDA reads it once

    return torch.cuda.is_available()


def job_lease(gpu_config: dict, log=print, cuda_available=torch_cuda_available) -> DeviceLease:
    """The lease of one Snakemake job from the config's `gpu` section (lock_dir null -> the default). Unless
    WORLDREP_DEVICE=cpu, a GPU never silently becomes a CPU: a job given a GPU that torch cannot use (no driver, a
    CPU-only torch, a test cluster's fake GPU) is an error, and so is a CPU lease while torch sees a CUDA device
    (nvidia-smi missing, so the lease found none)."""
    lock_dir = gpu_config["lock_dir"] or default_lock_dir()
    lease = acquire_device(lock_dir, slots_per_device=gpu_config["slots_per_device"], log=log)
    log(lease.reason)
    if lease.device == "cpu" and not forced_cpu(os.environ) and cuda_available():
        raise RuntimeError(f"{lease.reason}; but torch sees a CUDA device (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Refusing to run on the CPU instead; "
                           f"set {DEVICE_ENV}=cpu to do that on purpose.")
    if lease.device != "cpu" and not cuda_available():
        lease.release()
        raise RuntimeError(f"{lease.reason}; but torch sees no CUDA device here (no driver, or a CPU-only torch "
                           f"build). Refusing to run on the CPU instead; set {DEVICE_ENV}=cpu to do that on purpose.")
    return lease
