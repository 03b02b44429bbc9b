"""A trained run as a reader of photos, and the batching queue that feeds it concurrent requests.

`Reader` is the only place the service touches the model code (run loading, cropping,
decoding, the run's threshold): when those move, only this class changes. `Batcher` turns
concurrent `await read(...)` calls into batched forward passes on one model thread, with a
time limit per call.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MAX_BATCH = 32        # photos per forward pass: the tiny and cpu nets are ~flat in ms/photo past this
BATCH_WAIT = 0.005    # seconds the first request of a batch waits for company (adds at most 5 ms)
READ_TIMEOUT = 10.0   # seconds a request waits for the model before it is referred with an error


@dataclass(frozen=True)
class Reading:
    text: str                 # the number ('' = no number, '>5' = too long to spell)
    log_prob: float           # log P(S|X) of that text (Goodfellow et al. 2014, sec. 3)
    accepted: bool            # log_prob >= the run's threshold (and not refused)
    box: tuple[float, ...]    # the crop box the model read, photo pixels (left, top, width, height)


class Reader:
    """A run's model, loaded once, with its validation threshold (or `threshold` to override it)."""

    def __init__(self, run: str | Path, threshold: float | None = None, checkpoint: str | None = None,
                 device: str = "cpu"):
        # Imported here, not at the top: `transcribe serve --help` must answer without torch.
        from transcribe import runs, transfer
        run = Path(run)
        saved = runs.read_threshold(run)
        if saved is None and threshold is None:
            raise FileNotFoundError(f"{run / runs.THRESHOLD_FILE}: no refusal threshold yet; run "
                                    f"`transcribe evaluate {run} --split val` first, or give --threshold")
        self.transfer = (run / transfer.CHECKPOINT).is_file()  # a fine-tuned line recognizer (transfer.py)
        if self.transfer:
            self.model, self.transfer_cfg, _ = transfer.load(run)
            self.model.to(runs.resolve_device(device))  # neck and head; the stem runs in onnxruntime
            self.stem = transfer.rec.StemSession(self.model)
            self.threshold = threshold if threshold is not None else saved["threshold"]
            self.version = {"run": run.resolve().name, "checkpoint": transfer.CHECKPOINT, "step": None,
                            "threshold": self.threshold}
            return
        checkpoint = checkpoint or (saved or {}).get("checkpoint", "best")
        self.model, ckpt, self.data_cfg = runs.load_run(run, checkpoint, device=device)
        self.threshold = threshold if threshold is not None else saved["threshold"]  # None: refer all
        self.version = {"run": run.resolve().name, "checkpoint": checkpoint, "step": ckpt.get("step"),
                        "threshold": self.threshold}

    @property
    def version_text(self) -> str:
        v = self.version
        th = "none" if v["threshold"] is None else f"{v['threshold']:.4f}"
        return f"{v['run']}/ckpt-{v['checkpoint']}@{v['step']} threshold {th}"

    def crop_box(self, width: int, height: int, box) -> tuple[float, float, float, float]:
        """The box read: the number's box widened by the run's factor; the whole photo without one."""
        from transcribe import crops
        if self.transfer:
            return crops.widen(box, self.transfer_cfg.widen) if box is not None else (0.0, 0.0, float(width), float(height))
        return crops.widen(box, self.data_cfg.widen) if box is not None else (0.0, 0.0, float(width), float(height))

    def read(self, images: Sequence[np.ndarray], boxes: Sequence) -> list[Reading]:
        """(H, W, 3) uint8 photos with their number boxes (None: the photo is the number) -> readings."""
        from transcribe import crops, transfer
        from transcribe.evaluation import predict_images
        from transcribe.sequence import REFUSED_TEXT
        if not images:
            return []
        if self.transfer:
            boxes = [b if b is not None else (0.0, 0.0, float(im.shape[1]), float(im.shape[0])) for im, b in zip(images, boxes)]
            photos = [transfer.photo_from(im, b, "upload") for im, b in zip(images, boxes)]
            rows = transfer.transcribe_photos(self.model, self.transfer_cfg, photos, self.stem, self.threshold)
            return [Reading(r["pred"], float(r["confidence"]), bool(r["accepted"]),
                            tuple(round(float(v), 2) for v in self.crop_box(im.shape[1], im.shape[0], b)))
                    for r, im, b in zip(rows, images, boxes)]
        cut, used = [], []
        for image, box in zip(images, boxes):
            b = self.crop_box(image.shape[1], image.shape[0], box)
            cut.append(crops.crop(image, b, self.data_cfg.size))
            used.append(tuple(round(float(v), 2) for v in b))
        decoded = predict_images(self.model, np.stack(cut), crop=self.data_cfg.crop, batch_size=len(cut))
        out = []
        for d, b in zip(decoded, used):
            logp = float(d["confidence"])
            accepted = self.threshold is not None and logp >= self.threshold and d["pred"] != REFUSED_TEXT
            out.append(Reading(d["pred"], logp, accepted, b))
        return out


class ModelError(Exception):
    """The model gave no answer in time, or failed; the message says which."""


class Batcher:
    """Concurrent reads -> batches of up to `max_batch`, run one at a time on a model thread.

    The first request of a batch waits at most `wait` seconds for others; each caller waits at
    most `timeout` seconds for its answer (a slow batch keeps running, its answers are dropped).
    """

    def __init__(self, reader, max_batch: int = MAX_BATCH, wait: float = BATCH_WAIT,
                 timeout: float = READ_TIMEOUT, on_batch=None):
        self.reader, self.max_batch, self.wait, self.timeout = reader, max_batch, wait, timeout
        self.on_batch = on_batch  # called with the batch size (metrics)
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def read(self, image: np.ndarray, box) -> Reading:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, box, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            raise ModelError(f"the model did not answer within {self.timeout:g} s") from None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                try:
                    batch.append(self.queue.get_nowait() if left <= 0 else
                                 await asyncio.wait_for(self.queue.get(), left))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            batch = [b for b in batch if not b[2].done()]  # callers that timed out meanwhile
            if not batch:
                continue
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                readings = await loop.run_in_executor(self.executor, self.reader.read,
                                                      [b[0] for b in batch], [b[1] for b in batch])
                if len(readings) != len(batch):
                    raise RuntimeError(f"{len(readings)} readings for {len(batch)} photos")
            except Exception as err:  # noqa: BLE001 - every caller gets the failure, the loop goes on
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(ModelError(f"the model failed: {type(err).__name__}: {err}"))
                continue
            for (_, _, future), reading in zip(batch, readings):
                if not future.done():
                    future.set_result(reading)
