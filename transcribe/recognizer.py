"""A pretrained text-line recognizer as a trainable PyTorch module (transfer learning).

Practical Methodology (Deep Learning, sec. 11.2): "if your task is similar to another task that
has been studied extensively, you will probably do well by first copying the model ... known to
perform best on the previously studied task". Scene-text recognition is that task. The `rapidocr`
wheel (Apache-2.0, https://github.com/RapidAI/RapidOCR) ships PaddleOCR's PP-OCRv6 small
recognizer (`rapidocr/models/PP-OCRv6_rec_small.onnx`, 5.27M weights; PaddleOCR, Apache-2.0):
a convolutional backbone, a two-block transformer neck on 120-d frame features, and a
120 -> 18,710 classifier (CTC blank + 18,708 characters + space), one frame per 8 input pixels.

Conversion: onnx2torch, with the two fixes this graph needs (measured; an own port of an
architecture that is defined only by this graph would be ~400 lines for the same module):
- its three 2x2 stride-1 `SAME_UPPER` convolutions/pools get the equivalent explicit padding
  (0 before, 1 after), which onnx2torch does not implement;
- the 135 `Identity` nodes are removed before conversion (onnx2torch turns each into a copy).
Then every floating-point initializer that onnx2torch keeps as a buffer (conv biases, the neck's
layer-norm and projection weights) becomes an `nn.Parameter`, so every weight trains; the 3
batch norms keep their running statistics (frozen: batches of a few dozen crops would spoil them).
Conversion takes about a second from the wheel's file, so nothing is cached: a fine-tuned
checkpoint stores the state dict (loaded with weights_only=True) and the source file's SHA-256,
and loading rebuilds the structure from the same file and refuses another.

The digits-only head (`DigitHead`): the classifier's columns for the CTC blank and for every
character that NFKC-normalizes to a digit ('1', '１', '①', '¹', ...: 4-5 per digit) are kept;
a digit's logit is the log-sum-exp of its columns. At step 0 the head's argmax per frame is
therefore exactly the argmax over {blank, 0..9} of the full softmax with the variants summed:
the off-the-shelf reader with digits-only CTC (baseline.decode_digits). The output is a
log-softmax over those 11 classes, (B, T, 11), class 0 = blank, class k = digit k-1.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
import warnings
from dataclasses import dataclass
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .config import RECOGNIZERS, REC_MIN_WIDTH

HEIGHT = 48      # the recognizer's input height (rapidocr config.yaml: rec_img_shape [3, 48, 320])
MIN_WIDTH = REC_MIN_WIDTH  # RapidOCR pads every line to at least its training width
FRAME = 8        # input pixels per output frame
N_CLASSES = 11   # CTC blank + 10 digits
DIGITS = "0123456789"

# name -> (package that ships it, file inside the package, pip extra naming the package)
SOURCES = {
    "ppocr-v6-small": ("rapidocr", "models/PP-OCRv6_rec_small.onnx"),
    "ppocr-v4": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
}
assert tuple(SOURCES) == RECOGNIZERS
INSTALL_HINT = "pip install 'transcribe-svhn[transfer]' (rapidocr, onnx, onnx2torch, onnxruntime)"


def onnx_file(name: str) -> Path:
    """Path of a recognizer's ONNX file inside its wheel; one clear line when it is not installed."""
    if name not in SOURCES:
        raise ValueError(f"unknown recognizer {name!r}; choose from {sorted(SOURCES)}")
    package, member = SOURCES[name]
    spec = importlib.util.find_spec(package)  # the package's folder, without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the {name} recognizer needs the optional extra: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / member
    if not path.is_file():
        raise SystemExit(f"{path}: not found in the installed {package} package; {INSTALL_HINT}")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def characters(model) -> list[str]:
    """The character list stored in the ONNX metadata (one per line); column i+1 is characters[i]."""
    meta = {p.key: p.value for p in model.metadata_props}
    return meta["character"].splitlines()


def digit_columns(chars: list[str]) -> list[list[int]]:
    """For each digit d, the classifier columns (1 + index into `chars`; 0 is the CTC blank) of
    every character that NFKC-normalizes to d."""
    cols: list[list[int]] = [[] for _ in DIGITS]
    for i, ch in enumerate(chars):
        norm = unicodedata.normalize("NFKC", ch)
        if len(norm) == 1 and norm in DIGITS:
            cols[int(norm)].append(i + 1)
    missing = [d for d in range(10) if not cols[d]]
    if missing:
        raise ValueError(f"the recognizer's character set has no column for digit(s) {missing}")
    return cols


