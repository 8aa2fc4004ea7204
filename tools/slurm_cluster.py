#!/usr/bin/env python3
"""Start and stop a one-node SLURM cluster on this machine, for tests and for trying LAUNCH=srun.

Everything the cluster writes (slurm.conf, pid files, logs, spool and state directories) lives
under one state directory; the daemons run as root with authentication off, so use this on a
development machine or in a container, never next to a real cluster's daemons.

  sudo python tools/slurm_cluster.py start --state-dir /tmp/slurm   # prints SLURM_CONF to export
  export SLURM_CONF=/tmp/slurm/slurm.conf
  make -j2 memorization-fashion_demo LAUNCH="srun -N1 -n1 -c1"
  sudo python tools/slurm_cluster.py stop --state-dir /tmp/slurm

From Python:

  with slurm_cluster.start(state_dir) as cluster:
      subprocess.run(["srun", "hostname"], env=cluster.env(), check=True)
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")  # started in this order, stopped in reverse
COMMANDS = DAEMONS + ("srun", "sbatch", "sinfo", "squeue", "scontrol", "scancel")
DEFAULT_PORTS = {"slurmctld": 6817, "slurmd": 6818}
PARTITION = "debug"
PORT_ATTEMPTS = 3    # start() retries on other ports when a daemon finds its port taken
MAX_SOCKET_DIR = 80  # slurmstepd puts unix sockets in the spool dir; their paths must stay < 108


class SlurmError(RuntimeError):
    pass


class SlurmNotInstalledError(SlurmError):
    pass


class ClusterStartError(SlurmError):
    pass


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None]


def ensure_installed() -> None:
    """Install Debian's slurm-wlm with apt-get when a SLURM command is missing (root only)."""
    missing = missing_commands()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmNotInstalledError(
            f"SLURM commands not found ({', '.join(missing)}); install them with "
            "`sudo apt-get install slurm-wlm` (installing needs root)")
    if shutil.which("apt-get") is None:
        raise SlurmNotInstalledError(
            f"SLURM commands not found ({', '.join(missing)}) and apt-get is not available; "
            "install SLURM (slurmctld, slurmd and the client commands) by other means")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm"]):
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SlurmNotInstalledError(
                f"`{' '.join(cmd)}` failed with exit status {proc.returncode}:\n"
                + _tail(proc.stdout, 20))
    missing = missing_commands()
    if missing:
        raise SlurmNotInstalledError(
            f"slurm-wlm installed but still missing: {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# The configuration.

def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port(exclude: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


def choose_ports(defaults: bool = True) -> dict[str, int]:
    """SLURM's default ports where free (if `defaults`), else ports the kernel hands out."""
    ports: dict[str, int] = {}
    for name, default in DEFAULT_PORTS.items():
        taken = set(ports.values())
        free = defaults and default not in taken and _port_free(default)
        ports[name] = default if free else _free_port(taken)
    return ports


def safe_real_memory_mib(fraction: float = 0.8) -> int:
    """A RealMemory (MiB) below what is available now, so slurmd never reports less."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])  # kB
    available = info.get("MemAvailable", info["MemTotal"])
    return max(1, int(available / 1024 * fraction))


def node_topology(cpus: int) -> str:
    """Sockets/cores/threads from `slurmd -C` when they account for exactly `cpus` CPUs.

    With CR_Core, slurmd drains a node whose cores are fewer than configured; giving only CPUs=
    would make SLURM assume one thread per core, which is wrong on hyper-threaded machines.
    """
    try:
        out = subprocess.run(["slurmd", "-C"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    keys = ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    try:
        counts = [int(fields[k]) for k in keys]
    except (KeyError, ValueError):
        return ""
    if counts[0] * counts[1] * counts[2] * counts[3] != cpus:
        return ""  # fewer CPUs usable than present (affinity): CPUs= alone, cores = CPUs
    return " " + " ".join(f"{k}={v}" for k, v in zip(keys, counts))


def slurm_conf(state_dir: Path, host: str, cpus: int, real_memory: int, ports: dict[str, int],
               topology: str = "") -> str:
    return f"""\
# One-node cluster written by tools/slurm_cluster.py; everything lives under {state_dir}.
ClusterName=memolocal
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
MinJobAge=600
SlurmctldPidFile={state_dir}/slurmctld.pid
SlurmdPidFile={state_dir}/slurmd.pid
SlurmctldLogFile={state_dir}/slurmctld.log
SlurmdLogFile={state_dir}/slurmd.log
SlurmdSpoolDir={state_dir}/spool
StateSaveLocation={state_dir}/state
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus}{topology} RealMemory={real_memory} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


# ---------------------------------------------------------------------------------------------
# Processes.

def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _proc_state(pid: int) -> str | None:
    """The process's state letter from /proc, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")  # a zombie has exited (init may not reap it)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Cluster:
    """A one-node cluster whose files all live under `state_dir`."""
    state_dir: Path

    def __post_init__(self):
        self.state_dir = Path(self.state_dir).resolve()

    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    def pid_file(self, daemon: str) -> Path:
        return self.state_dir / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.state_dir / f"{daemon}.log"

    def env(self, base: dict | None = None) -> dict[str, str]:
        """The environment for SLURM commands (srun, sinfo, make LAUNCH=srun ...) here."""
        return dict(os.environ if base is None else base, SLURM_CONF=str(self.conf))

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; output captured as text."""
        return subprocess.run(list(cmd), env=self.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)

    def daemon_pid(self, daemon: str) -> int | None:
        """The pid in the daemon's pid file if that process is this cluster's daemon, else None."""
        pid = _read_pid(self.pid_file(daemon))
        if pid is None or not _alive(pid):
            return None
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != daemon:
                return None  # the pid was reused by another program
        except OSError:
            return None
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return pid  # unreadable environment: trust the name
        if f"SLURM_CONF={self.conf}".encode() not in environ:
            return None  # a daemon of some other cluster
        return pid

    def node_state(self) -> str:
        """sinfo's short state of the node: idle, mix, alloc, unk*, down*, drain..., or ''."""
        try:
            proc = self.run("sinfo", "--noheader", "--Node", "--format=%t", timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def logs_tail(self, lines: int = 25) -> str:
        """The end of each daemon's log and start-up output (errors before its log opens)."""
        parts = []
        outs = [self.state_dir / f"{d}.out" for d in DAEMONS]
        for path in [self.log_file(d) for d in DAEMONS] + outs:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append(f"--- {path} (last {lines} lines)\n{_tail(text, lines)}")
        return "\n".join(parts) or "(no daemon logs written)"

    def controller_state_dir(self) -> str:
        """StateSaveLocation of the slurmctld that answers on this cluster's port ('' if none)."""
        try:
            proc = self.run("scontrol", "show", "config", timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        m = re.search(r"^StateSaveLocation\s*=\s*(\S+)", proc.stdout, re.M)
        return m[1] if m else ""

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until sinfo shows this cluster's node idle; raise with the logs on timeout or if a
        daemon dies (for example because another cluster took its port after we chose it)."""
        t0 = time.monotonic()
        state = ""
        while time.monotonic() < t0 + timeout:
            dead = [d for d in DAEMONS if self.daemon_pid(d) is None]
            if dead and time.monotonic() > t0 + 2:  # give the pid files a moment to appear
                raise ClusterStartError(
                    f"{' and '.join(dead)} exited while starting (node state {state!r}); "
                    f"daemon logs:\n{self.logs_tail()}")
            state = self.node_state()
            # another cluster's slurmctld may answer on our port before ours fails to bind it
            if (state == "idle" and not dead
                    and self.controller_state_dir() == str(self.state_dir / "state")):
                return
            time.sleep(0.25)
        raise ClusterStartError(
            f"the node did not become idle within {timeout:.0f} s (sinfo state {state!r}); "
            f"daemon logs:\n{self.logs_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel this cluster's jobs, stop the daemons named in the pid files, wait for them."""
        if self.daemon_pid("slurmctld") is not None:
            try:  # steps left running would outlive slurmd
                self.run("scancel", f"--partition={PARTITION}", timeout=10)
                deadline = time.monotonic() + timeout
                while self.run("squeue", "--noheader", timeout=10).stdout.strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            except subprocess.TimeoutExpired:
                pass
        for daemon in reversed(DAEMONS):
            pid = self.daemon_pid(daemon)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.1)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _start_daemons(cluster: Cluster, timeout: float) -> None:
    for daemon in DAEMONS:
        for path in (cluster.pid_file(daemon), cluster.log_file(daemon)):
            path.unlink(missing_ok=True)
    for daemon in DAEMONS:
        # -c: start clean (no saved jobs or node state); without -D each daemonizes and writes
        # its pid file, so it outlives this process and `stop` finds it again
        with open(cluster.state_dir / f"{daemon}.out", "w") as out:
            proc = subprocess.run([daemon, "-c"], env=cluster.env(), stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=60)
        if proc.returncode != 0:
            raise ClusterStartError(f"{daemon} -c exited with status {proc.returncode}; "
                                    f"daemon logs:\n{cluster.logs_tail()}")
    cluster.wait_idle(timeout)


def start(state_dir: str | os.PathLike, timeout: float = 60.0) -> Cluster:
    """Write slurm.conf under state_dir, start slurmctld and slurmd, wait until the node is idle."""
    missing = missing_commands()
    if missing:
        raise SlurmNotInstalledError(
            f"SLURM commands not found ({', '.join(missing)}); run ensure_installed() as root "
            "or `sudo apt-get install slurm-wlm`")
    cluster = Cluster(Path(state_dir))
    spool = cluster.state_dir / "spool"
    if len(str(spool)) > MAX_SOCKET_DIR:
        raise ValueError(f"state directory path too long for SLURM's unix sockets "
                         f"({len(str(spool))} > {MAX_SOCKET_DIR} characters): {cluster.state_dir}")
    running = [d for d in DAEMONS if cluster.daemon_pid(d) is not None]
    if running:
        raise ClusterStartError(f"{', '.join(running)} already running from {cluster.state_dir}; "
                                "stop that cluster first")
    for sub in ("spool", "state"):
        (cluster.state_dir / sub).mkdir(parents=True, exist_ok=True)

    cpus = len(os.sched_getaffinity(0))  # what `nproc` prints
    topology = node_topology(cpus)
    for attempt in range(PORT_ATTEMPTS):
        # ports are free when chosen, but a cluster starting beside this one may take them first
        ports = choose_ports(defaults=attempt == 0)
        cluster.conf.write_text(slurm_conf(cluster.state_dir, short_hostname(), cpus,
                                           safe_real_memory_mib(), ports, topology))
        try:
            _start_daemons(cluster, timeout)
            break
        except ClusterStartError:
            cluster.stop()
            if attempt + 1 == PORT_ATTEMPTS or "Address already in use" not in cluster.logs_tail():
                raise
        except BaseException:
            cluster.stop()
            raise
    return cluster


# ---------------------------------------------------------------------------------------------
# Command line.

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--state-dir", required=True, type=Path,
                   help="directory for slurm.conf, pid files, logs, spool and state")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the node to become idle")
    args = p.parse_args(argv)
    try:
        if args.action == "start":
            ensure_installed()
            cluster = start(args.state_dir, args.timeout)
            print(f"slurm_cluster: node {short_hostname()} idle; logs in {cluster.state_dir}\n"
                  f"  export SLURM_CONF={cluster.conf}\n"
                  f"  then e.g.: make -j2 memorization-fashion_demo LAUNCH=\"srun -N1 -n1 -c1\"\n"
                  f"  stop with: {sys.argv[0]} stop --state-dir {cluster.state_dir}")
        else:
            cluster = Cluster(args.state_dir)
            running = [d for d in DAEMONS if cluster.daemon_pid(d) is not None]
            cluster.stop()
            print(f"slurm_cluster: stopped {', '.join(running) or 'nothing (no daemon running)'}")
    except (SlurmError, ValueError) as e:
        print(f"slurm_cluster.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
