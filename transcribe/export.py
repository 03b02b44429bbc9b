"""`transcribe export RUN --format onnx`: the files the torch-free runtime reads.

OUT (default RUN/export) receives
- model.onnx: the reader, (B, 3, 54, 54) float32 -> log P(L) (B, N + 2) and log P(S_i) (B, N, C),
  with a dynamic batch dimension; log-softmaxes are inside the graph, so runtime.decode needs
  only sums and argmaxes;
- detector.onnx: the text detector localize.py uses, copied from the rapidocr wheel (Apache-2.0;
  its source and SHA-256 are recorded), so the runtime needs no rapidocr;
- model.json: what the runtime needs besides the graphs (crop geometry, normalization, head,
  alphabet, the validation threshold) and where everything came from;
- with --format torchscript, model.pt as well (a traced module with the same outputs).

The export is checked before it is kept: the ONNX reader and the torch model must give the same
transcriptions on the check crops (the run's validation crops, or --check-limit of them) and
log-probabilities within CHECK_TOLERANCE.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from transcribe import boxfit, chooser, crops, dataset, localize, runtime
from transcribe.config import EXPORT_FORMATS
from transcribe.runs import atomic_write, save_json

OPSET = 17               # onnxruntime >= 1.14 runs it; every op the network uses exists there
CHECK_TOLERANCE = 1e-4   # max |log P| difference torch vs onnxruntime (float32 reassociation: ~1e-6 seen)
FORMATS = EXPORT_FORMATS


class LogProbs(torch.nn.Module):
    """The reader with its softmaxes: (B, 3, S, S) -> (log P(L), log P(S_i)), as sequence.decode sees them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        length_logits, digit_logits = self.model(x)
        return torch.log_softmax(length_logits, -1), torch.log_softmax(digit_logits, -1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rapidocr_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("rapidocr")
    except metadata.PackageNotFoundError:
        return None


def export_run(run: str | Path, out: str | Path | None = None, formats=("onnx",), checkpoint: str = "best",
               check_limit: int = 0, say=print) -> dict:
    """Write OUT/{model.onnx, model.json, detector.onnx[, model.pt]}; returns the check's figures."""
    from transcribe import runs, whole
    run = Path(run)
    out = Path(out) if out is not None else run / "export"
    if whole.is_transfer(run):
        return export_transfer(run, out, formats, check_limit, say)
    model, ckpt, data_cfg = runs.load_run(run, checkpoint)
    saved = runs.read_threshold(run)
    if saved is None or saved.get("checkpoint") != checkpoint or saved.get("step") != ckpt.get("step"):
        raise FileNotFoundError(f"{run / runs.THRESHOLD_FILE}: no validation threshold for ckpt-{checkpoint}.pt "
                                f"(step {ckpt.get('step')}); run `transcribe evaluate {run} --split val` first")
    det_src = localize.detector_path()
    out.mkdir(parents=True, exist_ok=True)
    net = LogProbs(model.float().eval().to(memory_format=torch.contiguous_format)).eval()
    cfg = model.cfg
    x = torch.zeros(2, 3, cfg.in_size, cfg.in_size)
    tmp = out / "model.onnx.tmp"
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, still exact for this net
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(tmp), input_names=["crops"], output_names=["length_logp", "digit_logp"],
                          dynamic_axes={"crops": {0: "batch"}, "length_logp": {0: "batch"}, "digit_logp": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    spec = {
        "format": runtime.FORMAT,
        "reader": "model.onnx", "detector": "detector.onnx",
        "input": {"cache_size": data_cfg.size, "crop": data_cfg.crop, "widen": data_cfg.widen,
                  "pixel_scale": dataset.PIXEL_SCALE, "layout": "NCHW float32, RGB",
                  "normalization": "crop the number's box widened by `widen` about its centre, resize to "
                                   "cache_size x cache_size (bilinear), take the centre crop x crop, subtract "
                                   "the crop's mean over pixels and channels, divide by pixel_scale"},
        "outputs": {"length_logp": f"(B, {cfg.n_length_classes}) log P(L = n), n = 0..{cfg.max_digits}, "
                                   f"then '>{cfg.max_digits}'",
                    "digit_logp": f"(B, {cfg.max_digits}, {cfg.n_digit_classes}) log P(S_i = d)"},
        "head": cfg.head, "max_digits": cfg.max_digits, "alphabet": "0123456789" + ("_" if cfg.head == "blank" else ""),
        "refused_text": ">5",
        "threshold": saved["threshold"], "target": saved.get("target"), "threshold_chosen_on": saved.get("chosen_on"),
        "run": str(run.resolve()), "checkpoint": checkpoint, "step": ckpt.get("step"),
        "localize": {"detector_source": f"rapidocr {_rapidocr_version()} wheel: rapidocr/models/{localize.DET_MODEL}",
                     "detector_sha256": _sha256(det_src), "det_min_side": localize.DET_MIN_SIDE,
                     "det_second_side": localize.DET_SECOND_SIDE,
                     "det_input": "BGR, (pixel / 255 - 0.5) / 0.5, sides multiples of 32"},
    }
    _copy_localize_files(run, out, spec)
    # Check before keeping: the graph just written against the torch model on real crops.
    check = _check(net, tmp, _check_crops(data_cfg, check_limit), spec)
    if check["differing_transcriptions"] or check["max_abs_logp_diff"] > CHECK_TOLERANCE:
        raise ValueError(f"{tmp}: the export differs from the torch model ({check}); not kept")
    tmp.replace(out / "model.onnx")
    shutil.copyfile(det_src, out / "detector.onnx.tmp")
    (out / "detector.onnx.tmp").replace(out / "detector.onnx")
    spec["check"] = check
    if "torchscript" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, x)
        traced.save(str(out / "model.pt.tmp"))
        (out / "model.pt.tmp").replace(out / "model.pt")
        spec["torchscript"] = "model.pt"
    save_json(spec, out / runtime.SPEC_NAME)
    say(f"wrote {out / 'model.onnx'}, {out / 'detector.onnx'}, {out / runtime.SPEC_NAME}"
        + (f", {out / 'model.pt'}" if "torchscript" in formats else ""))
    say(f"check on {check['crops']} {check['what']}: identical transcriptions "
        f"{check['crops'] - check['differing_transcriptions']}/{check['crops']}, "
        f"max |log P| difference {check['max_abs_logp_diff']:.2e}")
    return spec


def _copy_localize_files(run: Path, out: Path, spec: dict) -> None:
    """The run's learned choice among candidate boxes (chooser.json, read by numpy) and its box fitter
    (boxfit.onnx and boxfit.json, run by onnxruntime), checked to load, copied beside the export and
    named in its spec, so the runtime finds a whole photo's box as `evaluate --no-boxes` does."""
    if (run / chooser.CHOOSER_FILE).is_file():
        chooser.Chooser.load(run / chooser.CHOOSER_FILE)
        atomic_write(out / chooser.CHOOSER_FILE, (run / chooser.CHOOSER_FILE).read_bytes())
        spec["localize"]["chooser"] = chooser.CHOOSER_FILE
    if boxfit.BoxFitter.beside(run) is not None:
        for name in (boxfit.BOXFIT_FILE, boxfit.SPEC_FILE):
            atomic_write(out / name, (run / name).read_bytes())
        spec["localize"]["box_fitter"] = boxfit.BOXFIT_FILE


class NeckHead(torch.nn.Module):
    """A transfer reader after its frozen stem: (B, C, H, T) stem features (the backbone's output, or
    the input of the stages the run trained) -> (B, T', 11) log-probabilities."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model.from_stem(features)


def export_transfer(run: Path, out: Path, formats=("onnx",), check_limit: int = 0, say=print) -> dict:
    """A transfer run (transfer.py) for the runtime: OUT/stem.onnx (the recognizer's frozen stem,
    the graph the run computed its features with), OUT/model.onnx (the fine-tuned stages, neck and head,
    dynamic batch and width), detector.onnx and model.json; checked on the run's validation photos
    read at their true boxes by both paths (runtime.LineReader against transfer.transcribe_photos)."""
    from transcribe import ctc, runs, transfer, whole
    if "torchscript" in formats:
        raise ValueError(f"{run}: a transfer run exports to ONNX only (its onnx2torch modules do not trace "
                         f"to TorchScript); use --format onnx")
    model, cfg, threshold = transfer.load(run)
    saved = runs.read_threshold(run) or {}
    det_src = localize.detector_path()
    out.mkdir(parents=True, exist_ok=True)
    runs.atomic_write(out / "stem.onnx", model.stem_onnx)
    net = NeckHead(model).eval()
    tmp = out / "model.onnx.tmp"
    stem = transfer.rec.StemSession(model)   # the frozen stem: an example input for the export, then the check
    example = stem(torch.zeros(2, 3, transfer.rec.HEIGHT, cfg.min_width))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(tmp),
                          input_names=["features"], output_names=["logp"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"features": {0: "batch", 3: "frames"}, "logp": {0: "batch", 1: "frames"}})
    spec = {
        "format": runtime.FORMAT, "kind": "transfer",
        "reader": "model.onnx", "stem": "stem.onnx", "detector": "detector.onnx",
        "input": {"widen": cfg.widen, "stretch": cfg.stretch, "height": transfer.rec.HEIGHT,
                  "frame": transfer.rec.FRAME, "min_width": cfg.min_width,
                  "layout": "stem: NCHW float32, BGR, pixel / 127.5 - 1, right-padded with 0; model: the stem's "
                            "output rounded to float16",
                  "normalization": "cut the number's box widened by `widen` (no padding), resize to height 48 "
                                   "and ceil(48 * stretch * w / h) wide (bilinear), pad to max(min_width, width) "
                                   "rounded up to `frame`"},
        "outputs": {"logp": "(B, T, 11) log-probabilities per frame: blank, then digits 0..9 (CTC)"},
        "head": "ctc", "beam": cfg.beam, "max_digits": transfer.MAX_DIGITS, "alphabet": "0123456789",
        "threshold": threshold, "target": saved.get("target"), "threshold_chosen_on": saved.get("chosen_on"),
        "run": str(run.resolve()), "source": {"recognizer": cfg.recognizer, "sha256": model.source_sha256},
        "localize": {"detector_source": f"rapidocr {_rapidocr_version()} wheel: rapidocr/models/{localize.DET_MODEL}",
                     "detector_sha256": _sha256(det_src), "det_min_side": localize.DET_MIN_SIDE,
                     "det_second_side": localize.DET_SECOND_SIDE,
                     "det_input": "BGR, (pixel / 255 - 0.5) / 0.5, sides multiples of 32"},
    }
    _copy_localize_files(run, out, spec)
    # Check before keeping: the runtime's whole path (view, stem, graph, numpy decoding) against the
    # torch one, on the validation photos at their true boxes.
    reader = whole.run_reader(run)
    cache, _ = whole._split("val", reader.data_cfg)
    n = len(cache) if not check_limit else min(check_limit, len(cache))
    line = runtime.LineReader(out, {**spec, "reader": tmp.name}, localize.onnx_session(tmp))
    diff, conf_diff, differ = 0.0, 0.0, 0
    for i in range(n):
        image = localize.load_photo(cache.path(i))
        box = crops.widen([float(v) for v in cache.boxes[i]], 1 / reader.data_cfg.widen)
        feats = transfer.stem_features(stem, [transfer.eval_view(transfer.photo_from(image, box, ""), cfg)], cfg,
                                         progress=False)
        with torch.no_grad():
            lp_torch = model.from_stem(transfer.stack(feats, [0]))            # (1, T, 11)
        got = ctc.decode(lp_torch, cfg.beam)[0]
        lp_onnx = line.log_probs(image, [box])[0]
        text, logp = runtime.ctcsearch.decode(lp_onnx, cfg.beam, transfer.MAX_DIGITS)
        diff = max(diff, float(np.abs(lp_onnx - lp_torch[0].numpy()).max()))
        conf_diff = max(conf_diff, abs(logp - got.logp))
        differ += text != got.text
    check = {"crops": n, "max_abs_logp_diff": diff, "max_abs_confidence_diff": conf_diff,
             "differing_transcriptions": int(differ), "what": f"validation photos of {reader.data_cfg.train[0]} at their true boxes"}
    if differ or diff > CHECK_TOLERANCE:
        raise ValueError(f"{tmp}: the export differs from the torch model ({check}); not kept")
    tmp.replace(out / "model.onnx")
    shutil.copyfile(det_src, out / "detector.onnx.tmp")
    (out / "detector.onnx.tmp").replace(out / "detector.onnx")
    spec["check"] = check
    save_json(spec, out / runtime.SPEC_NAME)
    say(f"wrote {out / 'stem.onnx'}, {out / 'model.onnx'}, {out / 'detector.onnx'}, {out / runtime.SPEC_NAME}")
    say(f"check on {n} {check['what']}: identical transcriptions {n - differ}/{n}, max |log P| difference "
        f"{diff:.2e} per frame, {conf_diff:.2e} on log P(S|X)")
    return spec


def _check_crops(data_cfg, limit: int = 0) -> tuple[np.ndarray, str]:
    """The run's validation crops (what the threshold was chosen on), or their first `limit`."""
    _, val = dataset.load_splits(data_cfg, progress=False)
    images = val.images if not limit else val.images[:limit]
    return images, f"validation crops of {', '.join(data_cfg.train)}"


def compare(net, session_path: Path, images: np.ndarray, head: str, crop: int) -> dict:
    """Torch vs onnxruntime on the same crops: max |log P| difference and differing transcriptions."""
    from transcribe import sequence
    session = localize.onnx_session(session_path)
    diff, differ = 0.0, 0
    for start in range(0, len(images), runtime.READ_BATCH):
        part = images[start:start + runtime.READ_BATCH]
        x = dataset.prepare_batch(part, crop=crop, train=False).contiguous()
        with torch.no_grad():
            t_len, t_dig = net(x)
        o_len, o_dig = session.run(None, {"crops": runtime.prepare(part, crop, dataset.PIXEL_SCALE)})
        diff = max(diff, float(np.abs(o_len - t_len.numpy()).max()), float(np.abs(o_dig - t_dig.numpy()).max()))
        torch_texts = sequence.decode(t_len, t_dig, head=head).texts()
        onnx_texts = [r["pred"] for r in runtime.decode(o_len, o_dig, head)]
        differ += sum(a != b for a, b in zip(torch_texts, onnx_texts))
    return {"crops": int(len(images)), "max_abs_logp_diff": diff, "differing_transcriptions": int(differ)}


def _check(net, path: Path, crops_and_what, spec) -> dict:
    images, what = crops_and_what
    return {**compare(net, path, images, spec["head"], spec["input"]["crop"]), "what": what}


def run_export(args) -> int:
    export_run(args.run, args.out, tuple(args.format), args.checkpoint, args.check_limit)
    return 0
