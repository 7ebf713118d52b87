"""Checks the end-to-end tests share: two runs ended with the same weights, and a run's export
loads into timm from its own backbone.json and is scored by the k-NN probe."""
import json
import os
from pathlib import Path

import numpy as np
from safetensors.torch import load_file


def assert_same_backbone(a: Path, b: Path) -> None:
    wa, wb = load_file(str(Path(a) / "backbone.safetensors")), load_file(str(Path(b) / "backbone.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) == 0.0


def assert_timm_loads_and_is_probed(run: Path) -> None:
    import timm

    from sslvit.eval.knn_probe import KNNProbeConfig, run_knn_probe
    from sslvit.models.hmlp_stem import HMLPStem

    spec = json.loads((Path(run) / "backbone.json").read_text())["timm"]
    kw = {k: v for k, v in spec.items() if k not in ("model_name", "pretrained", "embed_layer", "block_fn")}
    model = timm.create_model(spec["model_name"], pretrained=False, embed_layer=HMLPStem, **kw)
    model.load_state_dict(load_file(str(Path(run) / "backbone.safetensors")), strict=True)
    knn = run_knn_probe(KNNProbeConfig(ckpt=str(run), ks=(5,), baselines=False, picture_queries=0))
    assert np.isfinite(knn["results"]["pretrained"][5]["top1"])


FINALIZATION_SAID = ("import atexit, os, sys\n"
                     "if os.environ.get('RANK') is not None:\n"
                     "    atexit.register(lambda: print(f\"finalized by rank {os.environ['RANK']}\",\n"
                     "                                  file=sys.stderr))\n")
"""A ``sitecustomize`` by which each launched process (RANK set; not the launcher) that ends through
Python's finalization says 'finalized by rank N' on stderr."""


def sitecustomized(folder: Path, code: str) -> dict:
    """The environment for a subprocess whose Python first runs ``code`` (a ``sitecustomize`` written
    into ``folder``), with the repository importable and one OpenMP thread."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(code)
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{Path(__file__).resolve().parents[1]}",
            "OMP_NUM_THREADS": "1"}
