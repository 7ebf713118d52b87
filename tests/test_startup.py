"""A command's --help and a bad key answer before anything heavy is imported: no timm,
torchvision, faiss, tensorboard or scikit-learn (benchmarks/startup.py times them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("timm", "torchvision", "faiss", "tensorboard", "torch.utils.tensorboard", "sklearn")
SCRIPTS = ["pretrain/mae.py", "pretrain/dino.py", "pretrain/beit.py", "pretrain/ibot.py", "pretrain/mae_dino.py",
           "probes/knn.py", "probes/linear.py", "probes/finetune.py"]
# each script in a fresh interpreter would cost seconds apiece: one interpreter runs them in turn,
# and a library imported by any of them stays in sys.modules for the check
CHECK = """
import contextlib, io, json, runpy, sys
runs = [(s, ['--help']) for s in SCRIPTS] + [('pretrain/mae.py', ['--train.epochs', '0'])]
codes = {}
for script, args in runs:
    sys.argv = [script, *args]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            runpy.run_path(script, run_name='__main__')
        except SystemExit as e:
            codes[' '.join([script, *args])] = e.code
print(json.dumps({'codes': codes, 'heavy': [m for m in HEAVY if m in sys.modules]}))
"""


def test_help_and_a_bad_key_import_no_heavy_library():
    code = f"SCRIPTS = {SCRIPTS!r}\nHEAVY = {HEAVY!r}\n" + CHECK
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == {**{f"{s} --help": 0 for s in SCRIPTS}, "pretrain/mae.py --train.epochs 0": 2}
    assert result["heavy"] == []
