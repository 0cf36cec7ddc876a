"""The pipeline on the local one-node Slurm cluster, through the repository's `slurm/` profile.

- test_default_pipeline_on_slurm: the README's command `snakemake --cores all --profile slurm`,
  typed as is in a fresh clone of the working tree, runs the embedded default end to end with every
  job a Slurm job (the slowest test of the suite: the whole default DAG).
- test_gpu_jobs_ask_slurm_for_gpus_and_tasks: the sbatch options of a 4-GPU config's training
  (GPUs, one task per GPU, srun inside the job, preemption signal) and evaluation (one GPU),
  recorded by a stand-in sbatch (the cluster has no GPUs).
- test_failed_training_job_is_retried: a training job whose process is killed (SIGKILL, after its
  first checkpoint) fails as a Slurm job; the profile's retries run it again, it resumes from
  last.ckpt, and leaves one finished MLflow run and the weights of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from support.workflow import clone_working_tree

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "effm2f_ci"  # accounting is off, so Slurm records any account name as given
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


def cluster_env(slurm_cluster, **extra: str) -> dict[str, str]:
    """The user's settings: partition and account from the environment (README)."""
    env = slurm_cluster.env()
    for name in ("EFFM2F_SLURM_GPU_PARTITION", "MLFLOW_TRACKING_URI", "SBATCH_PARTITION"):
        env.pop(name, None)
    return {**env, "EFFM2F_SLURM_PARTITION": slurm_cluster.partition, "SBATCH_ACCOUNT": ACCOUNT,
            **extra}


def run_logged(cmd: list[str], *, cwd: Path, env: dict, timeout: float, log: Path,
               slurm_cluster=None) -> tuple[int, str]:
    """Run ``cmd`` with its output in ``log``; on timeout kill it, cancel its Slurm jobs, fail."""
    with log.open("w") as handle:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            text = log.read_text()
            if slurm_cluster is not None:
                for _, job_id in SUBMITTED.findall(text):
                    slurm_cluster.run("scancel", job_id)
            pytest.fail(f"{' '.join(cmd)} still running after {timeout:.0f} s:\n{text[-6000:]}")
    return process.returncode, log.read_text()


def slurm_jobs(slurm_cluster, output: str) -> dict[str, dict[str, str]]:
    """Slurm job id -> state, comment (rule_<name>...), partition, account of every job the
    Snakemake run in ``output`` submitted (finished jobs stay in squeue for MinJobAge)."""
    ids = [job_id for _, job_id in SUBMITTED.findall(output)]
    assert ids, output[-4000:]
    res = slurm_cluster.run("squeue", "-h", "--states=all", "-j", ",".join(ids),
                            "-o", "%i|%T|%k|%P|%a")
    assert res.returncode == 0, res
    jobs = {}
    for line in res.stdout.split():
        job_id, state, comment, partition, account = line.split("|")
        jobs[job_id] = {"state": state, "comment": comment, "partition": partition,
                        "account": account}
    assert sorted(jobs) == sorted(ids), (jobs, ids)
    return jobs


