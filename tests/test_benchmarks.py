"""Every benchmark answers --help without running, and prints the machine its figures belong to
(the CPU model and ISA: ``benchmarks/flops.py::print_machine``), as the README asks of each."""
import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "flops.py")  # flops.py is the helper itself
SHELL = sorted(p.name for p in BENCH.glob("*.sh"))


@pytest.mark.parametrize("name", SHELL + SCRIPTS)
def test_every_benchmark_prints_its_machine(name):
    text = (BENCH / name).read_text()
    assert "print_machine(" in text or (name.endswith(".sh") and "benchmarks/quality.py" in text)


def test_every_benchmark_answers_help_without_running(monkeypatch):
    """One interpreter for all (their imports are the cost); --help exits 0 before any figure is made."""
    monkeypatch.syspath_prepend(str(BENCH))
    codes = {}
    for name in SCRIPTS:
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            try:
                runpy.run_path(str(BENCH / name), run_name="__main__")
            except SystemExit as e:
                codes[name] = (e.code, out.getvalue().startswith("usage:"))
    assert codes == {name: (0, True) for name in SCRIPTS}
