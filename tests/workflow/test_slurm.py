"""The throwaway SLURM cluster (tests/cluster/slurm.py) runs CPU and fake-GPU jobs, serves the
snakemake SLURM executor, and leaves no daemon behind.

Slow (about 30 s with accounting) and needs root plus the Debian packages munge slurmctld slurmd
slurm-client slurmdbd mariadb-server: skipped without them, failed with HARNESS_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO
from processes import patience, run_group
from slurm import SlurmCluster, SlurmUnavailable, skip_or_fail, slurm_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    try:
        with slurm_cluster(gpu_type="h100") as running:  # typed, as most clusters' GPUs are
            yield running
    except SlurmUnavailable as exc:
        skip_or_fail(str(exc))


def test_cpu_and_fake_gpu_jobs_complete_and_are_accounted(cluster: SlurmCluster, tmp_path: Path) -> None:
    cpu = cluster.sbatch("-o", str(tmp_path / "cpu.out"), "--wrap", "sleep 1")
    gpu = cluster.sbatch(
        "-o", str(tmp_path / "gpu.out"), "--gres=gpu:1", "--wrap", "echo cuda=$CUDA_VISIBLE_DEVICES"
    )
    assert cluster.wait_for_state(cpu, ["COMPLETED", "FAILED", "CANCELLED"]) == "COMPLETED"
    assert cluster.wait_for_state(gpu, ["COMPLETED", "FAILED", "CANCELLED"]) == "COMPLETED"
    assert (tmp_path / "gpu.out").read_text().strip() == "cuda=0"
    tres = cluster.run("sacct", "-X", "-n", "--parsable2", "-o", "AllocTRES", "-j", gpu).stdout
    assert "gres/gpu=1" in tres


def test_cancelled_job_reads_cancelled_by_uid_in_sacct(cluster: SlurmCluster) -> None:
    # The reason snakemake-executor-plugin-slurm 2.8.0 with its default status command (sacct)
    # never notices a cancelled job: its fail list holds "CANCELLED", sacct says this.
    job = cluster.sbatch("--wrap", "sleep 300")
    cluster.wait_for_state(job, ["RUNNING"])
    cluster.run("scancel", job)
    assert cluster.wait_for_state(job, ["CANCELLED"]) == f"CANCELLED by {os.getuid()}"
    squeue = cluster.run("squeue", "-h", "--states=all", "-o", "%T", "-j", job).stdout.strip()
    assert squeue == "CANCELLED"


def test_snakemake_runs_a_workflow_through_the_slurm_executor(cluster: SlurmCluster, tmp_path: Path) -> None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        '    input: expand("out/{i}.txt", i=[1, 2]), "out/gpu.txt"\n'
        "rule cpu:\n"
        '    output: "out/{i}.txt"\n'
        "    resources: runtime=5, mem_mb=200\n"
        '    shell: "echo $SLURM_JOB_ID > {output}"\n'
        "rule gpu:\n"
        '    output: "out/gpu.txt"\n'
        "    resources: runtime=5, mem_mb=200, gpu=1\n"
        '    shell: "echo $CUDA_VISIBLE_DEVICES > {output}"\n'
    )
    snakemake = Path(sys.executable).with_name("snakemake")
    result = run_group(
        [
            str(snakemake),
            "--executor",
            "slurm",
            "--jobs",
            "2",
            "--default-resources",
            f"slurm_partition={cluster.partition}",
            f"slurm_account={cluster.account}",
            "--slurm-init-seconds-before-status-checks",
            "1",
        ],
        cwd=tmp_path,
        env=cluster.env,
        timeout=patience(300),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    job_ids = {(tmp_path / f"out/{i}.txt").read_text().strip() for i in (1, 2)}
    assert len(job_ids) == 2 and all(j.isdigit() for j in job_ids)
    assert (tmp_path / "out/gpu.txt").read_text().strip() == "0"


def test_every_daemon_and_job_process_is_gone_after_exit() -> None:
    try:
        with slurm_cluster(accounting=False, kill_wait_s=2) as small:
            # A job that ignores SIGTERM: it must still be gone (SIGKILL after KillWait).
            job = small.sbatch("-o", "/dev/null", "--wrap", "trap '' TERM; sleep 3097")
            small.wait_for_state(job, ["RUNNING"])
            pids = dict(small.pids)
    except SlurmUnavailable as exc:
        skip_or_fail(str(exc))
    assert set(pids) == {"munged", "slurmctld", "slurmd"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    assert not [name for name, pid in pids.items() if _alive(pid)]
    leftovers = subprocess.run(["pgrep", "-f", "sleep 3097"], capture_output=True, text=True).stdout
    assert not leftovers.strip()


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- the harness on the cluster (issue #16) -------------------------------------------------------


def _edited_profile(cluster: SlurmCluster, folder: Path, **sizes: object) -> Path:
    """The slurm profile as a user edits it (docs/clusters.md) for this cluster: partition, account, sizes."""
    import yaml

    cfg = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    cfg["default-resources"] |= {"slurm_partition": cluster.partition, "slurm_account": cluster.account}
    for rule, res in cfg["set-resources"].items():
        if "gpu_model" in res:  # docs/clusters.md: set gpu_model to a GPU type the cluster has
            res["gpu_model"] = cluster.gpu_type
        res |= {"cpus_per_task": 1, "mem_mb": 1500} | sizes
        cfg["set-threads"][rule] = 1
    cfg["default-resources"] |= {"cpus_per_task": 1, "mem_mb": 1500}
    cfg["slurm-init-seconds-before-status-checks"] = 2  # a test waits for tiny jobs
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def _harness(cluster: SlurmCluster, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("harness")
    return run_group([str(exe), *args], cwd=cwd, env=cluster.env, timeout=patience(120))


def test_cluster_check_names_the_sizes_that_would_pend_forever(cluster: SlurmCluster, tmp_path: Path) -> None:
    as_shipped = _harness(
        cluster, "cluster", "check", "--profile", str(REPO / "workflow/profiles/slurm"), cwd=tmp_path
    )
    assert as_shipped.returncode == 2
    assert "partition 'gpu' does not exist" in as_shipped.stdout, as_shipped.stdout
    too_big = _edited_profile(cluster, tmp_path / "big", cpus_per_task=cluster.cpus + 6)
    r = _harness(cluster, "cluster", "check", "--profile", str(too_big), cwd=tmp_path)
    assert r.returncode == 2 and f"cpus_per_task {cluster.cpus + 6} > the {cluster.cpus} CPUs" in r.stdout
    a100 = _edited_profile(cluster, tmp_path / "a100", gpu_model="a100")  # as shipped; this one has h100s
    r = _harness(cluster, "cluster", "check", "--profile", str(a100), cwd=tmp_path)
    assert r.returncode == 2 and "gpu_model 'a100' is not a GPU type" in r.stdout, r.stdout
    assert "(h100)" in r.stdout and "--gpus=a100:1" in r.stdout
    fits = _edited_profile(cluster, tmp_path / "fits")
    r = _harness(cluster, "cluster", "check", "--profile", str(fits), cwd=tmp_path)
    assert r.returncode == 0 and "every job rule fits" in r.stdout, r.stdout + r.stderr


def test_the_readme_cluster_command_survives_a_cancelled_worker(
    cluster: SlurmCluster, tmp_path: Path
) -> None:
    """The command of docs/clusters.md on a tiny study with 2 workers and a PostgreSQL storage: every job goes
    through SLURM; one worker is cancelled mid-trial (scancel); the pipeline finishes by itself with
    exactly the budget's trials, the cancelled one resumed from its checkpoint, nothing run twice."""
    import json

    import optuna
    import yaml
    from fixtures import make_cub
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState
    from processes import PostgresServer

    with PostgresServer() as pg:
        storage, tracking = pg.create_db("optuna"), pg.create_db("mlflow")
        make_cub(tmp_path / "data", per_class=4, noise=60.0)
        study = {
            "name": "slurmy",
            "dataset": "cub",
            "data_root": "data/CUB_200_2011",
            "strict_counts": False,
            "image_size": 32,
            "backbone": "test_resnet",
            "pretrained": False,
            "trunk": "finetune",
            "epochs": 6,
            "workers": 2,
            "storage": storage,
            "mlflow_uri": tracking,
            "budget": {"n_trials": 4},
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
            "evaluate": {"top_n": 1, "seeds": 2, "references": False},
            "search_space": {
                "margin": {"low": 0.1, "high": 0.3},
                "batch_p": 4,
                "batch_k": 2,
                "embedding_dim": 16,
            },
        }
        config = tmp_path / "slurmy.yaml"
        config.write_text(yaml.safe_dump(study))
        profile = _edited_profile(cluster, tmp_path / "profile")
        snakemake = Path(sys.executable).with_name("snakemake")
        cmd = [
            str(snakemake),
            "-s",
            str(REPO / "Snakefile"),
            "--profile",
            str(profile),
            "--configfile",
            str(config),
        ]
        log = (tmp_path / "snakemake.log").open("w")
        run = subprocess.Popen(
            cmd, cwd=tmp_path, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            try:
                cancelled = _cancel_a_worker_mid_trial(cluster, storage, run)
            except AssertionError as e:  # say why snakemake stopped, not only that it did
                log.flush()
                raise AssertionError(f"{e}\n{(tmp_path / 'snakemake.log').read_text()[-5000:]}") from None
            assert run.wait(timeout=patience(900)) == 0, (tmp_path / "snakemake.log").read_text()[-5000:]
        finally:
            if run.poll() is None:
                os.killpg(run.pid, 9)
                run.wait(timeout=60)
            log.close()
        assert (tmp_path / "results" / "slurmy" / "report" / "index.html").is_file()

        jobs = cluster.run(
            "sacct", "-X", "-n", "--parsable2", "-o", "JobID,State,Comment"
        ).stdout.splitlines()
        rules = [line.split("|")[2] for line in jobs]
        for rule in ("prepare_data", "study_worker", "evaluate_shard"):
            assert any(rule in r for r in rules), jobs  # went through SLURM
        assert any(line.startswith(f"{cancelled}|CANCELLED") for line in jobs), jobs
        assert sum("study_worker" in r for r in rules) >= 3  # two workers and the retried one

        trials = optuna.load_study(study_name="slurmy", storage=storage).get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        failed = [t for t in trials if t.state == TrialState.FAIL]
        assert len(done) == 4 and len(failed) >= 1, [t.state for t in trials]  # the budget, exactly
        for f in failed:  # every interrupted trial was resumed from its checkpoint, once
            (retry,) = [t for t in done if t.system_attrs.get("failed_trial") == f.number]
            assert retry.user_attrs["resumed_from"]["trial"] == f.number
        for t in done:
            events = [
                json.loads(x)["event"]
                for x in (tmp_path / "results/slurmy/trials" / str(t.number) / "events.jsonl").open()
            ]
            assert events.count("end") == 1 and len(events) == 2, (
                events
            )  # run once: a start (or resume) and an end
        client = MlflowClient(tracking)
        exp = client.get_experiment_by_name("slurmy")
        runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")
        assert sorted(int(r.data.tags["harness.trial"]) for r in runs) == sorted(t.number for t in trials)
        assert not [r for r in runs if r.info.status == "RUNNING"]
        assert len(client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'test'")) == 3


def _cancel_a_worker_mid_trial(cluster: SlurmCluster, storage: str, run: subprocess.Popen) -> str:
    """scancel a study_worker job once one of the study's trials has reported an epoch."""
    import optuna
    from optuna.trial import TrialState

    deadline = time.monotonic() + patience(600)
    while True:
        assert run.poll() is None, "snakemake ended before a worker could be cancelled"
        assert time.monotonic() < deadline, "no trial reached its first epoch in 10 minutes"
        try:
            trials = optuna.load_study(study_name="slurmy", storage=storage).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        if any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
            queue = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k").stdout.splitlines()
            workers = [line.split("|")[0] for line in queue if "study_worker" in line]
            if workers:
                cluster.run("scancel", workers[0])
                return workers[0]
        time.sleep(0.5)