@pytest.mark.slow
def test_default_pipeline_on_slurm(slurm_cluster, tmp_path):
    repo = clone_working_tree(tmp_path / "effm2f")
    assert (repo / "slurm" / "config.yaml").is_file()
    assert not (repo / "data").exists() and not (repo / "mlflow.db").exists()

    cmd = ["snakemake", "--cores", "all", "--profile", "slurm"]  # the README's command, as is
    rc, output = run_logged(cmd, cwd=repo, env=cluster_env(slurm_cluster), timeout=2700,
                            log=tmp_path / "snakemake.log", slurm_cluster=slurm_cluster)
    assert rc == 0, output[-8000:]

    # The profile was found from the working directory and selected the Slurm executor.
    found = re.search(r"Using profile (\S+) for setting default command line arguments", output)
    assert found, output[:3000]
    assert (repo / found.group(1)).resolve() == (repo / "slurm").resolve()
    assert "SLURM run ID: " in output

    # Results: both variants trained, evaluated and reported; GFLOPs of every variant.
    with (repo / "results" / "synthetic" / "metrics.csv").open() as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"m2f_tiny", "proscale_tiny"}, rows
    for variant, row in rows.items():
        assert float(row["PQ"]) >= 30, (variant, row)
    with (repo / "results" / "flops" / "coco.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 7
    assert (repo / "results" / "flops" / "cityscapes.csv").is_file()

    # Every job but the target rule `all` (no shell) was a Slurm job of this cluster, submitted
    # with the user's partition and account, and completed.
    total = int(re.search(r"^total\s+(\d+)", output, re.MULTILINE).group(1))
    jobs = slurm_jobs(slurm_cluster, output)
    assert len(jobs) == total - 1, (total, jobs)
    for job_id, job in jobs.items():
        assert job["state"] == "COMPLETED", (job_id, job)
        assert job["partition"] == slurm_cluster.partition, (job_id, job)
        assert job["account"].lower() == ACCOUNT, (job_id, job)
    rules = {re.match(r"rule_([a-z_]+?)(_wildcards_.*)?$", j["comment"]).group(1)
             for j in jobs.values()}
    assert rules == {"synthetic_coco", "flops_variant", "flops_table", "train", "evaluate",
                     "report"}, rules


FAKE_SBATCH = """#!{python}
import json, sys
with open({log!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(1)  # refuse the job: Snakemake reports it failed and submits nothing else
"""


def submitted_options(slurm_cluster, tmp_path, config: dict) -> tuple[dict, str]:
    """What Snakemake's Slurm executor passes to sbatch for a train and an evaluate job of
    ``config`` (rule -> options but --wrap), recorded by a stand-in sbatch that refuses every
    job; and Snakemake's log."""
    work = tmp_path / "work"
    shutil.copytree(REPO / "params", work / "params")
    shutil.copytree(REPO / "slurm", work / "slurm")
    (work / "data" / "synthetic").mkdir(parents=True)  # present: no data job before training
    done = work / "results" / "synthetic" / "m2f_tiny" / "train.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")  # trained: its evaluation can be submitted
    (work / "gpu.yaml").write_text(yaml.safe_dump(config))
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.jsonl"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable, log=str(log)))
    (bin_dir / "sbatch").chmod(0o755)
    env = cluster_env(slurm_cluster, EFFM2F_SLURM_GPU_PARTITION="gpu_part")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--cores", "all", "--profile", "slurm", "--retries", "0", "--keep-going",
           "results/synthetic/proscale_tiny/train.json",
           "results/synthetic/m2f_tiny/eval/metrics.json", "--configfile", "gpu.yaml"]
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0, res.stderr[-3000:]  # every job was refused
    options = {}
    for line in log.read_text().splitlines():
        argv = json.loads(line)
        rule = argv[argv.index("--comment") + 1].split("_wildcards_")[0].removeprefix("rule_")
        options[rule] = [a for a in argv if not a.startswith("--wrap")]
    assert set(options) == {"train", "evaluate"}, (options, res.stderr[-3000:])
    return options, res.stderr


def test_gpu_jobs_ask_slurm_for_gpus_and_tasks(slurm_cluster, tmp_path):
    """A 4-GPU training config: the sbatch options of its training and evaluation jobs."""
    config = {"train": {"accelerator": "gpu", "devices": 4, "strategy": "ddp", "threads": 1,
                        "num_workers": 4, "max_time": None},
              "evaluate": {"device": "auto"}}
    options, log = submitted_options(slurm_cluster, tmp_path, config)
    train, evaluate = options["train"], options["evaluate"]
    # one node, 4 GPUs, one task per GPU (MPI-style: --ntasks, no --ntasks-per-node, which
    # --ntasks-per-gpu excludes), CPUs per task = threads + workers, signalled before the limit
    for option in ("--nodes=1", "--gpus=4", "--ntasks-per-gpu=1", "--ntasks=4",
                   "--cpus-per-task=5", "--signal=USR1@120", "--requeue"):
        assert train.count(option) == 1, (option, train)
    assert not [a for a in train if a.startswith("--ntasks-per-node")], train
    assert train[train.index("-p") + 1] == "gpu_part" and "-t" in train and "--mem" in train
    assert train[train.index("-t") + 1] == str(24 * 60)
    # the training is launched by srun inside the job, one task per GPU
    assert ("${SLURM_JOB_ID:+srun --kill-on-bad-exit=1 --nodes=1 --ntasks=4"
            " --ntasks-per-node=4 --cpus-per-task=5}") in log, log[-3000:]
    # evaluation: one GPU, one task, not signalled (Snakemake shares its job step)
    for option in ("--gpus=1", "--ntasks-per-gpu=1", "--nodes=1"):
        assert evaluate.count(option) == 1, (option, evaluate)
    assert not [a for a in evaluate if a.startswith(("--signal", "--ntasks=", "--requeue"))]
    assert evaluate[evaluate.index("-p") + 1] == "gpu_part"


# A model small enough that a 60-step training takes seconds (the engine tests' tiny model).
TINY_VARIANTS = {"tiny": {
    "backbone": "resnet_test", "freeze_backbone_norm": False, "hidden_dim": 32, "mask_dim": 32,
    "norm_groups": 8,
    "encoder": {"num_heads": 2, "ffn_dim": 64, "schedule": [0, 0, 2]},
    "decoder": {"num_queries": 6, "num_layers": 2, "num_heads": 2, "ffn_dim": 64},
    "loss": {"train_num_points": 256},
}}
MAX_STEPS = 60
TARGET = "results/synthetic/tiny/train.json"


