"""A throwaway one-node SLURM 22.05 cluster for tests, started and stopped without systemd.

Why this exists: the snakemake SLURM executor plugin only shows its real behaviour (how it reads job
states, when it retries, what it does with a job that can never start) against real ``sbatch``,
``squeue`` and ``sacct``. Mocking those commands would test our guess of SLURM, not SLURM. So this
module brings up a real cluster on the local machine from the Debian 12 packages::

    apt-get install --no-install-recommends munge slurmctld slurmd slurm-client \\
        slurmdbd mariadb-server      # the last two only for accounting (sacct)

Every daemon runs as a child process of the test (never through systemd or init scripts), in its
own process group, with all of its state -- configs, munge key, sockets, pid files, logs, spool,
state save location, database -- under one fresh temporary directory, and on its own free TCP
ports. Two clusters (two test sessions, or a developer's and CI's) therefore never collide, and
nothing under /etc, /var or /run is touched.

Usage::

    with slurm_cluster() as cluster:
        subprocess.run(["sbatch", "--wrap", "sleep 1"], env=cluster.env, check=True)
        subprocess.run(["snakemake", "--executor", "slurm", ...], env=cluster.env, check=True)

``cluster.env`` carries ``SLURM_CONF`` and a ``PATH`` whose first entry holds SLURM client
wrappers that default to it: every SLURM client (and the snakemake plugin, and the jobs themselves,
which the plugin submits with ``--export=ALL``) must get this environment, or they read the absent
/etc/slurm/slurm.conf. Keep your own files out of ``cluster.root``: it is deleted after a clean
exit (kept after a failure, for the daemons' logs).

Missing binaries raise :class:`SlurmUnavailable` before anything is started; the caller decides
whether that is a skip or a failure (see :func:`skip_or_fail`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

#: Set to "1" (e.g. in CI) to turn a missing SLURM installation into a test failure, not a skip.
REQUIRE_ENV = "HARNESS_REQUIRE_SLURM"

#: Commands a cluster without accounting needs. ``srun`` is in the list because the plugin's
#: in-job half (snakemake-executor-plugin-slurm-jobstep) runs every rule through ``srun``.
BASE_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
#: Extra commands for accounting: ``sacct`` (the plugin's default status command) needs slurmdbd,
#: which needs a MySQL-compatible server.
ACCOUNTING_COMMANDS = ("slurmdbd", "mariadbd", "mariadb-install-db", "sacct", "sacctmgr")

#: SLURM clients that get a SLURM_CONF-defaulting wrapper in ``<cluster>/bin`` (see _configure).
_CLIENT_COMMANDS = ("srun", "sbatch", "salloc", "squeue", "sinfo", "scontrol", "scancel")
_CLIENT_COMMANDS += ("sacct", "sacctmgr", "sshare", "sstat")

#: AF_UNIX paths are limited to 107 bytes; slurmstepd puts ``<node>_<jobid>.<step>`` sockets in
#: the spool directory, so the cluster directory must leave room for them.
_MAX_ROOT_LEN = 64

#: Environment variable set (to the cluster directory) for every daemon, so that leftover
#: slurmstepd processes of this cluster, and only this one, can be found at shutdown.
_MARKER = "HARNESS_SLURM_CLUSTER"

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class SlurmUnavailable(RuntimeError):
    """SLURM (or MariaDB, for accounting) is not installed: the caller should skip, or fail in CI."""


class SlurmStartError(RuntimeError):
    """A daemon did not come up in time; the message holds the tail of its log."""


def missing_commands(accounting: bool = True) -> list[str]:
    """Names of the commands this module needs but cannot find on PATH (or in /usr/sbin)."""
    wanted = BASE_COMMANDS + (ACCOUNTING_COMMANDS if accounting else ())
    return [name for name in wanted if _which(name) is None]


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test, or fail it when ``HARNESS_REQUIRE_SLURM=1`` (CI must not go green by
    skipping everything). Imports pytest lazily so this module stays usable outside pytest."""
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1)")
    pytest.skip(reason)
    raise AssertionError("unreachable")  # pytest.skip raises; this keeps type checkers sure


