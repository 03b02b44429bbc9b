"""A throwaway PostgreSQL server for the queue tests: Debian's `postgresql` package, started in a
temp folder on a free port, trust auth on 127.0.0.1 only. Skips with a reason when absent."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{folder}/initdb", os.X_OK) and os.access(f"{folder}/pg_ctl", os.X_OK):
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def start_postgres():
    """Yields a SQLAlchemy URL of a fresh PostgreSQL server; stops and deletes it afterwards."""
    folder = _bin()
    if folder is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)")
    pytest.importorskip("psycopg", reason="the psycopg driver is missing (pip install -e '.[dev]')")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="transcribe-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root: run it as the package's postgres user
        import pwd
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    try:
        subprocess.run(prefix + [str(folder / "initdb"), "-D", str(data), "-U", "test", "--auth=trust",
                                 "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run(prefix + [str(folder / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                                 "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log = (root / "log").read_text()[-2000:] if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        stderr = getattr(err, "stderr", b"") or b""
        pytest.fail(f"PostgreSQL did not start: {err}\n{stderr.decode(errors='replace')}\n{log}")
    try:
        yield f"postgresql+psycopg://test@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