def small_workdir(folder: Path, mlflow_db: Path) -> Path:
    """A work folder for the repository's Snakefile: params/, the slurm profile, the tiny variant,
    a small synthetic dataset and test.yaml (a short training of `tiny`, tracked in mlflow_db)."""
    from effm2f.data.synthetic import SyntheticConfig, generate_coco

    folder.mkdir(parents=True)
    shutil.copytree(REPO / "params", folder / "params")
    shutil.copytree(REPO / "slurm", folder / "slurm")
    (folder / "variants_tiny.yaml").write_text(yaml.safe_dump(TINY_VARIANTS))
    data = {"num_train": 12, "num_val": 3, "height": 64, "width": 64, "seed": 3}
    generate_coco(folder / "data" / "synthetic", SyntheticConfig(**data), workers=1,
                  progress=False)
    config = {
        "variants_file": "variants_tiny.yaml",
        "data": {"root": "data", "synthetic": data},
        "train": {"variants": ["tiny"], "batch_size": 2, "max_steps": MAX_STEPS,
                  "max_time": None, "checkpoint_every": 5, "log_every": 5},
        # the variants file holds only `tiny`: every section that names variants names it alone
        "flops": {"variants": ["tiny"]},
        "latency": {"variants": ["tiny"]},
        "mlflow": {"tracking_uri": f"sqlite:///{mlflow_db}", "experiment": "retry"},
    }
    (folder / "test.yaml").write_text(yaml.safe_dump(config))
    return folder


def snakemake_cmd(*args: str) -> list[str]:
    # --configfile takes several values, so it goes last
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), TARGET,
            *args, "--configfile", "test.yaml"]


def training_processes(workdir: Path) -> list[int]:
    """Pids of `effm2f ... train` processes working in ``workdir`` (this test's, nobody else's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        if cwd == workdir.resolve() and b"effm2f.cli.main" in argv and b"train" in argv:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_failed_training_job_is_retried(slurm_cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    workdir = small_workdir(tmp_path / "retried", tmp_path / "retried.db")
    checkpoints = workdir / "results" / "synthetic" / "tiny" / "checkpoints"
    log = tmp_path / "retried.log"
    with log.open("w") as handle:
        process = subprocess.Popen(snakemake_cmd("--cores", "all", "--profile", "slurm"),
                                   cwd=workdir, env=cluster_env(slurm_cluster), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Kill the training process (not Snakemake, not Slurm) once its first checkpoint is in.
        killed = None
        deadline = time.monotonic() + 400
        while killed is None and time.monotonic() < deadline and process.poll() is None:
            pids = training_processes(workdir)
            if pids and (checkpoints / "last.ckpt").is_file():
                time.sleep(0.2)  # let the checkpoint writes of this step finish
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed = pids
            time.sleep(0.05)
        assert killed, f"no training process to kill:\n{log.read_text()[-4000:]}"
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            for _, job_id in SUBMITTED.findall(log.read_text()):
                slurm_cluster.run("scancel", job_id)
    output = log.read_text()
    assert process.returncode == 0, output[-8000:]

    # Slurm saw the job fail once; the profile's retries submitted it again, and it completed.
    jobs = slurm_jobs(slurm_cluster, output)
    states = [jobs[job_id]["state"] for job_id in sorted(jobs, key=int)]
    assert states == ["FAILED", "COMPLETED"], jobs
    assert all(j["comment"] == "rule_train_wildcards_synthetic_tiny" for j in jobs.values())
    train_log = (workdir / "results" / "logs" / "train" / "synthetic" / "tiny.log").read_text()
    assert "Restoring states from the checkpoint path at" in train_log, train_log[-3000:]

    summary = json.loads((workdir / TARGET).read_text())
    assert summary["global_step"] == MAX_STEPS

    # One MLflow run for the job, continued by the retry and finished.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'retried.db'}")
    experiment = client.get_experiment_by_name("retry")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_id == summary["mlflow_run_id"]
    assert run.data.tags["effm2f.run_key"].startswith("synthetic/tiny/train/")
    assert run.data.metrics["train/steps"] == MAX_STEPS

    # The same weights as an uninterrupted run of the same config (run locally: no Slurm needed).
    straight = small_workdir(tmp_path / "straight", tmp_path / "straight.db")
    rc, out = run_logged(snakemake_cmd("--cores", "1"), cwd=straight,
                         env=cluster_env(slurm_cluster), timeout=300, log=tmp_path / "straight.log")
    assert rc == 0, out[-6000:]
    resumed = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    plain = torch.load(straight / "results" / "synthetic" / "tiny" / "checkpoints" / "last.ckpt",
                       map_location="cpu", weights_only=False)
    assert resumed["global_step"] == plain["global_step"] == MAX_STEPS
    assert resumed["state_dict"].keys() == plain["state_dict"].keys()
    for name, value in plain["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][name], value, rtol=0, atol=1e-6), name
