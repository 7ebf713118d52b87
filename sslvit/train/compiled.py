"""``train.compile``: the objective's forward (and so its backward) through ``torch.compile``.

inductor's CPU backend fuses what eager runs op by op (GELU, LayerNorm, residual adds, the
loss); compiling a ViT step takes one to two minutes on a 2-core CPU, so it pays on long runs
only (benchmarks/mae_step.py --compile measures both). Where a graph cannot be compiled (no C++
compiler, an op inductor lacks), dynamo's ``suppress_errors`` runs that code eagerly instead:
the run goes on, with the same losses, and says so once.
"""
from __future__ import annotations

import torch


def check_compile_backend(backend: str) -> None:
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"train.compile '{backend}' is not a torch.compile backend; use off or one of "
                         f"{', '.join(sorted(known))} (inductor is the one that fuses).")


def compile_objective(objective: torch.nn.Module, backend: str) -> str:
    """Compile ``objective``'s forward in place (``nn.Module.compile``: its state_dict keys, and
    so checkpoints and resume, stay as they are). -> a line for the run's first lines."""
    import torch._dynamo

    # a graph that fails to compile runs eagerly (with one logged warning) rather than ending the run
    torch._dynamo.config.suppress_errors = True
    objective.compile(backend=backend)
    return (f"train.compile {backend}: the objective's forward is compiled on its first steps "
            "(graphs that cannot be compiled run eagerly)")
