"""Every shared constant, and the frozen configurations <-> command-line flags <-> JSON.

Every configuration in transcribe is a `@dataclass(frozen=True)`; flags are derived from
its fields (so a flag cannot drift from the field it sets), and it is saved as JSON in
each run folder and checkpoint so a run can be rebuilt from its folder alone.
It also owns every constant that more than one module needs, defined once with its
derivation: the other modules import them from here. Only the standard library is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# ---------------------------------------------------------------- shared constants
# Goodfellow et al. 2014, sec. 5.1: at most five digits; SVHN's train split has one number
# (of 33,402) with more, excluded from the usable records and counted (svhn.py).
MAX_DIGITS = 5
N_DIGIT_CLASSES = 10  # 0-9
BLANK = 10            # the ad-hoc `blank` head's 11th digit class: "no digit here"
# sec. 5.1: "expand this bounding box by 30% in both the x and the y direction, crop the image
# to that bounding box and resize the crop to 64 x 64 pixels", then a random 54 x 54 crop.
WIDEN = 1.3           # scale of the number's box about its centre
CACHE_SIZE = 64       # side of the stored crop (pixels)
INPUT_SIZE = 54       # side of the random (train) / centre (eval) crop fed to the network
# Human-level transcription accuracy: the accepted photos must reach it (sec. 5; DL book 11.1).
TARGET = 0.98


# ---------------------------------------------------------------- run folders and reports
CHECKPOINTS = ("best", "last")  # RUN/ckpt-<name>.pt, the --checkpoint choices
EXPORT_FORMATS = ("onnx", "torchscript")  # `transcribe export --format`
DEFAULT_RUN = "runs/svhn"       # the Makefile's RUN: where `transcribe predict` looks by default
GALLERY_N = 200                 # photos per gallery section at most (4 pages of 50; a page holds them all)
# `--device`, one behaviour wherever a network runs (runs.resolve_device): auto = cuda if available.
DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "where the network runs: auto (cuda if available, else cpu), cpu or cuda"
# `transcribe data`
SVHN_SPLITS = ("train", "test", "extra")  # the official format-1 archives
DEFAULT_SVHN_ROOT = "data/svhn"
DEFAULT_SYNTH_OUT = "data/synth/train"
# Decoding+cropping runs in a pool of CACHE_WORKERS processes for splits of PARALLEL_FROM photos
# or more. Measured on the 2,000-photo sample (2-core machine shared with other jobs, so noisy):
# build 1.2-1.7 s in-process vs 0.8-1.3 s with 2 workers (dataset.build_cache).
PARALLEL_FROM = 1000
CACHE_WORKERS = 2


# ---------------------------------------------------------------- the frozen configurations
# Flags are derived from the fields (add_dataclass_arguments below), so a flag cannot drift
# from the field it sets; each is saved in the run folder and in every checkpoint.
# model.py builds the network from ModelConfig, dataset.py the caches and splits from
# DataConfig/CacheConfig, training.py the run from TrainConfig.

HEADS = ("sequence", "blank")


def _f(default, help, **extra):  # a dataclass field whose flag help lives beside it
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ModelConfig:
    # convolutional trunk: one entry per conv layer
    widths: tuple[int, ...] = field(default=(48, 64, 128, 160, 192, 192, 192, 192),
                                    metadata={"help": "output channels of each conv layer"})
    kernel: int = field(default=5, metadata={"help": "conv kernel size (odd; 'same' padding)"})
    pool_strides: tuple[int, ...] = field(default=(2, 1, 2, 1, 2, 1, 2, 1),
                                          metadata={"help": "stride of the 2x2 max-pool after each conv "
                                                            "(2 halves the map, 1 keeps it; one per layer)"})
    maxout_first: bool = field(default=True, metadata={"help": "first layer uses maxout units (paper: 3 pieces)"})
    maxout_pieces: int = field(default=3, metadata={"help": "pieces per maxout unit"})
    batch_norm: bool = field(default=True, metadata={"help": "batch norm after every conv and hidden FC layer"})
    # fully connected part and outputs
    fc: tuple[int, ...] = field(default=(3072, 3072), metadata={"help": "hidden sizes of the FC layers"})
    dropout: float = field(default=0.2, metadata={"help": "dropout rate after every hidden layer"})
    head: str = field(default="sequence", metadata={"help": "sequence: 10-way digits + length (paper); "
                                                            "blank: 11-way digits, 10 = blank (ad-hoc baseline)",
                                                    "choices": HEADS})
    # Stored so a checkpoint describes itself; not a flag: the labels, the cache and the decoder
    # all have config.MAX_DIGITS positions, so any other value is refused below.
    max_digits: int = field(default=MAX_DIGITS, metadata={"help": "digit positions N", "flag": False})
    in_size: int = field(default=INPUT_SIZE, metadata={"help": "input crop size (pixels)"})

    def __post_init__(self):
        if len(self.widths) != len(self.pool_strides):
            raise ValueError(f"ModelConfig: {len(self.widths)} widths but {len(self.pool_strides)} pool_strides")
        if any(s not in (1, 2) for s in self.pool_strides):
            raise ValueError(f"ModelConfig: pool_strides must be 1 or 2, got {self.pool_strides}")
        if self.kernel % 2 != 1:
            raise ValueError(f"ModelConfig: kernel must be odd for 'same' padding, got {self.kernel}")
        if self.head not in HEADS:
            raise ValueError(f"ModelConfig: head must be one of {HEADS}, got {self.head!r}")
        if self.max_digits != MAX_DIGITS:
            raise ValueError(f"ModelConfig: max_digits must be {MAX_DIGITS} (config.MAX_DIGITS), got {self.max_digits}")
        if self.maxout_pieces < 1:
            raise ValueError("ModelConfig: maxout_pieces must be >= 1")

    @property
    def n_length_classes(self) -> int:
        return self.max_digits + 2  # 0..N and '>N'

    @property
    def n_digit_classes(self) -> int:
        return N_DIGIT_CLASSES + (1 if self.head == "blank" else 0)


# Named model configurations (`--preset`); model.py builds the network from them.
PRESETS: dict[str, ModelConfig] = {
    # Goodfellow et al. 2014 sec. 5.1: eight 5x5 conv layers (48..192), maxout first layer,
    # 2x2 pools alternating stride 2/1, two FC layers of 3072, dropout everywhere.
    "goodfellow": ModelConfig(),
    # Trains on 2 CPU cores: the paper's eight layers and stride pattern with 3x3 kernels, no
    # maxout (it cost 30% of the speed for the same parameters), one FC layer of 768, and
    # two-thirds of the paper's widths (32..128): 2.3M parameters. In `make demo`'s 600 s on 2 cores it
    # ran ~3,000 steps to 95.65% and 96.00% validation accuracy (two runs), where the earlier widths
    # (48..192, 4.0M) ran 1,718 to 94.55% at the same accuracy per step (README, issue 14). 0.50 GFLOP a training image:
    # 251 img/s float32, 395 bf16 on 2 quiet Zen 4 cores (`transcribe bench`).
    "cpu": ModelConfig(widths=(32, 48, 64, 96, 128, 128, 128, 128), kernel=3,
                       pool_strides=(2, 1, 2, 1, 2, 1, 2, 1), maxout_first=False, fc=(768,), dropout=0.1),
    # For tests: milliseconds per step, ~30k parameters.
    "tiny": ModelConfig(widths=(8, 16, 16), kernel=3, pool_strides=(2, 2, 2), maxout_first=True,
                        maxout_pieces=2, fc=(32,), dropout=0.0),
}
DEFAULT_PRESET = "cpu"  # `transcribe train`'s default: it trains on 2 CPU cores


@dataclass(frozen=True)
class CacheConfig:
    # What a cache's crops depend on (its file name and stored attributes record both).
    widen: float = field(default=WIDEN, metadata={"help": "scale of the number box about its centre (1.3 = 30%% larger)"})
    size: int = field(default=CACHE_SIZE, metadata={"help": "side of the stored square crop, pixels"})


@dataclass(frozen=True)
class DataConfig:
    # Sources: format-1 folders (or existing .h5 caches) concatenated into one training pool.
    train: tuple[str, ...] = field(default=("data/synth/train",), metadata={"help": "format-1 folders or .h5 caches to train on"})
    # Validation is held out of that pool, deterministically from `seed`.
    val_fraction: float = field(default=0.1, metadata={"help": "fraction of the pool held out for validation"})
    val_size: int = field(default=0, metadata={"help": "if > 0, hold out exactly this many (full SVHN: 6000 from train+extra) instead of the fraction"})
    seed: int = field(default=0, metadata={"help": "seed of the train/validation split", "flag_name": "split_seed"})
    # Learning curves (DL book ch. 11): train on the first train_size of one seeded order of the
    # training side; the validation side is unchanged and smaller sizes are subsets of larger ones.
    train_size: int = field(default=0, metadata={"help": "if > 0, train on only this many photos of the training side"})
    # Extra photos for the training side only, never validated on: synthetic photos mixed into a
    # small real set regularize it while validation stays purely real.
    mix: tuple[str, ...] = field(default=(), metadata={"help": "format-1 folders or .h5 caches added to the training side only (never to validation)"})
    mix_size: int = field(default=0, metadata={"help": "if > 0, add only this many (seeded choice) of the --mix photos"})
    # Crops (Goodfellow et al. 2014, sec. 5.1).
    widen: float = field(default=WIDEN, metadata={"help": "scale of the number box about its centre",
                                                  "flag_name": "crop_widen"})
    size: int = field(default=CACHE_SIZE, metadata={"help": "side of the cached crop, pixels"})
    crop: int = field(default=INPUT_SIZE, metadata={"help": "side of the random (train) / centre (eval) crop fed to the network"})
    cache_dir: str = field(default="data/cache", metadata={"help": "where the .h5 caches are written"})

    @property
    def cache(self) -> CacheConfig:
        return CacheConfig(widen=self.widen, size=self.size)


@dataclass(frozen=True)
class TrainConfig:
    # where and what
    out: str = _f("runs/train", "run folder; training resumes if it holds ckpt-last.pt")
    preset: str = _f(DEFAULT_PRESET, "model preset; the model flags below override single fields of it",
                     choices=tuple(PRESETS))
    init: str = _f("", "checkpoint whose weights start a new run (e.g. synthetic pretraining)")
    # optimisation
    steps: int = _f(3000, "optimizer steps in total")
    batch_size: int = _f(64, "images per step, over all processes (the global batch)")
    accum: int = _f(1, "micro-batches per process per step (gradient accumulation); batch "
                       "norm sees batch_size/(processes*accum) images at a time")
    optimizer: str = _f("sgd", "sgd (with momentum) or adam (AdamW)", choices=("sgd", "adam"))
    lr: float = _f(0.05, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum (adam: beta1)")
    weight_decay: float = _f(5e-4, "L2 weight decay on weights (not on biases and norms)")
    schedule: str = _f("linear", "linear (decay to lr_floor), exp (geometric decay to lr_floor), "
                                 "plateau (halve after plateau_patience evaluations without a "
                                 "better validation sequence accuracy), const",
                       choices=("linear", "exp", "plateau", "const"))
    lr_floor: float = _f(1e-4, "learning rate at the last step for linear/exp schedules")
    warmup: int = _f(0, "steps of linear warm-up from 0 to lr")
    plateau_patience: int = _f(3, "plateau schedule: evaluations without improvement before halving lr")
    grad_clip: float = _f(5.0, "clip the global gradient norm to this (0 = off)")
    # evaluation, early stopping, budget
    eval_every: int = _f(200, "steps between evaluations, checkpoints and log lines")
    eval_limit: int = _f(1000, "images evaluated per split at each evaluation (0 = all)")
    patience: int = _f(0, "stop after this many evaluations without a better validation "
                          "sequence accuracy (0 = never)")
    max_seconds: float = _f(0.0, "wall-clock budget in seconds including resumed time (0 = none)")
    # reproducibility and hardware
    seed: int = _f(0, "seed of the training run: initial weights, batch order, crops and dropout",
                   flag_name="train_seed")
    deterministic: bool = _f(False, "deterministic algorithms (and 1 thread unless --threads)")
    threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    device: str = _f("auto", DEVICE_HELP, choices=DEVICES)
    compile: bool = _f(False, "torch.compile the model (CUDA)")
    # auto by default: on the demo, bf16 reached float32's accuracy at the same steps and seed
    # (92.05% vs 92.00% validation, 948 steps) in 58% of the time (README, issue 14).
    amp: str = _f("auto", "autocast: auto = bf16 where measured faster on this machine (CUDA; CPUs "
                         "with bf16 instructions; cached, see precision.py; float32 under --deterministic); "
                         "off = float32",
                  choices=("auto", "bf16", "off"))
    # instruments
    hist_every: int = _f(500, "steps between histograms and update ratios in TensorBoard (0 = off)")
    progress: bool = _f(True, "progress: a tqdm bar on a terminal, a plain line every 30 s in a log")

    def __post_init__(self):
        positive = ("batch_size", "accum", "eval_every", "plateau_patience")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("steps", "lr", "warmup", "grad_clip", "eval_limit",
                                                     "patience", "max_seconds", "threads", "hist_every",
                                                     "weight_decay") if getattr(self, k) < 0]
        if self.schedule == "exp" and self.lr_floor <= 0:
            bad.append(f"lr_floor={self.lr_floor} (the exp schedule needs > 0)")
        if bad:
            raise ValueError(f"TrainConfig: invalid {', '.join(bad)}")


# ---------------------------------------------------------------- transfer (transfer.py, recognizer.py, ctc.py)
RECOGNIZERS = ("ppocr-v6-small", "ppocr-v4")  # pretrained line recognizers shipped in rapidocr wheels
REC_MIN_WIDTH = 320  # RapidOCR pads every line to at least its training width, 320 px
TRANSFER_MIN_WIDTH = 160  # the fine-tuned reader's padding: chosen among 128/160/208/320 by 5-fold CV (README)
CTC_BEAM = 8         # prefix beam width of the CTC decoder (ctc.py measures it against brute force)


@dataclass(frozen=True)
class TransferConfig:
    recognizer: str = dataclasses.field(default="ppocr-v6-small", metadata={
        "help": "pretrained recognizer (inside a rapidocr wheel)", "choices": RECOGNIZERS})
    stretch: float = dataclasses.field(default=1.5, metadata={
        "help": "crops resized to height 48 and this many times their aspect ratio in width"})
    widen: float = dataclasses.field(default=1.0, metadata={
        "help": "evaluation crop: the union of the digit boxes widened by this factor", "flag_name": "crop_widen"})
    min_width: int = dataclasses.field(default=TRANSFER_MIN_WIDTH, metadata={
        "help": "inputs right-padded to at least this width (RapidOCR pads to 320; 160 read best and twice "
                "as fast in cross-validation on the sample: README)"})
    tune_stages: int = dataclasses.field(default=0, metadata={
        "help": "the backbone's last stages that train with the neck and head (0: the whole backbone frozen); "
                "the frozen part's features are computed once, at the cut"})
    views: int = dataclasses.field(default=4, metadata={"help": "augmented views per training photo"})
    stream: bool = dataclasses.field(default=False, metadata={
        "help": "no feature cache: a fresh augmented view of every photo each epoch, through the frozen stem a "
                "batch at a time (for a training set whose cached views would not fit in memory, e.g. full SVHN)"})
    epochs: int = dataclasses.field(default=12, metadata={"help": "passes over the training photos"})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "photos per step"})
    lr: float = dataclasses.field(default=3e-4, metadata={"help": "AdamW learning rate of the neck"})
    head_lr: float = dataclasses.field(default=1e-3, metadata={"help": "AdamW learning rate of the head"})
    stem_lr: float = dataclasses.field(default=1e-4, metadata={
        "help": "AdamW learning rate of the backbone's trained stages (--tune-stages)"})
    amp: str = dataclasses.field(default="off", metadata={
        "help": "training precision: off (float32), bf16 (autocast), or auto (bf16 where a few measured steps "
                "say it is faster; not the default: bf16 is not shown to train this recipe as well)",
        "choices": ("auto", "bf16", "off")})
    weight_decay: float = dataclasses.field(default=0.01, metadata={"help": "AdamW weight decay"})
    beam: int = dataclasses.field(default=CTC_BEAM, metadata={"help": "prefix beam width (1: best path)"})
    head: str = dataclasses.field(default="ctc", metadata={
        "help": "output layer on the neck: ctc (digits-only CTC, initialized from the recognizer) or "
                "sequence (the paper's length softmax + 5 digit softmaxes, trained from scratch)",
        "choices": ("ctc", "sequence")})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the folds, the views and training",
                                                       "flag_name": "train_seed"})



@dataclass(frozen=True)
class DistilConfig:
    # `transcribe distil` (distil.py): the teacher and how much the student listens to it
    teacher: str = _f("", "a `transcribe transfer` run folder (model.pt) whose readings teach the student")
    alpha: float = _f(0.5, "weight of the true label's -log P(S|X); 1 - alpha goes to the teacher's soft targets")
    top_k: int = _f(5, "teacher transcriptions per photo (CTC prefix beam, exact log P(S|X), renormalised over K)")


# Fields of TrainConfig that may change when a run is resumed: they do not alter the
# trajectory of the weights (or only end it earlier/later). Anything else must match.
RESUMABLE_CHANGES = ("out", "steps", "max_seconds", "progress", "threads", "device", "compile",
                     "hist_every", "patience", "init", "deterministic")


# ---------------------------------------------------------------- dataclass <-> flags <-> JSON

def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[field.name]


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """`--device`, spelled and resolved the same by every command that runs a network."""
    parser.add_argument("--device", choices=DEVICES, default=default, help=f"{DEVICE_HELP} (default: {default})")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                            skip: tuple[str, ...] = (), group: Any = None, shown: Any = None,
                            shown_as: str = "default") -> Any:
    """Add one flag per field of dataclass `cls`, default None (= keep the field's default).

    The flag is `--field-name`, or `--<metadata flag_name>` where the field's name would be
    ambiguous on the command line (`seed` -> `--split-seed`, `widen` -> `--crop-widen`); the
    destination stays `prefix + field name`. Help text comes from `metadata={"help": ...}`;
    the default printed is `shown`'s value (an instance of `cls`, e.g. the default preset) or
    the field's. Tuples take several values; booleans are `--x/--no-x`. Returns the group.
    """
    group = group or parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or not f.metadata.get("flag", True):
            continue
        typ = _field_type(cls, f)
        origin = typing.get_origin(typ)
        args = typing.get_args(typ)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if shown is not None:
            default = getattr(shown, f.name)
        if isinstance(default, tuple) or default == "":
            default = " ".join(map(str, default)) or "none"
        kwargs: dict[str, Any] = {"default": None, "dest": prefix + f.name,
                                  "help": f"{f.metadata.get('help', '')} ({shown_as}: {default})".strip()}
        if origin is tuple:
            kwargs["nargs"] = "+"
            kwargs["type"] = args[0] if args and args[0] is not Ellipsis else str
        elif typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
            inner = [a for a in args if a is not type(None)]
            kwargs["type"] = inner[0] if inner else str
        elif typ in (int, float, str):
            kwargs["type"] = typ
        else:
            kwargs["type"] = str
        name = f.metadata.get("flag_name", prefix + f.name)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        elif typ is not bool:
            kwargs["metavar"] = name.upper()
        group.add_argument("--" + name.replace("_", "-"), **kwargs)
    return group


def from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, prefix: str = "") -> T:
    """Build `cls` from parsed flags: fields whose flag was not given keep `base`'s value."""
    values = dataclasses.asdict(base) if base is not None else {}
    for f in dataclasses.fields(cls):
        v = getattr(args, prefix + f.name, None)
        if v is not None:
            values[f.name] = v
    return from_dict(cls, values)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Inverse of `to_dict`; lists become tuples where the field is a tuple; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    out = {}
    for k, v in values.items():
        typ = _field_type(cls, names[k])
        if typing.get_origin(typ) is tuple and isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        out[k] = v
    return cls(**out)


def flag_collisions() -> tuple[set[str], set[str]]:
    """Field names ModelConfig shares with TrainConfig or DataConfig, and DataConfig with
    TrainConfig: their flags get a 'model-'/'data-' prefix (`transcribe train`)."""
    t = {f.name for f in dataclasses.fields(TrainConfig)}
    m = {f.name for f in dataclasses.fields(ModelConfig)}
    d = {f.name for f in dataclasses.fields(DataConfig)}
    return m & (t | d), d & t
