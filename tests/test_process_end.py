"""How a command's process ends (sslvit.runtime.process_end): a launched process (WORLD_SIZE > 1)
leaves without Python's finalization, where a gloo worker thread still letting go of a collective's
tensors aborted it (SIGABRT) now and then, and with the exit status and output Python would give;
a process of its own ends as Python ends it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import atexit, sys
from sslvit.runtime.process_end import ends_process

atexit.register(lambda: print("finalized", file=sys.stderr))

@ends_process
def main(how):
    print("printed without a newline", end="")  # still reaches the reader
    if how == "exit 2":
        raise SystemExit(2)
    if how == "exit text":
        raise SystemExit("a sentence for the user")
    if how == "error":
        raise ValueError("boom")

main(sys.argv[1])
"""
ENDINGS = {"return": (0, ""), "exit 2": (2, ""), "exit text": (1, "a sentence for the user"),
           "error": (1, "ValueError: boom")}


@pytest.mark.parametrize("launched", [True, False], ids=["launched", "alone"])
@pytest.mark.parametrize("how", list(ENDINGS))
def test_a_launched_process_ends_with_pythons_status_and_output_but_without_finalization(how, launched):
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    env["PYTHONPATH"] = str(REPO)
    if launched:
        env["WORLD_SIZE"] = "2"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, how], env=env, capture_output=True, text=True,
                          timeout=120)
    status, said = ENDINGS[how]
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == "printed without a newline"
    assert said in proc.stderr
    if how == "error":
        assert "Traceback (most recent call last)" in proc.stderr
    assert ("finalized" in proc.stderr) is not launched


@pytest.mark.parametrize("rank", [0, 1])
def test_another_processs_traceback_starts_on_a_line_of_its_own(rank):
    """The main process (rank 0) draws the progress bar without a newline on the terminal every
    process shares; a traceback from another process starts on the next line, not after the bar."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2", "RANK": str(rank)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "error"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("\nTraceback (most recent call last)" if rank else "Traceback"), proc.stderr[:200]
