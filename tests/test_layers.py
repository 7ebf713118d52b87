"""The package layers of the README's "Adding an objective": no package of sslvit imports one
above it, so none imports another that imports it back."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sslvit"
# each package may import only those of a lower rank (and itself)
RANK = {"config": 0, "files": 0, "masking": 0, "data": 1, "models": 1, "runtime": 2, "pictures": 2,
        "report": 2, "tokenizers": 3, "eval": 3, "objectives": 4, "train": 5, "recipes": 6, "presets": 0}


def _imports() -> list[tuple[str, str, str]]:
    """-> (importing package, imported package, file) for every ``sslvit.X`` import in sslvit/."""
    found = []
    for f in ROOT.rglob("*.py"):
        if f.name == "__main__.py":  # an entry point (python -m), as pretrain/ is: nothing imports it
            continue
        parts = f.relative_to(ROOT).parts
        pkg = parts[0] if len(parts) > 1 else parts[0][:-3]
        for m in re.finditer(r"^\s*(?:from|import) sslvit\.(\w+)", f.read_text(), re.M):
            if m.group(1) != pkg:
                found.append((pkg, m.group(1), str(f.relative_to(ROOT))))
    return found


def test_every_package_has_a_rank():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")}
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(RANK)


def test_no_package_imports_one_above_it():
    wrong = [f"{f}: {src} imports {dst}" for src, dst, f in _imports() if RANK[dst] >= RANK[src]
             and not (RANK[dst] == RANK[src] == 0)]
    assert wrong == []


def test_the_check_sees_a_wrong_import(tmp_path, monkeypatch):
    bad = ROOT / "objectives" / "_layer_probe.py"
    bad.write_text("from sslvit.train.loop import pretrain\n")
    try:
        assert ("objectives", "train", "objectives/_layer_probe.py") in _imports()
    finally:
        bad.unlink()
