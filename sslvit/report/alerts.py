"""The warnings section of a run's report: what ``log.jsonl`` recorded as going wrong (the
collapse guard and other health checks, skipped non-finite steps, unreadable images and bad
shard samples, wrong shard counts) and a ``FAILED`` file left by a diverged run."""
from __future__ import annotations

import html
from collections import Counter
from pathlib import Path


def warning_lines(run_dir: Path, records: list[dict]) -> list[str]:
    """One line per distinct problem, with how often and from when."""
    lines = []
    failed = Path(run_dir) / "FAILED"
    if failed.is_file():
        lines.append(f"the run failed: {failed.read_text().strip()}")
    skipped = [r for r in records if "skipped_step" in r]
    if skipped:
        kinds = Counter(r["skipped_step"] for r in skipped)
        lines.append(f"{len(skipped)} optimizer step(s) skipped for non-finite values ("
                     + ", ".join(f"{n} {k}" for k, n in kinds.items()) + f"), the first at step {skipped[0]['step']}")
    for r in records:
        if r.get("skipped_images"):
            where = f" in {len(r['bad_samples'])} shard(s): " + ", ".join(
                f"{s}: {dict(k)}" for s, k in list(r["bad_samples"].items())[:3]) if r.get("bad_samples") else ""
            lines.append(f"epoch {r['epoch']}: {r['skipped_images']} unreadable image(s) skipped{where}")
    seen: dict[str, list] = {}
    for r in records:
        if "skipped_step" in r:  # counted above
            continue
        for w in r.get("warnings", []):
            seen.setdefault(w, []).append(r.get("step", r.get("epoch")))
    for w, where in seen.items():
        lines.append(w + (f" (logged {len(where)} times, first at step {where[0]})" if len(where) > 1
                          else f" (at step {where[0]})" if where[0] is not None else ""))
    return lines


def run_warnings(run_dir: Path, records: list[dict]) -> str:
    lines = warning_lines(run_dir, records)
    if not lines:
        return '<p class="none">None: no health warning, skipped step or bad sample in log.jsonl.</p>'
    return "<ul>" + "".join(f'<li class="warn">{html.escape(line)}</li>' for line in lines) + "</ul>"
