"""Frozen configuration dataclasses <-> command-line flags <-> JSON.

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


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[field.name]


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                            skip: tuple[str, ...] = ()) -> None:
    """Add one `--flag` per field of dataclass `cls`, default None (= keep the field's default).

    Help text comes from `metadata={"help": ...}` on the field. Tuples take several values.
    """
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or not f.metadata.get("flag", True):
            continue
        typ = _field_type(cls, f)
        origin = typing.get_origin(typ)
        args = typing.get_args(typ)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kwargs: dict[str, Any] = {"default": None, "dest": prefix + f.name,
                                  "help": f"{f.metadata.get('help', '')} (default: {default})".strip()}
        if origin is tuple:
            kwargs["nargs"] = "+"
            kwargs["type"] = args[0] if args and args[0] is not Ellipsis else str
        elif typ is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "BOOL"
        elif origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
            inner = [a for a in args if a is not type(None)]
            kwargs["type"] = inner[0] if inner else str
        elif typ in (int, float, str):
            kwargs["type"] = typ
        else:
            kwargs["type"] = str
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument("--" + (prefix + f.name).replace("_", "-"), **kwargs)


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
