"""The `transcribe` command line.

`transcribe --help` and `transcribe COMMAND --help` answer at once: this module imports only
the standard library and config.py (the frozen configurations the flags are derived from),
and a command's module, which imports torch at its top, is imported only when the command
runs. The flags of the core commands (data, train, evaluate, gallery, predict) are defined
here, as `add_<name>_arguments(parser)`, and each module provides `run_<name>(args)`, where
<name> is the command with '-' replaced by '_'. A study tool (transcribe/studies/) defines
its own `add_<name>_arguments` and imports the core inside its functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import pathlib
import sys

from transcribe import config as C

DISTRIBUTION = "transcribe-svhn"  # the name on PyPI (`transcribe` is taken); the import name is transcribe

# command -> (module that owns it, one-line help). Order is the order of a user's path.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("transcribe.datacli", "download SVHN / build a preprocessed cache from a format-1 folder"),
    "train": ("transcribe.training", "train a model; writes a run folder"),
    "evaluate": ("transcribe.evaluation", "write a predictions file and the accuracy-vs-coverage report"),
    "gallery": ("transcribe.report", "HTML gallery + contact sheet of the worst mistakes from a predictions file"),
    "predict": ("transcribe.predict", "read the number in photos, or refer them to a human"),
    "export": ("transcribe.export", "write the reader and detector as ONNX (+ JSON) for the torch-free runtime"),
    "compare": ("transcribe.studies.compare", "compare several predictions files on one accuracy-vs-coverage plot"),
    "distil": ("transcribe.distil", "train the paper's ConvNet on a transfer run's soft targets plus the true labels"),
    "transfer": ("transcribe.transfer", "fine-tune a pretrained line recognizer (PP-OCR), k-fold cross-validated"),
    "fit-chooser": ("transcribe.whole", "learn which candidate box holds the number, from a transfer run's fold models"),
    "fit-box": ("transcribe.train_boxfit", "learn to fit a found box to the number's union box (a small regressor)"),
    "baseline": ("transcribe.studies.baseline", "run an off-the-shelf OCR engine through the same evaluation"),
    "learning-curve": ("transcribe.studies.methodology", "error against training-set size, with a power-law fit"),
    "diagnose": ("transcribe.studies.methodology", "name the regime of a run: underfitting, overfitting or a defect"),
    "lr-sweep": ("transcribe.studies.methodology", "training error against learning rate on a log grid"),
    "search": ("transcribe.studies.search", "hyperparameter search with Optuna (random, grid or TPE)"),
    "check": ("transcribe.studies.checks", "the chapter's debugging checks as a pass/fail table"),
    "bench": ("transcribe.studies.bench", "training, inference and loader throughput on this machine"),
    "serve": ("transcribe.serve", "the referral service: API, review queue, operator and status pages"),
    "labels": ("transcribe.labels", "reviewed photos back to training: export a format-1 folder, re-choose the threshold"),
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
    parser.add_argument("--version", action="store_true", help="print the installed version and exit")
    if argv[:1] == ["--version"]:
        print(f"transcribe {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv[:1] or ["--help"])  # prints help or a clear 'invalid choice' error
        return 2
    name, rest = argv[0], argv[1:]
    fn = name.replace("-", "_")
    sub = argparse.ArgumentParser(prog=f"transcribe {name}", description=COMMANDS[name][1])
    add_arguments(name)(sub)
    args = sub.parse_args(rest)
    module, run = COMMANDS[name][0], f"run_{fn}"
    if name == "evaluate" and not args.boxes:  # whole photos: localize, then read (whole.py reads evaluation.py)
        module, run = "transcribe.whole", "run_evaluate_without_boxes"
    elif name == "evaluate" and (args.run / "model.pt").is_file():  # a transfer run: transfer.CHECKPOINT
        module, run = "transcribe.whole", "run_evaluate_transfer"
    try:
        result = getattr(importlib.import_module(module), run)(args)
    except KeyboardInterrupt:
        print(f"transcribe {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # bad input: one clear line (the message names the file), no traceback
        if not _is_user_error(err) or os.environ.get("TRANSCRIBE_DEBUG"):
            raise
        print(f"transcribe {name}: error: {err}", file=sys.stderr)
        return 1
    return int(result or 0)


def version() -> str:
    """The installed distribution's version (importlib.metadata), or why there is none."""
    from importlib import metadata
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return f"unknown ({DISTRIBUTION} is not installed: pip install -e .)"


