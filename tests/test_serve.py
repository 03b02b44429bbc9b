"""serve.py: the real server process on a free port, a real browser on the operator page, a SIGKILL
under load; and in-process, what happens when the model is slow or fails."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[dev]')")

from PIL import Image  # noqa: E402
from sqlalchemy import select  # noqa: E402

from pg import free_port  # noqa: E402
from transcribe import crops, reviews, svhn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-123"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model trained 2 steps on 40 synthetic photos, with a threshold.json; and the photos."""
    import torch
    from transcribe import dataset, model, synth, training
    root = tmp_path_factory.mktemp("serve")
    synth.generate(root / "train", 40, seed=0)
    data_cfg = dataset.DataConfig(train=(str(root / "train"),), val_size=8, seed=0, cache_dir=str(root / "cache"))
    cfg = training.TrainConfig(out=str(root / "run"), preset="tiny", steps=2, batch_size=8, lr=0.01, eval_every=2,
                               eval_limit=0, progress=False, hist_every=0, device="cpu")
    threads = torch.get_num_threads()
    try:
        run = Path(training.train(model.PRESETS["tiny"], data_cfg, cfg))
    finally:
        torch.set_num_threads(threads)
    (run / "threshold.json").write_text(json.dumps({"threshold": -1.0, "checkpoint": "best", "target": 0.98}))
    return run, svhn.read_split(root / "train")


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


