"""fetch.py: resumable download, safe extraction, verification, against a local HTTP server."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading

import numpy as np
import pytest

from transcribe import fetch, svhn
from transcribe.svhn import DataError, Record


class _FileServer(http.server.ThreadingHTTPServer):
    """Serves `files` on 127.0.0.1 with HTTP Range support; can ignore Range, or drop the
    connection part-way through its first answer, like a flaky mirror."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files = files
        self.ignore_range = False
        self.drop_first_after: int | None = None
        self.drop_always_after: int | None = None
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv: _FileServer = self.server
        body = srv.files.get(self.path.lstrip("/"))
        range_ = self.headers.get("Range")
        if body is None:
            srv.log.append((self.path, range_, 404))
            self.send_error(404)
            return
        start = int(range_.removeprefix("bytes=").split("-")[0]) if range_ and not srv.ignore_range else None
        if start is not None and start >= len(body):
            srv.log.append((self.path, range_, 416))
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 200 if start is None else 206
        part = body if start is None else body[start:]
        srv.log.append((self.path, range_, status))
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if srv.drop_first_after is not None:
            part, srv.drop_first_after = part[: srv.drop_first_after], None
        if srv.drop_always_after is not None:
            part = part[: srv.drop_always_after]
        self.wfile.write(part)


@pytest.fixture
def server():
    srv = _FileServer({})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _payload(n: int = 300_000) -> bytes:
    return np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_download_resumes_from_part_file(server, tmp_path):
    data = _payload()
    server.files["a.bin"] = data
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(data[:100_000])  # an earlier, interrupted transfer
    fetch.download(server.url + "a.bin", dest, progress=False)
    assert dest.read_bytes() == data
    assert server.log == [("/a.bin", "bytes=100000-", 206)]  # only the rest was fetched
    assert not (tmp_path / "a.bin.part").exists()


def test_download_resumes_after_dropped_connection(server, tmp_path):
    data = _payload()
    server.files["a.bin"] = data
    server.drop_first_after = 120_000
    dest = tmp_path / "a.bin"
    fetch.download(server.url + "a.bin", dest, retry_wait=0, progress=False)
    assert dest.read_bytes() == data
    assert server.log[0] == ("/a.bin", None, 200)
    assert server.log[1][2] == 206 and server.log[1][1].startswith("bytes=") and server.log[1][1] != "bytes=0-"


def test_download_gives_up_clearly_and_keeps_the_part(server, tmp_path):
    data = _payload()
    server.files["a.bin"] = data
    server.drop_always_after = 1000  # every answer stops 1,000 bytes in
    dest = tmp_path / "a.bin"
    with pytest.raises(DataError, match=r"a.bin: downloading .* did not complete after 3 attempts "
                                        r"\(got 3,000 of 300,000 bytes\); run again to resume"):
        fetch.download(server.url + "a.bin", dest, attempts=3, retry_wait=0, progress=False)
    assert not dest.exists() and (tmp_path / "a.bin.part").read_bytes() == data[:3000]


def test_download_from_server_ignoring_range(server, tmp_path):
    data = _payload()
    server.files["a.bin"] = data
    server.ignore_range = True
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(data[:100_000])
    fetch.download(server.url + "a.bin", dest, progress=False)
    assert dest.read_bytes() == data  # restarted cleanly, not appended
    assert server.log == [("/a.bin", "bytes=100000-", 200)]