def add_arguments(name: str):
    """The function that adds command `name`'s flags: defined here for a core command, in its
    module for a study tool."""
    fn = f"add_{name.replace('-', '_')}_arguments"
    return globals().get(fn) or getattr(importlib.import_module(COMMANDS[name][0]), fn)


def _is_user_error(err: BaseException) -> bool:
    """Errors about the user's input (files, values), as opposed to bugs, which keep their traceback.
    Set TRANSCRIBE_DEBUG=1 to see the traceback of these too."""
    return isinstance(err, (OSError, ValueError)) or type(err).__name__ == "DataError"


# ---------------------------------------------------------------- the core commands' flags

DATA_FORMS = """    transcribe data svhn [--root data/svhn] [--splits train test extra]
        download + extract the official archives (fetch.fetch_svhn), then cache each split
    transcribe data synth --photos N [--out data/synth/train] [--synth-seed S]
        write N synthetic house-number photos in format 1 (synth.generate)
    transcribe data FOLDER [--crop-widen 1.3] [--val-fraction 0.1] [--strict]
        build (or reuse) the cache of a format-1 folder and print what is in it:
        counts, length histogram, validation split sizes, what was skipped and why
    transcribe data CACHE.h5
        print the summary stored in an existing cache"""


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "forms:\n" + DATA_FORMS
    parser.add_argument("target", metavar="svhn|synth|FOLDER|CACHE.h5",
                        help="'svhn' (download the official data), 'synth' (generate photos), a format-1 "
                             "folder to cache (write ./svhn for a folder named svhn), or a cache to describe")
    svhn_group = parser.add_argument_group("svhn")
    svhn_group.add_argument("--root", default=C.DEFAULT_SVHN_ROOT, help="where the splits are extracted (default: %(default)s)")
    svhn_group.add_argument("--splits", nargs="+", default=list(C.SVHN_SPLITS), choices=C.SVHN_SPLITS,
                            help="which archives to fetch and cache (default: %(default)s; extra is 202,353 photos)")
    synth_group = parser.add_argument_group("synth")
    synth_group.add_argument("--photos", type=int, default=None, metavar="N",
                             help="number of photos to generate (required)")
    synth_group.add_argument("--synth-seed", type=int, default=0,
                             help="seed of the generator (default: %(default)s)")
    synth_group.add_argument("--out", default=C.DEFAULT_SYNTH_OUT, help="format-1 folder to write (default: %(default)s)")
    cache_group = parser.add_argument_group("cache")
    cache_group.add_argument("--strict", action=argparse.BooleanOptionalAction, default=False,
                             help="any problem in the data is an error (default: off: skip and count it)")
    cache_group.add_argument("--workers", type=int, default=None,
                             help=f"processes decoding photos (default: {C.CACHE_WORKERS} for splits of {C.PARALLEL_FROM:,}+ photos, else 0)")
    # --crop-widen, --size, --val-fraction, --val-size, --split-seed, --cache-dir come from
    # DataConfig, so the defaults printed here are the ones training uses.
    C.add_dataclass_arguments(parser, C.DataConfig, skip=("train", "crop", "train_size", "mix", "mix_size"))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE.json",
                        help='start from {"model": ..., "data": ..., "train": ...} (e.g. the best '
                             'configuration a search wrote); flags given here override it')
    parser.epilog = (f"--preset chooses the model ({', '.join(C.PRESETS)}; default {C.DEFAULT_PRESET}); the "
                     f"ModelConfig flags override single fields of it, and the defaults they show are the "
                     f"{C.DEFAULT_PRESET} preset's. Training resumes when --out holds ckpt-last.pt; its stored "
                     f"settings are then the defaults.")
    model_clash, data_clash = C.flag_collisions()
    C.add_dataclass_arguments(parser, C.TrainConfig)
    # One group per configuration; a field whose name clashes gets a 'model_'/'data_' destination.
    group = C.add_dataclass_arguments(parser, C.ModelConfig, skip=tuple(model_clash),
                                      shown=C.PRESETS[C.DEFAULT_PRESET], shown_as=f"{C.DEFAULT_PRESET} preset")
    if model_clash:
        C.add_dataclass_arguments(parser, C.ModelConfig, prefix="model_", group=group, skip=tuple(
            f.name for f in dataclasses.fields(C.ModelConfig) if f.name not in model_clash),
            shown=C.PRESETS[C.DEFAULT_PRESET], shown_as=f"{C.DEFAULT_PRESET} preset")
    group = C.add_dataclass_arguments(parser, C.DataConfig, skip=tuple(data_clash))
    if data_clash:
        C.add_dataclass_arguments(parser, C.DataConfig, prefix="data_", group=group, skip=tuple(
            f.name for f in dataclasses.fields(C.DataConfig) if f.name not in data_clash))


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=pathlib.Path, help="run folder (holds config.json, ckpt-best.pt, ckpt-last.pt)")
    parser.add_argument("--split", default="val",
                        help="val (the run's validation split: chooses the refusal threshold), test (the "
                             "'test' folder beside the run's first training folder), train (the photos the "
                             "run trained on, without its validation split) or PATH (a format-1 "
                             "folder or .h5 cache); default: val")
    parser.add_argument("--target", type=float, default=C.TARGET,
                        help=f"accuracy the accepted transcriptions must reach (default: {C.TARGET}, human level)")
    parser.add_argument("--checkpoint", choices=C.CHECKPOINTS, default="best", help="which checkpoint (default: best)")
    parser.add_argument("--cards", type=int, default=C.GALLERY_N, help=f"photos per gallery section (default: {C.GALLERY_N})")
    parser.add_argument("--boxes", action=argparse.BooleanOptionalAction, default=True,
                        help="read the number in the split's given boxes (default); --no-boxes ignores them: "
                             "find the number in each whole photo, then read it; writes "
                             "RUN/eval/<split>-noboxes (whole.py)")
    parser.add_argument("--limit", type=int, default=0, help="with --no-boxes: the first LIMIT photos only (0: all)")
    C.add_device_argument(parser)


