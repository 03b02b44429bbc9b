"""The `transcribe` command line.

`transcribe --help` answers at once: this module imports only the standard library, and
each subcommand's module (which may import torch) is imported only when that subcommand
runs. A command's module provides `add_<name>_arguments(parser)` and `run_<name>(args)`,
where <name> is the command with '-' replaced by '_'.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> (module that owns it, one-line help). Order is the order of a user's path.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("transcribe.datacli", "download SVHN / build a preprocessed cache from a format-1 folder"),
    "train": ("transcribe.training", "train a model; writes a run folder"),
    "evaluate": ("transcribe.evaluation", "write a predictions file and the accuracy-vs-coverage report"),
    "gallery": ("transcribe.report", "HTML gallery + contact sheet of the worst mistakes from a predictions file"),
    "predict": ("transcribe.evaluation", "read the number in photos, or refer them to a human"),
    "export": ("transcribe.export", "write the reader and detector as ONNX (+ JSON) for the torch-free runtime"),
    "compare": ("transcribe.compare", "compare several predictions files on one accuracy-vs-coverage plot"),
    "baseline": ("transcribe.baseline", "run an off-the-shelf OCR engine through the same evaluation"),
    "learning-curve": ("transcribe.methodology", "error against training-set size, with a power-law fit"),
    "diagnose": ("transcribe.methodology", "name the regime of a run: underfitting, overfitting or a defect"),
    "lr-sweep": ("transcribe.methodology", "training error against learning rate on a log grid"),
    "search": ("transcribe.search", "hyperparameter search with Optuna (random, grid or TPE)"),
    "check": ("transcribe.checks", "the chapter's debugging checks as a pass/fail table"),
    "bench": ("transcribe.bench", "training, inference and loader throughput on this machine"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="transcribe",
        description="Read house numbers from photos; refer the unsure ones to a person.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items())
        + "\n\n`transcribe COMMAND --help` describes a command.",
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv[:1] or ["--help"])  # prints help or a clear 'invalid choice' error
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    fn = name.replace("-", "_")
    sub = argparse.ArgumentParser(prog=f"transcribe {name}", description=COMMANDS[name][1])
    getattr(module, f"add_{fn}_arguments")(sub)
    args = sub.parse_args(rest)
    try:
        result = getattr(module, f"run_{fn}")(args)
    except KeyboardInterrupt:
        print(f"transcribe {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # bad input: one clear line (the message names the file), no traceback
        if not _is_user_error(err) or os.environ.get("TRANSCRIBE_DEBUG"):
            raise
        print(f"transcribe {name}: error: {err}", file=sys.stderr)
        return 1
    return int(result or 0)


def _is_user_error(err: BaseException) -> bool:
    """Errors about the user's input (files, values), as opposed to bugs, which keep their traceback.
    Set TRANSCRIBE_DEBUG=1 to see the traceback of these too."""
    return isinstance(err, (OSError, ValueError)) or type(err).__name__ == "DataError"


if __name__ == "__main__":
    sys.exit(main())