def _fix_graph(model):
    """In place: explicit pads for stride-1 SAME_UPPER ops; Identity nodes removed.
    -> (model, classifier weight (D, C), classifier bias (C,), name of the (B, T, D) features)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    for node in graph.node:
        for attr in list(node.attribute):
            if attr.name == "auto_pad" and attr.s in (b"SAME_UPPER", b"SAME_LOWER"):
                kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
                strides = next((a.ints for a in node.attribute if a.name == "strides"), [1] * len(kernel))
                if any(s != 1 for s in strides):
                    raise ValueError(f"{node.name}: SAME padding with stride {list(strides)} is input-size dependent")
                node.attribute.remove(attr)
                small, big = [(k - 1) // 2 for k in kernel], [k - 1 - (k - 1) // 2 for k in kernel]
                pads = small + big if attr.s == b"SAME_UPPER" else big + small
                node.attribute.append(helper.make_attribute("pads", pads))
    # Identity nodes: rewire their consumers (and graph outputs) to their inputs.
    alias: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Identity":
            src = node.input[0]
            alias[node.output[0]] = alias.get(src, src)
    keep = [n for n in graph.node if n.op_type != "Identity"]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    for out in graph.output:
        if out.name in alias:  # keep the output's name: give the producer that name
            producer = next(n for n in graph.node if alias[out.name] in n.output)
            producer.output[list(producer.output).index(alias[out.name])] = out.name
            for n in graph.node:
                for i, name in enumerate(n.input):
                    if name == alias[out.name]:
                        n.input[i] = out.name
    # The classifier: the last MatMul by a (D, C) initializer, then Add of a (C,) bias, then Softmax.
    inits = {t.name: t for t in graph.initializer}
    matmul = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits][-1]
    add = next(n for n in graph.node if n.op_type == "Add" and matmul.output[0] in n.input)
    weight = numpy_helper.to_array(inits[matmul.input[1]])
    bias = numpy_helper.to_array(inits[next(i for i in add.input if i in inits)])
    onnx.checker.check_model(model)
    return model, weight, bias, matmul.input[0]


def stage_cuts(stem) -> list[str]:
    """Where the backbone's stages begin: the input tensor of each of its downsampling convolutions
    (stride 2 in height) after the first, earliest first. Cutting at the k-th last of them leaves
    the last k stages (with the final pooling) on the trainable side."""
    cuts = []
    for k, node in enumerate(stem.graph.node):
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
        if k > 0 and node.op_type == "Conv" and strides[0] == 2:
            cuts.append(node.input[0])
    return cuts


def split_graph(path: Path, tune_stages: int = 0):
    """The recognizer cut in ONNX graphs: `stem` (B, 3, 48, W) -> the frozen features, `tail` (the
    backbone's last `tune_stages` stages, None for 0) -> the output of its last AveragePool,
    (B, 384, 1, W/8), and `neck` -> the classifier's input (B, W/8, 120).
    -> (stem, tail, neck, classifier weight, bias, characters)."""
    import onnx

    model = onnx.load(str(path))
    chars = characters(model)
    model, weight, bias, features = _fix_graph(model)
    pooled = [n for n in model.graph.node if n.op_type == "AveragePool"][-1].output[0]
    extractor = onnx.utils.Extractor(model)
    backbone = extractor.extract_model([model.graph.input[0].name], [pooled])
    neck = extractor.extract_model([pooled], [features])
    if tune_stages == 0:
        return backbone, None, neck, weight, bias, chars
    cuts = stage_cuts(backbone)
    if not 0 < tune_stages <= len(cuts):
        raise ValueError(f"{path.name}: tune_stages must be 0..{len(cuts)} (its backbone has {len(cuts) + 1} stages)")
    cut = cuts[-tune_stages]
    stem = extractor.extract_model([model.graph.input[0].name], [cut])
    tail = extractor.extract_model([cut], [pooled])
    if [i.name for i in tail.graph.input] != [cut]:  # a skip connection across the cut
        raise ValueError(f"{path.name}: the graph cannot be cut at {cut}")
    return stem, tail, neck, weight, bias, chars


def _onnx2torch_opset_lookup() -> None:
    """onnx2torch's converted nodes (Shape, Slice...) export themselves to ONNX by reading the
    export's opset from torch.onnx.symbolic_helper, where this torch no longer keeps it
    (torchscript_exporter's GLOBALS does): point onnx2torch's lookup there, once, where modules are
    converted. Without it `torch.onnx.export` of a converted module fails with an AttributeError as
    soon as those nodes take their export branch (export.py, transfer runs)."""
    from types import SimpleNamespace

    from onnx2torch.utils import common
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    if not hasattr(common.symbolic_helper, "GLOBALS"):
        common.symbolic_helper = SimpleNamespace(GLOBALS=GLOBALS)


def to_torch(graph) -> nn.Module:
    """onnx2torch conversion with every floating-point weight made trainable."""
    from onnx2torch import convert

    _onnx2torch_opset_lookup()

    with warnings.catch_warnings():  # onnx2torch's Slice indexes with a list (a deprecation warning)
        warnings.simplefilter("ignore")
        module = convert(graph)
    trainable(module)
    return module


def trainable(module: nn.Module) -> None:
    """onnx2torch keeps ONNX initializers as buffers; floating-point ones with more than one
    element are weights (biases, norms, projections) and become parameters. Scalars (epsilons,
    exponents, scales) and integer shapes stay buffers."""
    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_floating_point() and buf.numel() > 1 and not isinstance(sub, nn.BatchNorm2d):
                del sub._buffers[name]
                sub.register_parameter(name, nn.Parameter(buf.clone()))


class DigitHead(nn.Module):
    """(B, T, D) features -> (B, T, 11) log-probabilities over {blank, 0..9}.

    Linear over the kept columns (blank + every digit variant), then per class the log-sum-exp
    of its columns, then log-softmax: the full classifier restricted to these columns."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, columns: list[list[int]]):
        super().__init__()
        keep = [0] + [c for cols in columns for c in cols]
        group = [0] + [d + 1 for d, cols in enumerate(columns) for _ in cols]
        self.linear = nn.Linear(weight.shape[0], len(keep))
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight[:, keep].T.copy()))
            self.linear.bias.copy_(torch.from_numpy(bias[keep].copy()))
        mask = torch.full((len(keep), N_CLASSES), float("-inf"))
        mask[torch.arange(len(keep)), torch.tensor(group)] = 0.0
        self.register_buffer("group_mask", mask)  # (K, 11): 0 where column k belongs to class c

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.linear(features)                                                     # (B, T, K)
        grouped = torch.logsumexp(z.unsqueeze(-1) + self.group_mask, dim=-2)          # (B, T, 11)
        return torch.log_softmax(grouped.float(), dim=-1)


