"""keep_freed_memory: freed large tensors are reused instead of page-faulted back in."""
import json
import os
import platform
import subprocess
import sys

import pytest

# allocate and free a 64 MiB tensor again and again, as training steps do with their activations;
# count the minor page faults of the last 10 of 30 (glibc reuses a freed block once neighbouring
# free blocks have merged, which takes a few rounds because torch asks for aligned blocks)
SCRIPT = """
import json, resource, sys
from sslvit.runtime.cpu_allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
import torch
for _ in range(20):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str, env_off: bool = False) -> dict:
    env = {"SSLVIT_MALLOC_TUNING": "0"} if env_off else {}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_tensors_are_reused_without_page_faults():
    pages_per_tensor = (64 << 20) // 4096  # 16,384
    off, on = _faults("off"), _faults("on")
    assert on["applied"] is True
    # glibc's default mmaps and unmaps each 64 MiB block: every reuse faults all its pages again
    assert off["faults"] > 10 * pages_per_tensor * 0.9
    assert on["faults"] < pages_per_tensor  # reused from the heap: (almost) no new pages


def test_environment_switch_turns_it_off():
    assert _faults("on", env_off=True)["applied"] is False
