"""What every ``probes/*.py`` script does around its probe: config, clear errors, output, and
``--weights FILE`` (a checkpoint from elsewhere, in any layout ``--init`` reads) in place of ``--ckpt RUN``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from sslvit.config import ConfigError, build_config, help_text
from sslvit.models.checkpoint_layouts import WeightsError
from sslvit.runtime.errors import USER_ERRORS, explained
from sslvit.runtime.main_first import main_process_does
from sslvit.runtime.process_end import ends_process, say_error

WEIGHTS_HELP = ("  --weights FILE  a checkpoint from elsewhere (timm, official MAE / DINO, DINOv2, sslvit) instead of "
                "--ckpt: its backbone is imported into FILE_sslvit/ beside it, where the results go")


def weights_as_ckpt(argv: list[str]) -> list[str]:
    """``--weights FILE`` -> ``--ckpt FILE's folder/<FILE stem>_sslvit`` after importing the file's
    backbone there (what was found is printed); other arguments unchanged."""
    args, weights = list(argv), None
    for i, arg in enumerate(args):
        if arg == "--weights" and i + 1 < len(args):
            weights = args[i + 1]
            del args[i:i + 2]
            break
        if arg.startswith("--weights="):
            weights = arg.split("=", 1)[1]
            del args[i]
            break
    if weights is None:
        return args
    if any(a == "--ckpt" or a.startswith("--ckpt=") for a in args):
        raise ConfigError("--weights and --ckpt were both given: --ckpt takes an sslvit run, --weights a checkpoint "
                          "file from elsewhere; pass one of them.")
    from sslvit.models.export import import_backbone  # lazily: --help and a bad key never load timm

    file = Path(weights).expanduser()
    out = file.parent / f"{file.stem}_sslvit"

    def imported() -> None:  # one process writes the folder; the others read it after
        try:
            lines = import_backbone(file, out)
        except WeightsError as e:
            raise WeightsError(f"--weights {weights}: {e}") from None
        print("\n".join([f"--weights {weights}: {lines[0]}", *(f"  {line}" for line in lines[1:])]))

    main_process_does(imported, f"the backbone of --weights {weights}")
    return [*args, "--ckpt", str(out)]


@ends_process
def main(config_cls, run, fmt, argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:  # the config's keys, then the one flag that is not a key
        print(f"{help_text(config_cls, Path(sys.argv[0]).name)}\n{WEIGHTS_HELP}")
        raise SystemExit(0)
    try:
        cfg = build_config(config_cls, weights_as_ckpt(argv))
        report = run(cfg)
    except USER_ERRORS as e:
        say_error(str(e))
        raise SystemExit(2) from None
    except RuntimeError as e:  # torch's traceback from wherever the probe was when memory or a worker ran out
        sentence = explained(e, "--batch_size", "--num_workers", "run the probe again")
        if sentence is None:
            raise
        say_error(sentence)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Python's traceback, from wherever the probe was; its files are whole or absent
        if int(os.environ.get("RANK", "0")) == 0:
            print("Stopped by Ctrl-C (SIGINT); the probe wrote nothing, and earlier results are as they were.",
                  file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, as a stopped training run
    if report is not None:  # None on the other processes of a multi-process probe
        print(fmt(report))
        if report.get("replaced"):
            print(f"(replaced the earlier {', '.join(report['replaced'])} of a previous probe run)")
        if "ckpt" in report and int(os.environ.get("RANK", "0")) == 0:
            refresh(Path(report["ckpt"]).parent)


def refresh(run_dir: Path) -> None:
    """The run's report.html with this probe's results; a report that fails is a warning only."""
    from sslvit.report import refresh_report

    try:
        path = refresh_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the probe's results are written; its report must not hide them
        print(f"warning: {run_dir}/report.html could not be refreshed ({type(e).__name__}: {e}).", file=sys.stderr)
        return
    if path is not None:
        print(f"report: {path}")
