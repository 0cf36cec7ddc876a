# Config validation and helpers shared by every rule file.
import hashlib
import math
import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from effm2f.config import ConfigError
from effm2f.io import write_text_atomic
from effm2f.variants import check_variants


validate(config, schema="../schemas/config.schema.yaml")

# Jobs call the package's CLI with the interpreter running Snakemake (the project's venv).
EFFM2F = f"{sys.executable} -m effm2f.cli.main"
VARIANTS_FILE = config.get("variants_file", "params/variants.yaml")


def referenced_variants():
    """Every variant a section of the config names (trained, counted or timed)."""
    return [name for key in ("train", "flops", "latency")
            for name in (config.get(key) or {}).get("variants", [])]


# Every named variant is resolved now, so that a bad one fails the DAG (`snakemake -n`) with the
# one line its job would print, not an hour later at job time.
try:
    check_variants(referenced_variants(), VARIANTS_FILE)
except ConfigError as error:
    sys.exit(f"effm2f workflow: error: {error}")


def config_file(*sections):
    """--config argument for a job: the named sections of the config as Snakemake resolved it
    (configfile + --configfile + --config), written to a file named by its content. A job's
    command changes, and the job reruns, exactly when a section it reads changes."""
    subset = {key: config[key] for key in sections if key in config}
    text = yaml.safe_dump(subset, sort_keys=True)
    digest = hashlib.md5(text.encode()).hexdigest()[:12]
    path = Path(".snakemake", "effm2f", f"{'-'.join(sections)}-{digest}.yaml")
    if not path.exists():
        write_text_atomic(path, text)
    return f"--config {path}"


wildcard_constraints:
    dataset="[a-z0-9_]+",
    variant="[a-z0-9_]+",


# --- Slurm -------------------------------------------------------------------------------------
# Partitions come from the user's environment (README, "Running on Slurm"); the account from
# SBATCH_ACCOUNT, which sbatch reads itself (no slurm_account here: the plugin would then validate
# it with sacctmgr, which needs accounting).
SLURM_PARTITION = os.environ.get("EFFM2F_SLURM_PARTITION", "")
SLURM_GPU_PARTITION = os.environ.get("EFFM2F_SLURM_GPU_PARTITION", "") or SLURM_PARTITION
# Slurm sends SIGUSR1 to the job steps 120 s before the time limit; Lightning's SLURMEnvironment
# (src/effm2f/engine/train.py) then saves an hpc checkpoint and requeues the job, which resumes.
PREEMPTION = "--signal=USR1@120 --requeue"


def slurm_resources(*, mem_mb, runtime, cpus=1, gpus=0, nodes=1, extra=""):
    """Snakemake resources of one job: what `--profile slurm` (snakemake-executor-plugin-slurm)
    turns into sbatch options; a local run ignores them (unless limited with --resources).

    mem_mb (per node, sbatch --mem; may be a function of the wildcards), runtime (minutes, -t)
    and cpus (per task, --cpus-per-task) are asked for by every job. A GPU job (gpus per node
    > 0) asks for the GPUs (`gpu` -> --gpus on one node, `gres=gpu:N` -> --gres per node on
    several), one task per GPU (tasks_per_gpu -> --ntasks-per-gpu=1) and its nodes. With more
    than one task it is MPI-style (`mpi`, `tasks` -> --ntasks): the slurm-jobstep plugin then runs
    the rule's shell in the batch step instead of under `srun -n1`, and the rule itself starts
    the tasks with srun_launcher(); and it gets PREEMPTION, because only job steps (the srun'd
    training, not Snakemake in the batch step) receive the signal. A single-task job keeps
    Snakemake and the training in one step, which SIGUSR1 would kill (Python's default action):
    it gets no --signal and relies on the profile's retries, which resume from last.ckpt.
    The partition: EFFM2F_SLURM_PARTITION for CPU jobs, EFFM2F_SLURM_GPU_PARTITION (falling back
    to the former) for GPU jobs; set only when given, else the cluster's default partition.
    """
    resources = {"mem_mb": mem_mb, "runtime": runtime, "cpus_per_task": max(1, cpus)}
    partition = SLURM_GPU_PARTITION if gpus else SLURM_PARTITION
    if partition:
        resources["slurm_partition"] = partition
    if gpus:
        resources.update(tasks_per_gpu=1, nodes=nodes)
        resources.update({"gpu": gpus} if nodes == 1 else {"gres": f"gpu:{gpus}"})
        if gpus * nodes > 1:
            resources.update(mpi="srun", tasks=gpus * nodes)
            extra = f"{PREEMPTION} {extra}".strip()
    if extra:
        resources["slurm_extra"] = extra
    return resources


def srun_launcher(*, gpus, nodes, cpus):
    """Shell prefix of a multi-task (MPI-style) job's command: inside a Slurm job, srun starts one
    task per GPU on every node (Lightning's SLURMEnvironment reads the tasks' SLURM_* variables);
    outside Slurm (a laptop, a workstation) it expands to nothing and Lightning starts its own
    processes. The task geometry is explicit because the jobstep plugin strips the job's SLURM_*
    variables (all but the job id) from the rule's environment. Braces are doubled for the
    shell directive's formatting; "" for a single task (the command text stays as it was)."""
    if gpus * nodes <= 1:
        return ""
    return (f"${{{{SLURM_JOB_ID:+srun --kill-on-bad-exit=1 --nodes={nodes} --ntasks={gpus * nodes}"
            f" --ntasks-per-node={gpus} --cpus-per-task={max(1, cpus)}}}}} ")


def gpus_per_node(accelerator, devices):
    """GPUs a Lightning (accelerator, devices) pair uses per node: devices for gpu/cuda (an
    integer, or a "0,1"-style list; "auto" and -1 count as 1: give an integer on Slurm),
    else 0."""
    if str(accelerator).lower() not in ("gpu", "cuda"):
        return 0
    text = str(devices).strip().strip("[]")
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() and int(text) > 0 else 1


def train_runtime(section):
    """Minutes for a training job: its max_time budget plus 15 minutes of start-up and saving,
    else a day (a usual partition limit); longer trainings continue in requeued or retried
    jobs from their checkpoints."""
    max_time = section.get("max_time")
    return math.ceil(max_time / 60) + 15 if max_time else 24 * 60