@dataclass
class SlurmCluster:
    """A running cluster. ``env`` is what subprocesses (sbatch, snakemake) must be given."""

    root: Path
    conf: Path
    env: dict[str, str]
    partition: str
    account: str
    node: str
    cpus: int
    memory_mb: int
    gpus: int
    gpu_type: str | None
    accounting: bool
    munge_socket: Path
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster, e.g. ``cluster.run("squeue")``; from the
        cluster's own folder, where a job submitted without ``-o`` writes its ``slurm-<id>.out``
        (never into the checkout)."""
        return subprocess.run(
            list(args),
            env=self.env,
            check=check,
            timeout=timeout,
            capture_output=True,
            text=True,
            cwd=self.root,
        )

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable`` and return the job id."""
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str:
        """The job's state as the plugin's default status query sees it: ``sacct -X --parsable2``
        ``State`` (e.g. ``CANCELLED by 0``), or squeue's ``%T`` when there is no accounting."""
        if self.accounting:
            out = self.run("sacct", "-X", "-n", "--parsable2", "-o", "State", "-j", job_id).stdout
        else:
            out = self.run("squeue", "-h", "--states=all", "-o", "%T", "-j", job_id, check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else ""

    def wait_for_state(self, job_id: str, states: Sequence[str], timeout: float = 120) -> str:
        """Poll until the job's state starts with one of ``states``; return it (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if any(state.startswith(s) for s in states):
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {state!r} after {timeout}s, wanted one of {states}")


@contextlib.contextmanager
def slurm_cluster(
    base_dir: Path | str | None = None,
    *,
    accounting: bool = True,
    gpus: int = 1,
    gpu_type: str | None = None,
    partition: str = "debug",
    account: str = "harness",
    memory_margin_mb: int = 1024,
    def_mem_per_cpu_mb: int = 1024,
    kill_wait_s: int = 30,
    min_job_age_s: int = 300,
    extra_conf: Sequence[str] = (),
    startup_timeout_s: float = 90,
    stop_timeout_s: float = 15,
    keep: bool = False,
) -> Iterator[SlurmCluster]:
    """Start munged, [mariadbd, slurmdbd,] slurmctld and slurmd; yield a :class:`SlurmCluster`.

    accounting: with it (mariadbd + slurmdbd), ``sacct``/``sacctmgr`` work: the plugin's default
        status command is ``sacct`` and it checks ``slurm_account`` with ``sacctmgr``. Without it
        start-up takes under a second instead of about 4 s, but ``sacct`` exits 1 ("Slurm
        accounting storage is disabled") and the plugin, which still picks sacct because the
        binary exists, never sees a job finish: pass ``--slurm-status-command squeue`` then.
    gpus: number of FAKE GPUs (gres ``gpu``) on the node, so that ``--gpus=1`` and
        ``--gres=gpu:1`` are schedulable. There is no device behind them.
    gpu_type: a GRES type for the fake GPUs (e.g. "a100"), for jobs that ask
        ``--gpus=a100:1`` -- what the plugin submits for ``gpu_model: "a100"``.
    account: an account created (with accounting) for the current user, to pass as
        ``slurm_account``; the plugin rejects accounts ``sacctmgr`` does not list.
    kill_wait_s, min_job_age_s: SLURM's KillWait (SIGTERM -> SIGKILL on scancel and time-out)
        and MinJobAge (how long finished jobs stay visible to ``squeue``); defaults are SLURM's.
    extra_conf: more slurm.conf lines, e.g. a second partition and ``PreemptType=...`` to
        test pre-emption.
    keep: keep the cluster directory after a clean exit (it is always kept after a failure, so
        the daemons' logs can be read; its path is in the error).

    Every daemon is stopped on exit, also when the body raises: jobs are cancelled first (slurmd
    leaves running jobs alive when it stops, by design), then each daemon gets SIGTERM and, after
    ``stop_timeout_s``, SIGKILL, and any leftover slurmstepd and job process of this cluster is
    killed. If the test process itself is killed, the kernel SIGTERMs the daemons
    (PR_SET_PDEATHSIG).
    """
    missing = missing_commands(accounting)
    if missing:
        raise SlurmUnavailable(
            "SLURM test cluster needs commands that are not installed: "
            + ", ".join(missing)
            + " (Debian: apt-get install --no-install-recommends munge slurmctld slurmd slurm-client"
            + (" slurmdbd mariadb-server" if accounting else "")
            + ")"
        )
    if os.geteuid() != 0:
        # slurmd must run as root to start jobs (setuid, spank, proctrack), so a user cannot do it.
        raise SlurmUnavailable("SLURM test cluster needs root (slurmd starts jobs as their user)")

    root = Path(tempfile.mkdtemp(prefix="slurm-", dir=base_dir))
    # munged refuses a socket in a directory others cannot traverse (clients of any user must
    # reach it); mkdtemp makes 0700. The munge key keeps its own 0700 directory.
    root.chmod(0o755)
    if len(str(root)) > _MAX_ROOT_LEN:
        shutil.rmtree(root)
        raise ValueError(f"{root} is too long for the daemons' unix sockets; pass a shorter base_dir")

    daemons = _Daemons(marker=str(root))
    ok = False
    try:
        cluster = _configure(
            root,
            accounting=accounting,
            gpus=gpus,
            gpu_type=gpu_type,
            partition=partition,
            account=account,
            memory_margin_mb=memory_margin_mb,
            def_mem_per_cpu_mb=def_mem_per_cpu_mb,
            kill_wait_s=kill_wait_s,
            min_job_age_s=min_job_age_s,
            extra_conf=extra_conf,
        )
        _start(cluster, daemons, startup_timeout_s)
        yield cluster
        ok = True
    except BaseException as exc:
        if isinstance(exc, SlurmStartError):
            exc.args = (f"{exc.args[0]}\n(cluster directory kept: {root})",)
        raise
    finally:
        try:
            if "slurmctld" in daemons.procs:
                _cancel_all_jobs(daemons, root, kill_wait_s)
        finally:
            daemons.stop_all(stop_timeout_s)
        if ok and not keep:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- configuration


def _configure(
    root: Path,
    *,
    accounting: bool,
    gpus: int,
    gpu_type: str | None,
    partition: str,
    account: str,
    memory_margin_mb: int,
    def_mem_per_cpu_mb: int,
    kill_wait_s: int,
    min_job_age_s: int,
    extra_conf: Sequence[str],
) -> SlurmCluster:
    """Write munge key, slurm.conf, gres.conf [and slurmdbd.conf] under ``root``."""
    for sub in ("etc", "run", "log", "spool/ctld", "spool/d", "munge"):
        (root / sub).mkdir(parents=True)
    # munged insists on a private key file owned by the user it runs as; 128 random bytes is what
    # Debian's mungekey writes too. A fresh key per cluster means nothing authenticates across runs.
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    (root / "munge").chmod(0o700)

    ports = dict(zip(("slurmctld", "slurmd", "slurmdbd", "mariadbd"), _free_ports(4)))
    hostname = socket.gethostname().split(".")[0]
    node = "node1"
    cpus, topology = _node_topology()
    memory_mb = _mem_total_mb() - memory_margin_mb
    munge_socket = root / "run" / "munge.sock"
    etc = root / "etc"
    conf = etc / "slurm.conf"

    lines = [
        "# Written by tests/cluster/slurm.py for a throwaway one-node test cluster.",
        "ClusterName=harness",
        # slurmctld refuses to start unless SlurmctldHost names this machine's short hostname.
        f"SlurmctldHost={hostname}(127.0.0.1)",
        f"SlurmctldPort={ports['slurmctld']}",
        f"SlurmdPort={ports['slurmd']}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'spool/ctld'}",
        f"SlurmdSpoolDir={root / 'spool/d'}",
        f"SlurmctldPidFile={root / 'run/slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run/slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log/slurmctld.log'}",
        f"SlurmdLogFile={root / 'log/slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # No cgroups: CI containers often cannot write /sys/fs/cgroup, and tests need no
        # enforcement. linuxproc still tracks a job's processes so scancel/time-out kill them.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherFrequency=5",
        "SelectType=select/cons_tres",  # cons_tres is what understands --gpus
        "SelectTypeParameters=CR_Core_Memory",
        # Without a default, a job that asks no memory gets the whole node and jobs serialise.
        f"DefMemPerCPU={min(def_mem_per_cpu_mb, memory_mb // cpus)}",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        f"KillWait={kill_wait_s}",
        f"MinJobAge={min_job_age_s}",
        "InactiveLimit=0",
        "SlurmdTimeout=300",
        "MailProg=/bin/true",
        "JobCompType=jobcomp/none",
        "GresTypes=gpu",
    ]
    if accounting:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={ports['slurmdbd']}",
            # Connections to slurmdbd take their munge socket from here, not from AuthInfo
            # (slurm.conf(5): "the named port ... of the alternate MUNGE daemon").
            f"AccountingStoragePass={munge_socket}",
            "AccountingStorageTRES=gres/gpu",
            "AccountingStoreFlags=job_comment",  # sacct's Comment: the plugin writes the rule there
        ]
    else:
        lines += ["AccountingStorageType=accounting_storage/none"]
    gres = f" Gres=gpu:{gpu_type + ':' if gpu_type else ''}{gpus}" if gpus else ""
    lines += [
        f"NodeName={node} NodeHostname={hostname} NodeAddr=127.0.0.1 CPUs={cpus} {topology}"
        f" RealMemory={memory_mb}{gres} State=UNKNOWN",
        f"PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        *extra_conf,
    ]
    conf.write_text("\n".join(lines) + "\n")
    # The GPUs are FAKE. slurmd drops a gpu gres without File= ("Removing file-less GPU"), and
    # sets no CUDA_VISIBLE_DEVICES for a File= that is not a device node ("not a valid character
    # or block device"). So each fake GPU is a character device with /dev/null's numbers
    # (1, 3): jobs can ask --gpus=1 / --gres=gpu:1, get scheduled and see
    # CUDA_VISIBLE_DEVICES, but there is no GPU behind it (torch.cuda.is_available() stays
    # False). Without CAP_MKNOD an empty file stands in: scheduling works, the variable is unset.
    # AutoDetect=off keeps slurmd from looking for NVML.
    gres_lines = ["AutoDetect=off"]
    for i in range(gpus):
        fake = root / "dev" / f"fake-gpu{i}"
        fake.parent.mkdir(exist_ok=True)
        try:
            os.mknod(fake, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            fake.touch()
        type_ = f" Type={gpu_type}" if gpu_type else ""
        gres_lines.append(f"NodeName={node} Name=gpu{type_} File={fake} Flags=nvidia_gpu_env")
    (etc / "gres.conf").write_text("\n".join(gres_lines) + "\n")
    # No cgroup.conf: with proctrack/linuxproc and task/none nothing reads one.

    if accounting:
        dbd = etc / "slurmdbd.conf"
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={munge_socket}",
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={ports['slurmdbd']}",
                    "SlurmUser=root",
                    f"PidFile={root / 'run/slurmdbd.pid'}",
                    f"LogFile={root / 'log/slurmdbd.log'}",
                    "DebugLevel=info",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={ports['mariadbd']}",
                    "StorageUser=root",
                    "StorageLoc=slurm_acct_db",
                ]
            )
            + "\n"
        )
        dbd.chmod(0o600)  # slurmdbd refuses a world-readable slurmdbd.conf

    env = dict(os.environ)
    env["SLURM_CONF"] = str(conf)
    # snakemake-executor-plugin-slurm-jobstep (the half that runs inside the job) deletes every
    # SLURM_* variable but a few job ids -- SLURM_CONF included -- before it calls `srun`, which
    # then finds no /etc/slurm/slurm.conf and dies ("Could not establish a configuration
    # source"). Real clusters have /etc/slurm; here, wrappers that default SLURM_CONF go first on
    # PATH (which the plugin keeps) instead of a config under /etc shared by all test clusters.
    bindir = root / "bin"
    bindir.mkdir()
    for name in _CLIENT_COMMANDS:
        real = _which(name)
        if real is None:
            continue
        wrapper = bindir / name
        wrapper.write_text(f'#!/bin/sh\n: "${{SLURM_CONF:={conf}}}"\nexport SLURM_CONF\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    # A test run inside a SLURM job (or a developer's shell) must not leak that job's settings.
    for name in list(env):
        if (
            name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SACCT_"))
            and name != "SLURM_CONF"
        ):
            del env[name]
    cluster = SlurmCluster(
        root=root,
        conf=conf,
        env=env,
        partition=partition,
        account=account if accounting else "",
        node=node,
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=gpus,
        gpu_type=gpu_type,
        accounting=accounting,
        munge_socket=munge_socket,
        ports=ports,
    )
    cluster.logs = {
        "munged": root / "log/munged.log",
        "slurmctld": root / "log/slurmctld.log",
        "slurmd": root / "log/slurmd.log",
    }
    if accounting:
        cluster.logs["mariadbd"] = root / "log/mariadbd.log"
        cluster.logs["slurmdbd"] = root / "log/slurmdbd.log"
    return cluster


def _node_topology() -> tuple[int, str]:
    """CPUs and the socket/core/thread layout as slurmd itself will detect it (``slurmd -C``).

    A NodeName line that promises more than slurmd finds gets the node drained ("Low socket*core
    count"), so the layout is taken from slurmd rather than guessed from os.cpu_count().
    """
    fallback = os.cpu_count() or 1
    try:
        out = subprocess.run(
            [_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return fallback, ""
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    try:
        cpus = int(fields["CPUs"])
    except (KeyError, ValueError):
        return fallback, ""
    keys = ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    topology = " ".join(f"{k}={fields[k]}" for k in keys if k in fields)
    return cpus, topology


def _mem_total_mb() -> int:
    """MemTotal in MiB: RealMemory must not exceed it, or slurmd drains the node."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free right now on 127.0.0.1 (there is a small race until the
    daemons bind them; a clash shows up as a start-up error naming the port)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- processes


class _Daemons:
    """The started daemons, in start order, so they can be stopped in reverse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        # start_new_session: own session and process group, so a Ctrl-C to the test does not hit
        # the daemons before they are stopped in order. _die_with_parent: a test process killed
        # outright (SIGKILL, a CI time-out's SIGTERM, which skips `finally`) takes its daemons along.
        with open(log.with_suffix(".out"), "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        self.procs[name] = proc
        return proc

    def stop_all(self, timeout: float) -> None:
        """SIGTERM each daemon (newest first), SIGKILL after ``timeout``; then SIGKILL what is left
        of the jobs: slurmstepd (found by the environment marker it inherits from slurmd) and every
        process of its session (the job's processes), which outlive a stopped slurmd by design."""
        for name in reversed(list(self.procs)):
            _terminate(self.procs[name], timeout)
        self.procs.clear()
        stepd_sessions = {_session_id(pid) for pid in _pids_with_env(_MARKER, self.marker)}
        for pid in _pids_in_sessions(stepd_sessions - {None, os.getsid(0)}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGTERM the child when the thread that started it dies
    (prctl PR_SET_PDEATHSIG, kept across exec). The daemons are started from the test's thread,
    which lives as long as the test process. (preexec_fn is documented as unsafe with threads;
    it only calls prctl and getppid here.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def _all_pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def _pids_with_env(name: str, value: str) -> list[int]:
    """Pids whose initial environment holds ``name=value`` (readable for root, or own processes)."""
    needle = f"{name}={value}".encode()
    found = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def _session_id(pid: int) -> int | None:
    """Field 6 of /proc/<pid>/stat; the command name (field 2) may hold spaces and parentheses,
    so split after its last closing parenthesis."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _pids_in_sessions(sessions: set[int | None]) -> list[int]:
    me = os.getpid()
    return [pid for pid in _all_pids() if pid != me and _session_id(pid) in sessions]


def _start(cluster: SlurmCluster, daemons: _Daemons, timeout: float) -> None:
    root, ports, munge_socket = cluster.root, cluster.ports, cluster.munge_socket
    # The marker lets stop_all() find slurmstepd processes, which inherit slurmd's environment
    # but leave its session (they call setsid), among all processes on the machine.
    env = dict(cluster.env, **{_MARKER: str(root)})

    proc = daemons.start(
        "munged",
        [
            _exe("munged"),
            "--foreground",
            f"--key-file={root / 'munge/munge.key'}",
            f"--socket={munge_socket}",
            f"--pid-file={root / 'run/munged.pid'}",
            f"--log-file={cluster.logs['munged']}",
            f"--seed-file={root / 'munge/munged.seed'}",
        ],
        env,
        cluster.logs["munged"],
    )
    cluster.pids["munged"] = proc.pid
    _wait("munged", proc, cluster.logs["munged"], timeout, lambda: munge_socket.exists())

    if cluster.accounting:
        datadir = root / "mysql"
        install = subprocess.run(
            [
                _exe("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
                "--innodb-log-file-size=8M",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if install.returncode != 0:
            raise SlurmStartError(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
        proc = daemons.start(
            "mariadbd",
            [
                _exe("mariadbd"),
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                # A private throwaway server on loopback: no grant tables, so slurmdbd's
                # StorageUser=root needs no password and no user has to be created.
                "--skip-grant-tables",
                "--skip-name-resolve",
                "--bind-address=127.0.0.1",
                f"--port={ports['mariadbd']}",
                f"--socket={root / 'run/mysqld.sock'}",
                f"--pid-file={root / 'run/mariadbd.pid'}",
                f"--log-error={cluster.logs['mariadbd']}",
                "--innodb-log-file-size=8M",
                "--innodb-buffer-pool-size=64M",
                # slurmdbd's recommended lock wait; it still logs "Database settings not
                # recommended values" for the small buffer pool and log, which is fine here.
                "--innodb-lock-wait-timeout=900",
                "--innodb-flush-log-at-trx-commit=0",
            ],
            env,
            cluster.logs["mariadbd"],
        )
        cluster.pids["mariadbd"] = proc.pid
        _wait("mariadbd", proc, cluster.logs["mariadbd"], timeout, lambda: _port_open(ports["mariadbd"]))

        proc = daemons.start("slurmdbd", [_exe("slurmdbd"), "-D"], env, cluster.logs["slurmdbd"])
        cluster.pids["slurmdbd"] = proc.pid
        _wait("slurmdbd", proc, cluster.logs["slurmdbd"], timeout, lambda: _port_open(ports["slurmdbd"]))

    # -c: start from an empty state (the directory is new anyway; this also silences the
    # "No job state file" errors).
    proc = daemons.start(
        "slurmctld", [_exe("slurmctld"), "-D", "-c", "-f", str(cluster.conf)], env, cluster.logs["slurmctld"]
    )
    cluster.pids["slurmctld"] = proc.pid
    _wait(
        "slurmctld",
        proc,
        cluster.logs["slurmctld"],
        timeout,
        lambda: "UP" in cluster.run("scontrol", "ping", check=False).stdout,
    )

    if cluster.accounting:
        # The plugin validates slurm_account against `sacctmgr list user <me>`; give the user a
        # named account besides the default "root" one, so tests can pass a realistic name.
        user = _username()
        cluster.run(
            "sacctmgr", "-i", "add", "account", cluster.account, "Description=tests", "Organization=tests"
        )
        cluster.run("sacctmgr", "-i", "add", "user", user, f"Account={cluster.account}")

    proc = daemons.start(
        "slurmd",
        [_exe("slurmd"), "-D", "-N", cluster.node, "-f", str(cluster.conf)],
        env,
        cluster.logs["slurmd"],
    )
    cluster.pids["slurmd"] = proc.pid

    def node_idle() -> bool:
        # One line per partition the node is in (extra_conf may add partitions).
        out = cluster.run("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t", check=False).stdout
        return bool(out.split()) and all(state == "idle" for state in out.split())

    _wait("slurmd", proc, cluster.logs["slurmd"], timeout, node_idle)


def _cancel_all_jobs(daemons: _Daemons, root: Path, kill_wait_s: int) -> None:
    """Cancel every job of this cluster and wait (up to KillWait + 15 s) until none is left
    running, so slurmstepd ends them the normal way before slurmd goes."""
    env = dict(os.environ, SLURM_CONF=str(root / "etc/slurm.conf"))
    ctld = daemons.procs.get("slurmctld")
    if ctld is None or ctld.poll() is not None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["scancel", "--user", _username()], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + kill_wait_s + 15
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["squeue", "-h", "-o", "%i", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            if not out.strip():
                return
            time.sleep(0.5)


def _wait(
    name: str, proc: subprocess.Popen[bytes], log: Path, timeout: float, ready: Callable[[], bool]
) -> None:
    """Poll ``ready()`` until true; fail fast if the daemon exits, with its log in the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SlurmStartError(f"{name} exited with {proc.returncode} during start-up:\n{_tail(log)}")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if ready():
                return
        time.sleep(0.2)
    raise SlurmStartError(f"{name} not ready after {timeout}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    parts = []
    for path in (log, log.with_suffix(".out")):
        with contextlib.suppress(OSError):
            parts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(parts) or f"(no log at {log})"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which is not on every user's (or CI runner's) PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _exe(name: str) -> str:
    path = _which(name)
    if path is None:
        raise SlurmUnavailable(f"{name} not found")
    return path


def _username() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