def add_gallery_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", type=pathlib.Path, help="a predictions.jsonl file (any split, any system)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="folder for gallery.html and mistakes.png (default: beside the predictions file)")
    parser.add_argument("--cards", type=int, default=C.GALLERY_N, help=f"photos per section (default: {C.GALLERY_N})")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the random sample (default: 0)")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Output: one record per photo (CSV with a header, or JSON lines): file, decision (accepted / "
                     "referred / unreadable), reason, transcription (the best guess, also when referred), log_p "
                     "(log P(S|X)), p, box (left, top, width, height of the crop read), box_source, alternatives.")
    parser.add_argument("images", nargs="+", type=pathlib.Path,
                        help="photos, or folders (every image in them, in natural order)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--box", default=None, metavar="L,T,W,H",
                       help="the number's box in the one photo (pixels); it is widened by the run's factor "
                            "(write --box=-3,... when left is negative). Without --box or --boxes the number "
                            "is found in the photo (localize.py; an already cropped number is found too)")
    where.add_argument("--boxes", type=pathlib.Path, default=None, metavar="FILE",
                       help="boxes for many photos: a CSV with columns file,left,top,width,height (one row per "
                            "digit or per number; a photo's rows are joined into one box) or a format-1 "
                            "digitStruct.mat. Photos are matched by path, else by file name; a photo not listed "
                            "is reported unreadable, not searched")
    reader = parser.add_mutually_exclusive_group()
    reader.add_argument("--run", type=pathlib.Path, default=pathlib.Path(C.DEFAULT_RUN),
                        help=f"run folder with ckpt-best.pt and threshold.json, or a transfer run's model.pt "
                             f"(default: {C.DEFAULT_RUN})")
    reader.add_argument("--model", type=pathlib.Path, default=None, metavar="MODEL.onnx",
                        help="read with files from `transcribe export` instead of --run: no torch needed "
                             "(pip install 'transcribe-svhn[runtime]'; runtime.py)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="also list the K most probable transcriptions with their log P(S|X) (default: 0)")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="output format (default: csv)")
    parser.add_argument("--out", type=pathlib.Path, default=None, metavar="FILE",
                        help="write the records to FILE (atomically) instead of stdout")
    C.add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="crops per forward pass (memory only; the answers do not depend on it; default: 64)")