class LineRecognizer(nn.Module):
    """Pretrained backbone + digits-only head: (B, 3, 48, W) in [-1, 1], BGR -> (B, W/8, 11).

    The backbone is cut in two: `stem`, frozen (its features are computed once, by onnxruntime:
    StemSession), and `tail`, its last `tune_stages` stages, which train with the neck and head
    (an identity for 0: the whole backbone frozen)."""

    def __init__(self, name: str = "ppocr-v6-small", tune_stages: int = 0):
        super().__init__()
        path = onnx_file(name)
        self.name, self.source_sha256, self.tune_stages = name, sha256(path), tune_stages
        stem, tail, neck, weight, bias, chars = split_graph(path, tune_stages)
        self.stem_onnx = stem.SerializeToString()  # for StemSession: the frozen stem in onnxruntime
        self.stem = to_torch(stem)   # (B, 3, 48, W) -> frozen features: (B, 384, 1, W/8) or a stage's input
        self.tail = to_torch(tail) if tail is not None else nn.Identity()  # the backbone's last stages
        self.neck = to_torch(neck)   # (B, 384, 1, W/8) -> (B, W/8, 120), convolutions + 2 transformer blocks
        self.head = DigitHead(weight, bias, digit_columns(chars))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_stem(self.stem(x))

    def from_stem(self, features: torch.Tensor) -> torch.Tensor:
        """Frozen stem features -> (B, W/8, 11) log-probabilities."""
        with warnings.catch_warnings():  # onnx2torch's Slice indexes with a list; checked equal to onnxruntime
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
            return self.head(self.neck(self.tail(features)))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():  # frozen statistics: see the module docstring
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by depth, for layer-wise learning rates (the stem frozen)."""
        return {"stem": list(self.stem.parameters()), "tail": list(self.tail.parameters()),
                "neck": list(self.neck.parameters()), "head": list(self.head.parameters())}


class StemSession:
    """The frozen stem run by onnxruntime (several times faster than the converted module on a
    CPU: `transcribe bench-recognizer`), for computing features once when only the neck and head
    train."""

    def __init__(self, recognizer: LineRecognizer, threads: int | None = None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(recognizer.stem_onnx, sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: batch.numpy()})[0])


# ----------------------------------------------------------------------------- input

def to_input(crop_rgb: np.ndarray, stretch: float = 1.0) -> torch.Tensor:
    """(H, W, 3) RGB uint8 crop -> (3, 48, W') float32 in [-1, 1], BGR (RapidOCR reads photos with
    OpenCV), resized to height 48 with width = ceil(48 * stretch * W / H) (aspect kept at 1.0)."""
    h, w = crop_rgb.shape[:2]
    width = max(FRAME, int(math.ceil(HEIGHT * stretch * w / h)))
    img = Image.fromarray(np.ascontiguousarray(crop_rgb)).resize((width, HEIGHT), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img)[:, :, ::-1].copy()).permute(2, 0, 1).float()
    return x / 127.5 - 1.0


def collate(inputs: list[torch.Tensor], min_width: int = MIN_WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with 0 (as RapidOCR does) to the widest crop or `min_width`.
    -> (B, 3, 48, W) batch, (B,) number of frames that hold the crop (at least 1)."""
    width = max(min_width, max(x.shape[-1] for x in inputs))
    width = int(math.ceil(width / FRAME)) * FRAME
    batch = torch.zeros(len(inputs), 3, HEIGHT, width)
    for i, x in enumerate(inputs):
        batch[i, :, :, : x.shape[-1]] = x
    frames = torch.tensor([width // FRAME] * len(inputs))
    return batch, frames


@dataclass(frozen=True)
class Source:
    """What a checkpoint records about the pretrained weights it started from."""
    name: str
    sha256: str
