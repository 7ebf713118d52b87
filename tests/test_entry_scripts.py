"""The shipped combinations run from `accelerate launch` as a user starts them: iBOT, MAE + DINO,
and DINO with the DINOv2 options (one tiny epoch each on the image folder)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2", "--model.patch_size", "4",
        "--model.img_size", "16", "--crops.local_number", "2", "--crops.local_size", "8", "--dino.out_dim", "64",
        "--dino.hidden_dim", "32", "--dino.bottleneck_dim", "16", "--train.batch_size", "16", "--train.epochs", "1",
        "--train.num_workers", "0", "--train.knn_every", "0"]
SCRIPTS = {
    "ibot": ("pretrain/ibot.py", ["--ibot.shared_head", "false", "--ibot.patch_out_dim", "48", "--start", "none"]),
    "mae_dino": ("pretrain/mae_dino.py", ["--mae.decoder_dim", "32", "--mae.decoder_depth", "1",
                                          "--mae.decoder_heads", "2", "--weights.dino", "0.5"]),
    "dinov2_options": ("pretrain/dino.py", ["--dino.koleo_weight", "0.1", "--dino.centering", "sinkhorn",
                                            "--model.reg_tokens", "2", "--start", "none"]),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_entry_script_runs_under_accelerate_launch(name, tmp_path, image_folder):
    script, extra = SCRIPTS[name]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu.yaml"),
           "--num_cpu_threads_per_process", "1", str(REPO / script), "--data", str(image_folder),
           "--out", str(tmp_path / "run"), *TINY, *extra]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done. Outputs in" in proc.stdout and (tmp_path / "run" / "backbone.safetensors").is_file()
