"""A throwaway one-node SLURM cluster (Debian's slurmctld, slurmd and munge) on loopback, for tests/test_slurm.py.

Everything lives under one folder: config, munge key and socket, state, spool, logs and two fake GPUs (character
devices: gres.conf must name device files, and a gres count without them drains the node). Each daemon runs in
the foreground as our child, so `stop` ends exactly the processes `start` began, by their PIDs.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol")


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def free_ports(n: int) -> list[int]:
    """n distinct ports free now (all held open together, so the kernel cannot hand out one twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "etc/slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.root}/bin:{os.environ['PATH']}"}
        self.daemons: list[subprocess.Popen] = []

    def start(self, timeout: float = 60) -> None:
        for sub in ("bin", "etc", "state", "spool", "log", "munge", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        # Inside each job the plugin runs `srun` with every SLURM_* variable removed, SLURM_CONF too, so srun
        # would look for /etc/slurm/slurm.conf (where a real cluster's nodes have it). Jobs inherit our PATH.
        srun = self.root / "bin/srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)
        key = self.root / "munge/munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge = self.root / "munge"
        # --force: munged refuses a socket folder under a world-writable /tmp otherwise.
        self._spawn("munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge}/munge.socket",
                    f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed")
        self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged socket")
        self._spawn("slurmctld", "-D", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-N", "worldrep", "-f", str(self.conf))
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle", timeout,
                   "an idle node")

    def _write_config(self) -> None:
        ctld_port, slurmd_port = free_ports(2)
        # slurmctld insists that SlurmctldHost is this machine's short host name.
        values = {"root": self.root, "host": socket.gethostname().split(".")[0], "ctld_port": ctld_port,
                  "slurmd_port": slurmd_port, "cpus": os.cpu_count()}
        self.conf.write_text(Template((HERE / "slurm.conf").read_text()).substitute(values))
        for minor in (0, 1):
            device = self.root / f"dev/nvidia{minor}"
            if not device.exists():
                os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(195, minor))  # as NVIDIA's /dev/nvidiaN
        (self.root / "etc/gres.conf").write_text(f"NodeName=worldrep Name=gpu File={self.root}/dev/nvidia[0-1]\n")

    def _spawn(self, *cmd: str) -> None:
        log = open(self.root / f"log/{cmd[0]}.out", "w")
        self.daemons.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL))
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"no {what} after {timeout} s (exited: {dead}); logs:\n{self.logs()}")
            time.sleep(0.5)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still holds (all of them: MinJobAge), as `scontrol show job` fields."""
        out = self.run("scontrol", "show", "job", "--oneliner").stdout
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line.strip()]

    def logs(self, lines: int = 30) -> str:
        tails = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge/munged.log"]:
            if path.is_file():
                tails.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(tails)

    def stop(self) -> None:
        """Cancel what is still queued or running (a failed test), then end the daemons we started, newest first."""
        try:
            if len(self.daemons) == 3 and all(proc.poll() is None for proc in self.daemons):
                self.run("scancel", "--full", "--user", getpass.getuser(), check=False)
                self._wait(lambda: not self.run("squeue", "-h", "-t", "RUNNING,COMPLETING").stdout.strip(), 30,
                           "end of the cancelled jobs")
        finally:
            for proc in reversed(self.daemons):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            self.daemons.clear()