def test_download_complete_part_and_http_errors(server, tmp_path):
    data = _payload(1000)
    server.files["a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(data)  # complete, but never renamed
    fetch.download(server.url + "a.bin", tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    with pytest.raises(DataError, match=r"b.bin: downloading .* HTTP 404"):
        fetch.download(server.url + "missing.bin", tmp_path / "b.bin", progress=False)


def _tar_gz(members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("bad", ["../evil.txt", "sub/../../evil.txt", "/tmp/transcribe-evil.txt"])
def test_extract_refuses_paths_outside_dest(tmp_path, bad):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz({"ok/1.txt": b"fine", bad: b"evil"}))
    dest = tmp_path / "out"
    with pytest.raises(DataError, match=rf"a.tar.gz: member '{bad}'"):
        fetch.extract(archive, dest, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (dest / "ok").exists()  # nothing written


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_extract_refuses_links_out(tmp_path, kind):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz({"ok/1.txt": b"fine"}, links={"ok/link": (kind, "../../secret")}))
    with pytest.raises(DataError, match=r"member 'ok/link' is a (symbolic|hard) link \(to '../../secret'\)"):
        fetch.extract(archive, tmp_path / "out", progress=False)


def test_verify_gzip_detects_truncation(tmp_path):
    data = _tar_gz({"x/1.bin": _payload(50_000)})
    whole, cut = tmp_path / "whole.tar.gz", tmp_path / "cut.tar.gz"
    whole.write_bytes(data)
    cut.write_bytes(data[:-100])
    assert fetch.verify_gzip(whole) > 50_000
    with pytest.raises(DataError, match=r"cut.tar.gz: damaged or incomplete gzip"):
        fetch.verify_gzip(cut)


def _split_archive(tmp_path, split: str, n: int, drop: str | None = None) -> bytes:
    """A tiny official-style archive: <split>/1.png .. n.png + digitStruct.mat."""
    from PIL import Image

    rng = np.random.default_rng(n)
    records = [Record(f"{i}.png", (i % 10, 7), ((1.0, 2.0, 5.0, 9.0), (6.0, 2.0, 5.0, 9.0)))
               for i in range(1, n + 1)]
    mat = tmp_path / f"{split}-digitStruct.mat"
    svhn.write_digitstruct(mat, records)
    members = {f"{split}/digitStruct.mat": mat.read_bytes()}
    for r in records:
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(png, format="PNG")
        if r.file != drop:
            members[f"{split}/{r.file}"] = png.getvalue()
    return _tar_gz(members)


def test_fetch_svhn_end_to_end_and_skips_done_work(server, tmp_path):
    server.files["train.tar.gz"] = _split_archive(tmp_path, "train", 4)
    server.files["test.tar.gz"] = _split_archive(tmp_path, "test", 2)
    root = tmp_path / "svhn"
    counts = {"train": 4, "test": 2}
    out = fetch.fetch_svhn(root, ("train", "test"), base_url=server.url, expected=counts, progress=False)
    assert out == {"train": root / "train", "test": root / "test"}
    train = svhn.read_split(root / "train")
    assert [r.text for r in train.records] == ["17", "27", "37", "47"] and train.problems == []
    assert svhn.load_image(root / "train" / "1.png").shape == (20, 30, 3)
    assert sorted(p.name for p in root.iterdir()) == ["test", "test.tar.gz", "train", "train.tar.gz"]
    n_requests = len(server.log)
    fetch.fetch_svhn(root, ("train", "test"), base_url=server.url, expected=counts, progress=False)
    assert len(server.log) == n_requests  # nothing fetched again


def test_fetch_svhn_refuses_incomplete_archives(server, tmp_path):
    server.files["train.tar.gz"] = _split_archive(tmp_path, "train", 3, drop="2.png")
    with pytest.raises(DataError, match=r"1 of 3 images named in digitStruct.mat are missing, e.g. 2.png"):
        fetch.fetch_svhn(tmp_path / "a", ("train",), base_url=server.url, expected={"train": 3}, progress=False)
    server.files["train.tar.gz"] = _split_archive(tmp_path, "train", 3)
    with pytest.raises(DataError, match=r"3 entries in digitStruct.mat and 3 PNG files, expected 33,402"):
        fetch.fetch_svhn(tmp_path / "b", ("train",), base_url=server.url, progress=False)
    assert not (tmp_path / "b" / "train").exists()  # an unverified split is never put in place