class Server:
    """`transcribe serve` in a subprocess; `start()` again after `kill()` restarts it on the same port."""

    def __init__(self, run: Path, db: str, *flags: str):
        self.run, self.db, self.flags, self.port = run, db, flags, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONPATH": str(REPO), "TRANSCRIBE_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "transcribe.cli", "serve", str(self.run), "--port",
                                      str(self.port), "--db", self.db, "--threads", "1", *self.flags],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.proc.stdout.read().decode()}")
            try:
                if httpx.get(self.url + "/healthz", headers=auth(), timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the server did not answer within 60 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def serve(tiny_run, tmp_path):
    servers = []

    def start(*flags, db=None) -> Server:
        server = Server(tiny_run[0], db or str(tmp_path / "reviews.sqlite"), *flags).start()
        servers.append(server)
        return server
    yield start
    for s in servers:
        s.kill()


def post(url: str, photo: bytes, box: str | None = None, key: str | None = None, **kw):
    headers = {**auth(), **({"Idempotency-Key": key} if key else {})}
    return httpx.post(url + "/v1/transcriptions", files={"photo": ("p.png", photo, "image/png")},
                      data={"box": box} if box else {}, headers={**headers, **kw.pop("headers", {})},
                      timeout=30, **kw)


def rows(db: Path | str) -> list[reviews.Photo]:
    """Every stored row, oldest first; `db` is an SQLite file or a database URL."""
    db = reviews.open_db(db if isinstance(db, str) else reviews.sqlite_url(db))
    with db() as s:
        return list(s.scalars(select(reviews.Photo).order_by(reviews.Photo.id)))


def login(url: str, name: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    r = client.post("/login", data={"token": TOKEN, "operator": name, "next": "/review"})
    assert r.status_code == 303
    return client


def leased_id(client: httpx.Client) -> int | None:
    m = re.search(r'action="/review/(\d+)"', client.get("/review").text)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------


def test_api_needs_a_token_limits_uploads_records_answers_and_leases_photos(tiny_run, serve, tmp_path):
    run, split = tiny_run
    server = serve("--threshold", "0", "--max-bytes", "60000", "--max-pixels", "250000")  # 0: refer every photo
    photo = png_bytes(split.folder / split.records[0].file)
    # anonymous: 401 everywhere, before the body is looked at
    assert httpx.post(server.url + "/v1/transcriptions", files={"photo": photo}).status_code == 401
    for path in ("/status", "/review", "/metrics", "/photos/1"):
        assert httpx.get(server.url + path).status_code == 401, path
    assert post(server.url, photo, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # limits: bytes (refused from Content-Length), pixels (from the header), only images
    big = post(server.url, os.urandom(90_000))
    assert big.status_code == 413 and "60,000 bytes" in big.json()["error"]
    buf = io.BytesIO()
    Image.new("RGB", (600, 600)).save(buf, "PNG")   # small file, 360,000 pixels
    wide = post(server.url, buf.getvalue())
    assert wide.status_code == 413 and "360,000 pixels" in wide.json()["error"]
    not_image = post(server.url, b"%PDF-1.4 this is not a photo")
    assert not_image.status_code == 415 and "not an image" in not_image.json()["error"]
    assert post(server.url, photo[:200]).status_code == 415          # a truncated PNG
    assert post(server.url, photo, box="1,2,3").status_code == 422
    assert rows(tmp_path / "reviews.sqlite") == []                   # nothing refused was stored
    # a good photo with its box: answered, referred (threshold 0), recorded
    rec = split.records[0]
    box = crops.number_box(rec.boxes)
    r = post(server.url, photo, box=",".join(map(str, box)), key="client-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] == "referred" and body["log_prob"] <= 0 and re.fullmatch(r"\d{0,5}|>5", body["number"])
    assert body["box"] == pytest.approx(list(crops.widen(box, 1.3)), abs=0.01)
    assert body["model"].startswith("run/ckpt-best@") and "threshold 0.0000" in body["model"]
    # the same request again (a client retry): the stored answer, no second row
    assert post(server.url, photo, key="client-1").json() == body
    stored = rows(tmp_path / "reviews.sqlite")
    assert len(stored) == 1 and stored[0].request_key == "client-1" and stored[0].image == photo
    assert stored[0].needs_review and stored[0].text == body["number"] and stored[0].box == pytest.approx(list(box))
    # without a box the whole photo is read
    whole = post(server.url, photo).json()
    assert whole["box"] == [0, 0, *Image.open(io.BytesIO(photo)).size]
    metrics = httpx.get(server.url + "/metrics", headers=auth()).text
    assert "transcribe_queue_length 2.0" in metrics and 'transcribe_requests_total{decision="referred"} 2.0' in metrics
    assert "transcribe_rejected_uploads_total 5.0" in metrics
    status = httpx.get(server.url + "/status", headers=auth()).text
    assert '<td id="queue">2</td>' in status and '<td id="coverage">0.0%</td>' in status
    assert httpx.get(server.url + f"/photos/{body['id']}", headers=auth()).content == photo
    # the two queued photos: two operators get one each, never the same
    ann, bob = login(server.url, "ann"), login(server.url, "bob")
    a, b = leased_id(ann), leased_id(bob)
    assert a is not None and b is not None and a != b
    assert leased_id(ann) == a                                       # a reload keeps the same photo
    assert "Nothing to review" in login(server.url, "cid").get("/review").text
    assert ann.post(f"/review/{a}", data={"text": "42"}).status_code == 303
    assert bob.post(f"/review/{a}", data={"text": "43"}).status_code == 409   # not bob's photo
    assert bob.post(f"/review/{b}", data={"text": "4x"}).status_code == 400
    assert httpx.post(server.url + "/login", data={"token": "nope", "operator": "eve"}).status_code == 401
    assert [(r.review_text, r.reviewer) for r in rows(tmp_path / "reviews.sqlite")] == [("42", "ann"), (None, None)]


def test_review_three_photos_in_a_real_browser(tiny_run, serve, tmp_path):
    """Headless Chromium: sign in, read three queued photos with the keyboard, check the database."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    run, split = tiny_run
    server = serve("--threshold", "0")
    for rec in split.records[:3]:
        box = ",".join(str(v) for v in crops.number_box(rec.boxes))
        assert post(server.url, png_bytes(split.folder / rec.file), box=box).status_code == 200
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            assert page.goto(server.url + "/review").status == 401  # the sign-in page
            page.fill("input[name=operator]", "ann")
            page.fill("input[name=token]", TOKEN)
            page.press("input[name=token]", "Enter")
            page.wait_for_selector("#text")
            # 1: the model's guess is prefilled and selected: typing replaces it, Enter saves
            assert page.eval_on_selector("#text", "e => e.value") == rows(tmp_path / "reviews.sqlite")[0].text
            assert page.eval_on_selector(".box", "e => e.style.left").endswith("%")   # the box is drawn
            first = page.url
            page.keyboard.type("123")
            page.keyboard.press("Enter")
            page.wait_for_selector('form[action="/review/2"]')
            # 2: letters are ignored; U = no number / unreadable
            page.keyboard.type("4a")
            page.keyboard.press("u")
            page.wait_for_selector('form[action="/review/3"]')
            page.keyboard.type("56")
            page.keyboard.press("Enter")
            page.wait_for_selector("text=Nothing to review")
            assert first.endswith("/review")
            page.goto(server.url + "/status")
            assert page.inner_text("#reviewed") == "3" and page.inner_text("#queue") == "0"
        finally:
            browser.close()
    got = [(r.review_text, r.unreadable, r.reviewer) for r in rows(tmp_path / "reviews.sqlite")]
    assert got == [("123", False, "ann"), (None, True, "ann"), ("56", False, "ann")]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(database, tiny_run, serve, tmp_path, request):
    """4 clients x 50 photos, each with its own Idempotency-Key; the server is SIGKILLed mid-way and
    restarted; clients retry what failed. Every photo ends accepted or referred exactly once, and
    every answer a client received is the one stored."""
    from transcribe.reader import Reader
    run, split = tiny_run
    photos = [png_bytes(split.folder / r.file) for r in split.records]
    reader = Reader(run)
    logps = sorted(r.log_prob for r in reader.read([svhn.load_image(split.folder / r.file) for r in split.records],
                                                   [None] * len(split.records)))
    threshold = (logps[len(logps) // 2 - 1] + logps[len(logps) // 2]) / 2   # about half accepted
    share = 0.5
    db: Path | str = tmp_path / "reviews.sqlite"
    if database == "postgresql":
        db = request.getfixturevalue("postgres")
        from sqlalchemy import create_engine
        engine = create_engine(db)
        reviews.Base.metadata.drop_all(engine)
        engine.dispose()
    server = serve("--threshold", f"{threshold:.6f}", "--audit", str(share), db=str(db))
    answers: dict[str, dict] = {}
    done, errors, lock = [0], [], threading.Lock()

    def client(c: int) -> None:
        deadline = time.monotonic() + 90
        with httpx.Client(timeout=30) as http:
            for i in range(50):
                key = f"c{c}-p{i}"
                while True:
                    try:
                        r = http.post(server.url + "/v1/transcriptions", headers={**auth(), "Idempotency-Key": key},
                                      files={"photo": ("p.png", photos[(c * 50 + i) % len(photos)], "image/png")})
                        if r.status_code == 200:
                            break
                        errors.append(f"{key}: {r.status_code} {r.text}")
                        return
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            errors.append(f"{key}: server unreachable")
                            return
                        time.sleep(0.1)
                with lock:
                    answers[key] = r.json()
                    done[0] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    while done[0] < 60 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    server.kill()
    killed_at = done[0]
    server.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    assert 60 <= killed_at < 200 and len(answers) == 200
    stored = {r.request_key: r for r in rows(db)}
    assert sorted(stored) == sorted(answers)                                   # 200 rows, one per photo
    for key, body in answers.items():
        row = stored[key]
        assert row.id == body["id"] and row.status == body["decision"] and row.text == body["number"]
        c, i = (int(v) for v in re.findall(r"\d+", key))
        assert row.status in ("accepted", "referred") and row.image == photos[(c * 50 + i) % len(photos)]
        assert row.needs_review == (row.status == "referred" or row.audit)
        assert row.audit == (row.status == "accepted" and reviews.audit_draw(key, share))
    decisions = [r.status for r in stored.values()]
    assert 0 < decisions.count("accepted") < 200


# ---------------------------------------------------------------- in-process: a slow or failing model

class FakeReader:
    """Stands in for reader.Reader: answers '7' at log P = -0.1, or sleeps, or fails."""
    version_text = "<script>alert(1)</script> v1"

    def __init__(self, mode: str = "ok"):
        self.mode = mode

    def read(self, images, boxes):
        from transcribe.reader import Reading
        if self.mode == "slow":
            time.sleep(1.0)
        if self.mode == "fail":
            raise RuntimeError("CUDA out of memory (pretend)")
        return [Reading("7", -0.1, True, (0.0, 0.0, float(im.shape[1]), float(im.shape[0]))) for im in images]


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["slow", "fail"])
def test_a_slow_or_failing_model_gives_a_clear_error_and_the_photo_stays_queued(mode, tmp_path):
    from fastapi.testclient import TestClient
    from transcribe.serve import create_app
    app = create_app(FakeReader(mode), reviews.sqlite_url(tmp_path / "r.sqlite"), TOKEN, timeout=0.2)
    with TestClient(app) as client:
        r = client.post("/v1/transcriptions", files={"photo": ("p.png", small_png(), "image/png")},
                        headers={**auth(), "Idempotency-Key": "k1"})
        assert r.status_code == 503
        body = r.json()
        assert body["decision"] == "referred" and body["number"] is None
        assert ("did not answer within 0.2 s" if mode == "slow" else "CUDA out of memory") in body["error"]
        assert "queued for review" in body["error"]
        # the retry gets the same stored outcome; the photo waits for a person
        again = client.post("/v1/transcriptions", files={"photo": ("p.png", small_png(), "image/png")},
                            headers={**auth(), "Idempotency-Key": "k1"})
        assert again.status_code == 503 and again.json() == body
    (row,) = rows(tmp_path / "r.sqlite")
    assert row.needs_review and row.reviewed_at is None and row.image == small_png()


def test_pages_escape_what_they_show_and_concurrent_requests_are_batched(tmp_path):
    from fastapi.testclient import TestClient
    from transcribe.serve import create_app
    app = create_app(FakeReader(), reviews.sqlite_url(tmp_path / "r.sqlite"), TOKEN, batch_wait=1.0)
    with TestClient(app) as client:
        status = client.get("/status", headers=auth()).text
        assert "<script>alert(1)" not in status and "&lt;script&gt;alert(1)&lt;/script&gt; v1" in status
        results = []
        threads = [threading.Thread(target=lambda: results.append(client.post(
            "/v1/transcriptions", files={"photo": ("p.png", small_png(), "image/png")}, headers=auth())))
            for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 6
        assert {r.json()["decision"] for r in results} == {"accepted"}
        metrics = client.get("/metrics", headers=auth()).text
    # six photos in fewer forward passes than photos: requests waiting together share a batch
    count = float(re.search(r"transcribe_batch_size_count (\S+)", metrics).group(1))
    assert 1 <= count < 6


def test_photos_stored_but_unanswered_before_a_crash_are_read_at_start(tmp_path):
    from fastapi.testclient import TestClient
    from transcribe.serve import create_app
    url = reviews.sqlite_url(tmp_path / "r.sqlite")
    db = reviews.open_db(url)
    row, _ = reviews.add_pending(db, "before-the-crash", small_png(), "image/png", 16, 8, None)
    assert reviews.pending_ids(db) == [row.id]
    with TestClient(create_app(FakeReader(), url, TOKEN)):
        deadline = time.monotonic() + 10
        while reviews.pending_ids(db) and time.monotonic() < deadline:
            time.sleep(0.02)
    (stored,) = rows(url)
    assert (stored.status, stored.text, stored.model_version) == ("accepted", "7", FakeReader.version_text)
