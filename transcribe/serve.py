"""`transcribe serve RUN`: the referral loop as a service (FastAPI + uvicorn).

    POST /v1/transcriptions   a photo (multipart field `photo`, optional `box` "l,t,w,h") ->
                              number, log P(S|X), decision (accepted / referred), box, model version
    GET  /review              the operator page: next queued photo, leased to this operator
    GET  /status              coverage, live accuracy of accepted answers (audits), queue length
    GET  /metrics             the same in the Prometheus text format

Every request is stored (reviews.py) before the model runs and again before the answer leaves,
so a crash loses nothing and a retry with the same Idempotency-Key header returns the stored
answer. The model is loaded once; concurrent requests are batched (reader.Batcher). Everything
needs the token (Authorization: Bearer TOKEN, or the cookie the login form sets); uploads are
limited in bytes and pixels and must decode as an image.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import math
import os
import re
import secrets
import sys
import time
import uuid
from pathlib import Path

try:
    import jinja2
    import numpy as np
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from PIL import Image, UnidentifiedImageError
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.concurrency import run_in_threadpool
except ImportError as err:  # the optional extra is missing: one line naming what to install
    raise SystemExit(f"transcribe serve needs the 'serve' extra ({err.name} is missing): "
                     f"pip install -e '.[serve]'") from None

from transcribe import reviews
from transcribe.config import add_device_argument
from transcribe.reader import BATCH_WAIT, MAX_BATCH, READ_TIMEOUT, Batcher, ModelError

MAX_BYTES = 4 << 20          # 4 MiB per upload: SVHN photos are ~5-50 KB, a phone JPEG ~3 MB
MAX_PIXELS = 16_000_000      # 16 megapixels: above a 12 MP phone photo; refuses decompression bombs
FORM_OVERHEAD = 16 << 10     # multipart headers and the box field on top of the photo's bytes
IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp",
               "WEBP": "image/webp"}
TOKEN_ENV = "TRANSCRIBE_TOKEN"
COOKIE_TOKEN, COOKIE_OPERATOR = "transcribe_token", "transcribe_operator"
OPERATOR_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
KEY_RE = re.compile(r"[\x21-\x7e]{1,200}")   # printable ASCII, no spaces
TEMPLATES = Path(__file__).parent / "templates"
PAGE_CSP = "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'"


class Rejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB and the media type of an uploaded photo; Rejected unless it is an image
    of an allowed format, within `max_pixels` (checked from the header, before decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in IMAGE_TYPES:
                raise Rejected(415, f"photo: {im.format} images are not accepted (send PNG, JPEG, GIF, BMP or WebP)")
            w, h = im.size
            if w * h > max_pixels:
                raise Rejected(413, f"photo: {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,}")
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8), IMAGE_TYPES[im.format]
    except UnidentifiedImageError:
        raise Rejected(415, "photo: not an image (no decodable PNG, JPEG, GIF, BMP or WebP data)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise Rejected(415, f"photo: unreadable image ({type(e).__name__}: {e})") from None


def parse_box(text: str | None, width: int, height: int):
    if text is None or text.strip() == "":
        return None
    try:
        box = tuple(float(p) for p in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise Rejected(422, f"box {text[:60]!r}: expected left,top,width,height in photo pixels, width and height > 0")
    if box[0] >= width or box[1] >= height or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
        raise Rejected(422, f"box {text[:60]!r} lies outside the {width}x{height} photo")
    return box


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (several apps per process in tests)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("transcribe_requests", "photos answered, by decision", ["decision"], registry=r)
        self.rejected = Counter("transcribe_rejected_uploads", "uploads refused (size, pixels, not an image)",
                                registry=r)
        self.latency = Histogram("transcribe_request_seconds", "time to answer a photo", registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch = Histogram("transcribe_batch_size", "photos per forward pass", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        self.reviews = Counter("transcribe_reviews", "reviews submitted, by kind", ["kind"], registry=r)
        self.queue = Gauge("transcribe_queue_length", "photos waiting for review", registry=r)
        self.coverage = Gauge("transcribe_coverage", "share of answered photos the machine accepted", registry=r)
        self.accuracy = Gauge("transcribe_audit_accuracy", "accuracy of accepted answers on blind audits "
                              "(NaN before the first)", ["bound"], registry=r)
        self.audits = Gauge("transcribe_audits_reviewed", "accepted answers checked blind by a person", registry=r)

    def refresh(self, st: reviews.Stats) -> None:
        nan = float("nan")
        self.queue.set(st.queue)
        self.coverage.set(nan if st.coverage is None else st.coverage)
        self.audits.set(st.audits_reviewed)
        interval = st.audit_interval or (nan, nan)
        self.accuracy.labels("estimate").set(nan if st.audit_accuracy is None else st.audit_accuracy)
        self.accuracy.labels("low95").set(interval[0])
        self.accuracy.labels("high95").set(interval[1])


def create_app(reader, db_url: str, token: str, audit_share: float = reviews.AUDIT_SHARE,
               max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, max_batch: int = MAX_BATCH,
               batch_wait: float = BATCH_WAIT, timeout: float = READ_TIMEOUT,
               lease_seconds: float = reviews.LEASE_SECONDS) -> FastAPI:
    """The service around `reader` (anything with read(images, boxes), crop_box(w, h, box), version_text)."""
    if not token:
        raise ValueError("the service needs a token")
    db = reviews.open_db(db_url)
    metrics = Metrics()
    batcher = Batcher(reader, max_batch=max_batch, wait=batch_wait, timeout=timeout,
                      on_batch=metrics.batch.observe)
    pages = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    static = {name: (TEMPLATES / name).read_bytes() for name in ("review.js", "style.css")}
    background: set[asyncio.Task] = set()

    async def lifespan(_app):
        batcher.start()
        task = asyncio.get_running_loop().create_task(recover())  # photos stored before a crash
        background.add(task)
        task.add_done_callback(background.discard)
        yield
        await batcher.stop()

    app = FastAPI(title="transcribe", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db, app.state.metrics = db, metrics

    # ------------------------------------------------------------ auth and limits, before any body is read

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_TOKEN, "")
        return hmac.compare_digest(given.encode(), token.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if not (path == "/login" or path.startswith("/static/")) and not authorized(request):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                return page("login.html", status=401, next=path)
            return JSONResponse({"error": "a token is needed: Authorization: Bearer TOKEN"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if request.method == "POST" and path == "/v1/transcriptions":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse({"error": "Content-Length is required"}, status_code=411)
            if int(length) > max_bytes + FORM_OVERHEAD:
                metrics.rejected.inc()
                return JSONResponse({"error": f"upload of {int(length):,} bytes: the limit is {max_bytes:,} bytes "
                                              f"per photo"}, status_code=413)
        return await call_next(request)

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        html = pages.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": PAGE_CSP,
                                                               "X-Content-Type-Options": "nosniff",
                                                               "Cache-Control": "no-store"})

    # ------------------------------------------------------------ the API

    def answer(row: reviews.Photo, status: int = 200) -> JSONResponse:
        body = {"id": row.id, "number": row.text, "log_prob": row.log_prob,
                "probability": None if row.log_prob is None else math.exp(row.log_prob),
                "decision": row.status, "box": row.crop_box, "model": row.model_version}
        if row.error:
            body["error"] = row.error
        return JSONResponse(body, status_code=status)

    async def read_and_record(row: reviews.Photo, image: np.ndarray) -> tuple[reviews.Photo, bool]:
        """Run the model on a stored photo and store the outcome; (row, model answered)."""
        try:
            reading = await batcher.read(image, row.box)
        except ModelError as err:
            row = await run_in_threadpool(reviews.record_failure, db, row.id,
                                          f"{err}; the photo is queued for review")
            return row, False
        row = await run_in_threadpool(reviews.record_answer, db, row.id, reading.text, reading.log_prob,
                                      reading.accepted, reading.box, reader.version_text, audit_share)
        return row, True

    async def recover() -> None:
        for photo_id in await run_in_threadpool(reviews.pending_ids, db):
            row = await run_in_threadpool(reviews.load, db, photo_id)
            try:
                image, _ = decode_upload(row.image, max_pixels=1 << 62)
            except Rejected as err:
                await run_in_threadpool(reviews.record_failure, db, row.id, str(err))
                continue
            await read_and_record(row, image)

    @app.post("/v1/transcriptions")
    async def transcriptions(request: Request):
        started = time.perf_counter()
        key = request.headers.get("idempotency-key") or uuid.uuid4().hex
        if not KEY_RE.fullmatch(key):
            return JSONResponse({"error": "Idempotency-Key: 1-200 printable ASCII characters"}, status_code=422)
        row = await run_in_threadpool(reviews.find, db, key)
        if row is not None and row.status != "pending":  # a retry: the stored answer, no second row
            return answer(row, 200 if row.error is None else 503)
        try:
            if row is None:
                form = await request.form(max_files=1, max_fields=2)
                photo = form.get("photo")
                if photo is None or isinstance(photo, str):
                    raise Rejected(422, "the photo goes in the multipart field 'photo'")
                data = await photo.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise Rejected(413, f"photo: more than the limit of {max_bytes:,} bytes")
                image, media_type = decode_upload(data, max_pixels)
                box = parse_box(form.get("box"), image.shape[1], image.shape[0])
                row, _ = await run_in_threadpool(reviews.add_pending, db, key, data, media_type,
                                                 image.shape[1], image.shape[0], box)
            else:  # stored before a crash, not yet answered
                image, _ = decode_upload(row.image, max_pixels=1 << 62)
        except Rejected as err:
            metrics.rejected.inc()
            return JSONResponse({"error": str(err)}, status_code=err.status)
        if row.status == "pending":
            row, answered = await read_and_record(row, image)
        else:
            answered = row.error is None
        metrics.requests.labels(row.status).inc()
        metrics.latency.observe(time.perf_counter() - started)
        return answer(row, 200 if answered else 503)

    @app.get("/photos/{photo_id}")
    async def photo(photo_id: int):
        row = await run_in_threadpool(reviews.load, db, photo_id)
        if row is None:
            return JSONResponse({"error": f"no photo {photo_id}"}, status_code=404)
        return Response(row.image, media_type=row.media_type,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})

    @app.get("/metrics")
    async def prometheus():
        metrics.refresh(await run_in_threadpool(reviews.stats, db))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True, "model": reader.version_text}

    # ------------------------------------------------------------ pages

    @app.get("/static/{name}")
    async def static_file(name: str):
        if name not in static:
            return Response(status_code=404)
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(static[name], media_type=kind, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/login")
    async def login_form(next: str = "/review"):
        return page("login.html", next=next)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form(max_files=0, max_fields=4)
        given, operator = str(form.get("token", "")), str(form.get("operator", "")).strip()
        target = str(form.get("next", "/review"))
        target = target if target in ("/review", "/status") else "/review"
        if not hmac.compare_digest(given.encode(), token.encode()):
            return page("login.html", status=401, next=target, error="wrong token", operator=operator)
        if not OPERATOR_RE.fullmatch(operator):
            return page("login.html", status=400, next=target, operator=operator,
                        error="name: 1-64 letters, digits or . _ @ -")
        response = RedirectResponse(target, status_code=303)
        for name, value in ((COOKIE_TOKEN, given), (COOKIE_OPERATOR, operator)):
            response.set_cookie(name, value, httponly=True, samesite="strict")
        return response

    def operator_of(request: Request) -> str | None:
        name = request.cookies.get(COOKIE_OPERATOR, "")
        return name if OPERATOR_RE.fullmatch(name) else None

    @app.get("/review")
    async def review(request: Request):
        operator = operator_of(request)
        if operator is None:
            return page("login.html", next="/review", error="give your name to review")
        row = await run_in_threadpool(reviews.take_next, db, operator, lease_seconds)
        st = await run_in_threadpool(reviews.stats, db)
        if row is None:
            return page("review.html", photo=None, operator=operator, queue=st.queue)
        box = row.box
        overlay = None if box is None else {
            "left": 100 * box[0] / row.width, "top": 100 * box[1] / row.height,
            "width": 100 * box[2] / row.width, "height": 100 * box[3] / row.height}
        # audits are blind: no guess shown, so the person's answer is independent of the model's
        guess = "" if row.audit or row.text in (None, ">5") else row.text
        return page("review.html", photo=row, operator=operator, queue=st.queue, overlay=overlay, guess=guess,
                    lease_minutes=round(lease_seconds / 60, 1))

    @app.post("/review/{photo_id}")
    async def submit(photo_id: int, request: Request):
        operator = operator_of(request)
        if operator is None:
            return page("login.html", status=401, next="/review", error="give your name to review")
        form = await request.form(max_files=0, max_fields=4)
        unreadable = form.get("action") == "unreadable"
        text = str(form.get("text", "")).strip()
        if not unreadable and not (text.isdigit() and len(text) <= reviews.MAX_TEXT):
            return page("message.html", status=400, title="Not a number",
                        message=f"{text!r}: type the digits (at most {reviews.MAX_TEXT}), or press U for "
                                f"no number / unreadable.")
        try:
            await run_in_threadpool(reviews.submit, db, photo_id, operator, text, unreadable)
        except reviews.LeaseLost as err:
            return page("message.html", status=409, title="Photo no longer yours", message=str(err))
        metrics.reviews.labels("unreadable" if unreadable else "number").inc()
        return RedirectResponse("/review", status_code=303)

    @app.get("/status")
    async def status_page(request: Request):
        st = await run_in_threadpool(reviews.stats, db)
        return page("status.html", st=st, model=reader.version_text, audit_share=audit_share,
                    operator=operator_of(request))

    @app.get("/")
    async def home():
        return RedirectResponse("/status", status_code=303)

    return app


# ---------------------------------------------------------------- the command

def add_serve_arguments(parser) -> None:
    parser.add_argument("run", type=Path, help="run folder (ckpt-*.pt and threshold.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--token", default=None,
                        help=f"the token every request needs (default: ${TOKEN_ENV}; a random one is made "
                             f"and printed when neither is set)")
    parser.add_argument("--db", default=None,
                        help="database URL (e.g. postgresql+psycopg://user@host/db) or SQLite file "
                             "(default: RUN/reviews.sqlite)")
    parser.add_argument("--audit", type=float, default=reviews.AUDIT_SHARE,
                        help=f"share of accepted answers also reviewed blind (default: {reviews.AUDIT_SHARE})")
    parser.add_argument("--threshold", type=float, default=None,
                        help="accept when log P(S|X) >= this (default: the run's threshold.json; e.g. one "
                             "re-chosen on reviewed photos by `transcribe labels threshold`)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"upload limit (default: {MAX_BYTES})")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"photo size limit (default: {MAX_PIXELS})")
    parser.add_argument("--batch-size", type=int, default=MAX_BATCH, help=f"photos per forward pass at most "
                                                                    f"(default: {MAX_BATCH})")
    parser.add_argument("--timeout", type=float, default=READ_TIMEOUT,
                        help=f"seconds to wait for the model before referring with an error (default: {READ_TIMEOUT})")
    parser.add_argument("--lease", type=float, default=reviews.LEASE_SECONDS,
                        help=f"seconds an operator holds a photo (default: {reviews.LEASE_SECONDS:g})")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    add_device_argument(parser)


def run_serve(args) -> int:
    import torch

    from transcribe.reader import Reader
    if not 0 <= args.audit <= 1:
        raise ValueError(f"--audit must be in [0, 1], got {args.audit}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    token = args.token or os.environ.get(TOKEN_ENV)
    made = not token
    token = token or secrets.token_urlsafe(16)
    reader = Reader(args.run, threshold=args.threshold, device=args.device)
    url = reviews.db_url(args.db, args.run)
    app = create_app(reader, url, token, audit_share=args.audit, max_bytes=args.max_bytes,
                     max_pixels=args.max_pixels, max_batch=args.batch_size, timeout=args.timeout,
                     lease_seconds=args.lease)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {reader.version_text} at {where}  (operator page {where}/review, status {where}/status)")
    print(f"database: {url.split('@')[-1] if '@' in url else url}")
    if made:
        print(f"token (made for this start; set {TOKEN_ENV} or --token to keep one): {token}")
    sys.stdout.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
