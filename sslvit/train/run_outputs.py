"""What a run leaves beside its checkpoints, and its checks at an epoch's end: the exported
backbone, picture grids, the online k-NN, and the data-health messages (shard counts, unreadable
images)."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType, gather_object

from sslvit.data.stream_loader import StreamLoader, wrong_counts
from sslvit.eval.features import extract_features
from sslvit.eval.knn import knn_classify
from sslvit.files import WRITE_ERRORS, OutputError, mend_write, reason
from sslvit.models.export import export_backbone
from sslvit.pictures import save_columns
from sslvit.report import build_report
from sslvit.report.curves import save_curves
from sslvit.report.runlog import read_log, run_caption
from sslvit.runtime.main_first import raised_together


def sharded(accelerator) -> bool:
    """FSDP: each process holds shards of the parameters, and every forward is collective."""
    return accelerator.distributed_type == DistributedType.FSDP


@contextlib.contextmanager
def gathered(accelerator, model):
    """Under FSDP, every unit's full parameters, for code that does not go through ``model(...)``
    (pictures, the online k-NN): the root unit's (stem, position table, tokens, norms, heads,
    decoder: what no ``Block`` holds) and each Block's (the attention pictures read the last
    block's weights without calling it). A Block that runs a forward inside reshards after it,
    and its next forward gathers again, so every process must enter and run the same forwards.
    Elsewhere nothing happens."""
    if not sharded(accelerator):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]  # the same order on every process
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def exported(model) -> torch.nn.Module:
    return model.exported_backbone()


def export(accelerator, model, raw, cfg, run_dir: Path) -> None:
    """Export the backbone; called on every process, because FSDP gathers the full weights
    from all of them (elsewhere the main process writes what it holds)."""
    backbone, state = exported(raw), None
    if sharded(accelerator):
        full = accelerator.get_state_dict(model)
        prefix = next(name for name, m in raw.named_modules() if m is backbone) + "."
        state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}

    def write() -> None:
        if os.environ.get("SSLVIT_TEST_EXPORT_PAUSE"):  # lets a test widen the window other processes must wait out
            time.sleep(float(os.environ["SSLVIT_TEST_EXPORT_PAUSE"]))
        export_backbone(backbone, cfg.model, run_dir, state=state)

    def said(failed: BaseException) -> str:
        return (f"Writing the backbone into '{run_dir}' failed ({reason(failed)}); the checkpoint before it is "
                f"written: {mend_write(failed, run_dir)}, then --resume writes the backbone again.")

    raised_together(write if accelerator.is_main_process else None, WRITE_ERRORS, said, OutputError)


def check_shard_counts(accelerator, loader: StreamLoader, train_set, log, epoch: int) -> bool:
    """Compare the shards read whole this epoch (all processes) with the index's counts; warn once
    with the shard names and the true counts. -> True once any shard has been read whole."""
    reads = {}
    for part in gather_object([loader.shard_reads]):
        reads.update(part)
    wrong = wrong_counts(getattr(train_set, "claimed", {}), reads)
    if wrong:
        shown = ", ".join(f"{name}: {claim} in the index, {n} read" for name, (claim, n) in list(wrong.items())[:3])
        msg = (f"the shard index's sample counts are wrong for {len(wrong)} of the {len(reads)} shards read whole "
               f"({shown}); the epoch's length comes from the index, so it re-reads or skips data: write the index "
               "again with `python -m sslvit.data.shards`.")
        log({"epoch": epoch + 1, "shard_counts_wrong": {k: list(v) for k, v in wrong.items()}, "warnings": [msg]})
        accelerator.print(f"warning: {msg}")
    return bool(reads)


def too_many_unreadable(train_set, skipped: int, tried: int, share: float, bad_per_shard) -> str:
    if bad_per_shard:
        where = "in shards " + ", ".join(list(bad_per_shard)[:3]) + " (counts per shard in log.jsonl)"
    else:
        first = train_set.unreadable(3) if hasattr(train_set, "unreadable") else []
        where = "e.g. " + ", ".join(f"'{f}'" for f in first) if first else "see the warnings above"
    return (f"{skipped} of the {tried} images read this epoch ({skipped / tried:.0%}) could not be decoded, more than "
            f"train.max_unreadable {share:.0%} allows: {where}; fix or remove them, or raise train.max_unreadable.")


def online_knn(accelerator, raw, knn_sets, tc) -> dict:
    """k-NN top-1/top-5 of the backbone that is exported (DINO: the teacher) on held-out labelled
    data, with the probe's own extraction and search; no copy of the model is made."""
    backbone = exported(raw)
    was_training = backbone.training
    # a DataLoader draws its base seed from the global RNG: fork it so the training stream
    # (and so resume) does not depend on whether the monitor is on
    with torch.random.fork_rng(devices=[]), accelerator.autocast():
        kw = dict(pool=tc.knn_pool, batch_size=256, device=accelerator.device)
        ftr, ytr = extract_features(backbone, knn_sets[0], desc="online k-NN: train", **kw)
        fva, yva = extract_features(backbone, knn_sets[1], desc="online k-NN: val", **kw)
    backbone.train(was_training)
    res = knn_classify(ftr.numpy(), ytr.numpy(), fva.numpy(), yva.numpy(), ks=(tc.knn_k,))
    (r,) = res.values()
    return {"knn_top1": r["top1"], "knn_top5": r["top5"]}


def _cpu_name() -> str:
    try:  # Linux names the model here; platform.processor() is empty there
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def machine(accelerator) -> dict:
    """What the run ran on, for log.jsonl's first record and the report."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": str(device), "device_name": f"{device.type}: {name}", "processes": accelerator.num_processes,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def save_pictures(accelerator, raw, imgs: torch.Tensor, path: Path) -> None:
    """The objective's picture grid of ``imgs`` at ``path``, captioned from the run's log, and
    the run's curves.png redrawn beside it."""
    was_training = raw.training
    raw.eval()
    # pictures draw their own masks: a forked RNG keeps the training stream (and so resume) unchanged
    cuda = accelerator.device.type == "cuda"
    with torch.random.fork_rng(devices=[accelerator.device] if cuda else []), accelerator.autocast():
        columns = raw.pictures(imgs.to(accelerator.device))
    raw.train(was_training)
    if not accelerator.is_main_process:  # under FSDP every process draws them (see ``gathered``); one writes
        return
    try:
        save_curves(path.parent)
        if columns is None:  # the objective draws no pictures
            return
        normalized = None
        if isinstance(columns, tuple):
            columns, normalized = columns
        caption = run_caption(path.parent, read_log(path.parent), f"{type(raw).__name__} pictures")
        save_columns(columns, path, normalized, caption=caption)
    except WRITE_ERRORS as e:  # pictures only show the run: a full disk is the next checkpoint's to stop it
        print(f"warning: the pictures could not be written into '{path.parent}' ({reason(e)}); the run goes on.",
              file=sys.stderr)


def write_report(accelerator, run_dir: Path) -> None:
    """RUN/report.html at the run's end (also a stopped or failed one): a report that cannot be
    written is a warning, never the run's error."""
    if not accelerator.is_main_process or not (run_dir / "log.jsonl").is_file():
        return
    try:
        accelerator.print(f"Report: {build_report(run_dir)}")
    except Exception as e:  # noqa: BLE001 - the run's own outcome must not be hidden by its report
        accelerator.print(f"warning: the run's report could not be written ({type(e).__name__}: {e}).")
