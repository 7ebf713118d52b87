"""Every launch config loads with accelerate's own config loader and says what its name promises.
The CPU ones also run: launch/cpu.yaml in test_kill_resume.py, launch/cpu_2proc.yaml in
test_equivalence.py and test_shards.py, launch/fsdp_cpu_2proc.yaml in test_fsdp.py."""
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
EXPECTED = {  # file: (distributed_type, num_processes, num_machines, mixed_precision, use_cpu)
    "cpu.yaml": ("NO", 1, 1, "no", True),
    "cpu_2proc.yaml": ("MULTI_GPU", 2, 1, "no", True),
    "gpu_bf16.yaml": ("NO", 1, 1, "bf16", False),
    "multi_gpu.yaml": ("MULTI_GPU", 8, 1, "bf16", False),
    "multi_node.yaml": ("MULTI_GPU", 16, 2, "bf16", False),
    "fsdp_vit_large.yaml": ("FSDP", 8, 1, "bf16", False),
    "fsdp_cpu_2proc.yaml": ("FSDP", 2, 1, "no", True),
}


def test_every_config_in_launch_is_covered():
    assert {p.name for p in LAUNCH.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    cfg = load_config_from_file(str(LAUNCH / name))
    dist, procs, machines, precision, cpu = EXPECTED[name]
    assert str(cfg.distributed_type).split(".")[-1] == dist
    assert (cfg.num_processes, cfg.num_machines, str(cfg.mixed_precision).split(".")[-1]) == (procs, machines,
                                                                                            precision)
    assert bool(cfg.use_cpu) == cpu
    if machines > 1:
        assert cfg.main_process_ip and cfg.main_process_port  # the rendezvous every node needs


def test_fsdp_wraps_the_block_class_the_backbone_is_made_of():
    from sslvit.models.vit import BackboneConfig, build_backbone

    cfg = load_config_from_file(str(LAUNCH / "fsdp_vit_large.yaml"))
    assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    backbone = build_backbone(BackboneConfig(size="tiny", depth=2, patch_size=16, img_size=32))
    assert type(backbone.blocks[0]).__name__ == cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]


def test_the_fsdp_config_tested_on_the_cpu_is_the_gpu_one():
    """test_fsdp.py proves launch/fsdp_cpu_2proc.yaml; the GPU file must shard the same way."""
    gpu, cpu = (load_config_from_file(str(LAUNCH / name)) for name in ("fsdp_vit_large.yaml", "fsdp_cpu_2proc.yaml"))
    assert gpu.fsdp_config == cpu.fsdp_config
    assert gpu.fsdp_config["fsdp_version"] == 2  # FSDP2: torch's fully_shard, which also runs on a CPU


def test_the_slurm_script_parses_and_names_existing_configs():
    text = (LAUNCH / "slurm.sh").read_text()
    assert subprocess.run(["bash", "-n", str(LAUNCH / "slurm.sh")]).returncode == 0
    assert "accelerate launch" in text and "--machine_rank \\$SLURM_NODEID" in text
    for name in ("multi_node.yaml", "fsdp_vit_large.yaml"):
        assert f"launch/{name}" in text and (LAUNCH / name).is_file()


def test_the_slurm_script_hands_accelerate_each_argument_as_given(tmp_path):
    """The README's shard spec reaches every node's ``accelerate launch`` as one word, braces and
    all (the node's shell must not expand it into one word a shard), and a path keeps its spaces.
    srun, scontrol and accelerate are stand-ins: srun runs its command, accelerate writes its argv.
    scontrol writes its second host after a pause, as a long list comes in several writes: the script
    must read the whole list (a reader that leaves after the first line ended the job on SIGPIPE)."""
    argv = tmp_path / "argv"
    fakes = {"srun": 'while [[ "$1" == --* ]]; do shift; done; exec "$@"',
             "scontrol": "printf 'node007\\n'; sleep 0.3; printf 'node008\\n'",
             "accelerate": f'printf "%s\\0" "$@" > {argv}'}
    for name, body in fakes.items():
        (tmp_path / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node[007-008]", "SLURM_NNODES": "2",
           "SLURM_NODEID": "1"}
    args = ["pretrain/mae.py", "--data", "shards/train-{000000..001023}.tar", "--out", "runs/my run's"]
    subprocess.run(["bash", str(LAUNCH / "slurm.sh"), *args], env=env, check=True, cwd=LAUNCH.parent)
    assert argv.read_text().split("\0")[:-1] == [
        "launch", "--config_file", "launch/multi_node.yaml", "--num_machines", "2", "--num_processes", "16",
        "--machine_rank", "1", "--main_process_ip", "node007", "--main_process_port", "29500",
        "--rdzv_backend", "c10d", *args]


BAD = ["--train.epochs", "0"]  # refused before any work: one sentence, exit code 2
SENTENCE = "error: train.epochs must be >= 1 (got 0)."
ACCELERATE_DRESSING = ("Traceback", "CalledProcessError", "were not passed to `accelerate launch`", "num_processes")


def _run(cmd):
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as in a user's fresh shell
    done = subprocess.run([sys.executable, *cmd], cwd=LAUNCH.parent, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(LAUNCH.parent)})
    return done.returncode, done.stdout + done.stderr


def test_one_process_needs_no_launcher_and_a_mistake_shows_only_sslvits_sentence():
    """What the README gives for one process (CPU or one GPU): ``python pretrain/mae.py``."""
    rc, out = _run(["pretrain/mae.py", *BAD])
    assert (rc, out.strip()) == (2, SENTENCE)


def test_accelerate_launch_as_the_readme_gives_it_adds_nothing_to_the_sentence():
    """``accelerate launch -q --num_cpu_threads_per_process N --config_file launch/cpu.yaml``: -q is
    the only way to keep the launcher's CalledProcessError traceback off a child's non-zero exit
    (its simple launcher raises it for any exit code; -q makes it exit 1 instead), and no key of a
    config file sets the CPU threads it otherwise warns it defaulted."""
    rc, out = _run(["-m", "accelerate.commands.launch", "-q", "--num_cpu_threads_per_process", "2",
                    "--config_file", "launch/cpu.yaml", "pretrain/mae.py", *BAD])
    assert rc != 0 and SENTENCE in out
    assert [d for d in ACCELERATE_DRESSING if d in out] == []
    assert out.strip() == SENTENCE