def add_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    C.add_dataclass_arguments(parser, C.TransferConfig)
    parser.add_argument("--train", required=True, help="format-1 folder of labelled photos")
    parser.add_argument("--folds", type=int, default=5, help="k-fold cross-validation (0: train only; default: 5)")
    parser.add_argument("--keep-folds", action=argparse.BooleanOptionalAction, default=False,
                        help="also keep each fold's model as RUN/folds/K/ (a run folder whose config.json names the "
                             "photos it never saw), to read out-of-fold photos later (default: no)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="hold out the validation split `transcribe train --val-fraction F --split-seed S` holds "
                             "out (the same photos): never trained on, read at the end into eval/val/ (default 0: none)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of that split (default: 0, as `transcribe train`)")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (a quick look)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch and onnxruntime CPU threads (default: %(default)s)")
    parser.add_argument("--cache-dir", default="data/cache/transfer",
                        help="where the stem features of the views are cached ('' = no cache)")
    C.add_device_argument(parser)  # the trained stage, neck and head; the frozen stem runs in onnxruntime on the CPU


def add_fit_box_arguments(parser: argparse.ArgumentParser) -> None:
    """`transcribe fit-box` (train_boxfit.py): here, so its --help needs no torch."""
    parser.add_argument("--train", required=True, help="format-1 folder whose union boxes it learns")
    parser.add_argument("--out", required=True, type=pathlib.Path,
                        help="folder to write boxfit.onnx and boxfit.json into (a run folder: evaluate --no-boxes, "
                             "predict and export then use it)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="leave out the photos `transcribe train --val-fraction F --split-seed S` holds out "
                             "(the ones the run is judged on; default 0: none)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of that split (default 0)")
    parser.add_argument("--seconds", type=float, default=300, help="training budget in seconds (default 300)")
    parser.add_argument("--steps", type=int, default=6000, help="training steps, if they end first (default 6000)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per step (default 64)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate, cosine decay (default 2e-3)")
    parser.add_argument("--limit", type=int, default=0, help="use at most this many photos (default 0: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")


def add_distil_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)  # the student's run: every flag of `transcribe train`
    C.add_dataclass_arguments(parser, C.DistilConfig)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=pathlib.Path, help="run folder (ckpt-best.pt, threshold.json from `evaluate --split val`)")
    parser.add_argument("--format", nargs="+", choices=C.EXPORT_FORMATS, default=["onnx"],
                        help="onnx (always written: the runtime reads it); torchscript adds model.pt")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="output folder (default: RUN/export)")
    parser.add_argument("--checkpoint", choices=C.CHECKPOINTS, default="best", help="which checkpoint (default: best)")
    parser.add_argument("--check-limit", type=int, default=0,
                        help="check the export on only the first N validation crops (default 0: all)")


if __name__ == "__main__":
    sys.exit(main())
