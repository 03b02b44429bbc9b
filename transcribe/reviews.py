"""The referral database: every photo the service read, and the review queue with leases.

One row per request (`Photo`). The model's answer decides its fate (Goodfellow et al. 2014,
sec. 5: accept when log P(S|X) >= threshold, else refer to a human):
- accepted: answered by the machine; a share of them (`audit`, default 2%) is also queued for
  review, blind to the model's answer, to measure the accuracy of accepted answers live;
- referred: queued for review with the model's guess prefilled;
- pending: stored, model not answered yet (a crash here is recovered at start-up).

Durability: a row is committed before the model runs and again before the client is answered;
`request_key` is unique, so a client that retries after a crash (same Idempotency-Key) gets the
stored answer, never a second row. Leases: `take_next` claims a photo for one operator with a
conditional UPDATE (claimed only if still free or its lease expired), which is atomic on SQLite
and on PostgreSQL alike, so two operators never hold the same photo at once.

SQLAlchemy 2; SQLite in WAL mode by default (any URL works, e.g. postgresql+psycopg://...).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, Float, Integer, LargeBinary, String, create_engine, event, func,
                        select, update)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

AUDIT_SHARE = 0.02       # share of accepted answers also sent to (blind) review: 1 in 50
LEASE_SECONDS = 300.0    # an operator holds a photo this long; then another operator may take it
Z_95 = 1.959964          # two-sided 95% normal quantile, for the Wilson interval
MAX_TEXT = 8             # longest review answer stored (SVHN numbers have at most 5 digits)


class Base(DeclarativeBase):
    pass


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_key: Mapped[str] = mapped_column(String(200), unique=True)     # Idempotency-Key (or a uuid)
    created_at: Mapped[float] = mapped_column(Float)                       # Unix seconds
    image: Mapped[bytes] = mapped_column(LargeBinary)                      # the upload as sent
    media_type: Mapped[str] = mapped_column(String(32))                    # image/png, image/jpeg, ...
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    box: Mapped[Any] = mapped_column(JSON, nullable=True)                  # the number's box sent, [l, t, w, h]
    crop_box: Mapped[Any] = mapped_column(JSON, nullable=True)             # the box the model read
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    text: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)   # the model's number
    log_prob: Mapped[float | None] = mapped_column(Float, nullable=True)        # log P(S|X)
    model_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)       # why the model gave no answer
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    audit: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    review_text: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)  # '' = no number
    unreadable: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reviewed_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"


def db_url(value: str | None, run=None) -> str:
    """A database URL; a plain path is an SQLite file; by default RUN/reviews.sqlite."""
    if value is None:
        return sqlite_url(Path(run) / "reviews.sqlite")
    return value if "://" in value else sqlite_url(value)


def open_db(url: str, must_exist: bool = False) -> sessionmaker:
    """A session factory on `url`, tables created if missing. SQLite: WAL journal (readers never
    block the writer; a killed process loses nothing committed), 30 s busy timeout.
    must_exist: an SQLite file that does not exist is an error (readers: labels export)."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite and must_exist and not Path(url.split("///", 1)[-1]).is_file():
        raise FileNotFoundError(f"{url.split('///', 1)[-1]}: no such database (`transcribe serve RUN` keeps its "
                                f"reviews in RUN/reviews.sqlite unless given --db)")
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False} if is_sqlite else {},
                           pool_pre_ping=not is_sqlite)
    if is_sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
            cur.close()
    try:
        Base.metadata.create_all(engine)
    except OperationalError as err:  # no such folder, server down, wrong password: one line
        raise ValueError(f"{engine.url.render_as_string(hide_password=True)}: cannot open the database "
                         f"({str(err.orig).strip().splitlines()[0]})") from None
    return sessionmaker(engine, expire_on_commit=False)


def audit_draw(request_key: str, share: float) -> bool:
    """Whether an accepted photo goes to audit: a fixed pseudo-random function of its key, so a
    retried request gets the same draw and the share is exact in expectation."""
    digest = hashlib.sha256(b"audit:" + request_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


# ---------------------------------------------------------------- the answer path

def find(db: sessionmaker, request_key: str) -> Photo | None:
    with db() as s:
        return s.scalar(select(Photo).where(Photo.request_key == request_key))


def add_pending(db: sessionmaker, request_key: str, image: bytes, media_type: str, width: int, height: int,
                box) -> tuple[Photo, bool]:
    """(row, created): the stored row for this key, inserted and committed if new."""
    with db() as s:
        row = Photo(request_key=request_key, created_at=time.time(), image=image, media_type=media_type,
                    width=width, height=height, box=list(box) if box is not None else None, status="pending")
        s.add(row)
        try:
            s.commit()
            return row, True
        except IntegrityError:  # the same key arrived twice (a retry): keep the first
            s.rollback()
    existing = find(db, request_key)
    assert existing is not None
    return existing, False


def record_answer(db: sessionmaker, photo_id: int, text: str, log_prob: float, accepted: bool, crop_box,
                  model_version: str, audit_share: float) -> Photo:
    """Store the model's answer and the decision; referred (and audited accepted) photos join the queue."""
    with db() as s:
        row = s.get(Photo, photo_id)
        if row.status != "pending":   # answered already (a concurrent retry): the first answer stands
            return row
        row.text, row.log_prob, row.model_version = text, log_prob, model_version
        row.crop_box = [round(float(v), 2) for v in crop_box]
        row.status = "accepted" if accepted else "referred"
        row.audit = accepted and audit_draw(row.request_key, audit_share)
        row.needs_review = (not accepted) or row.audit
        row.error = None
        s.commit()
        return row


def record_failure(db: sessionmaker, photo_id: int, error: str) -> Photo:
    """The model gave no answer (timeout, failure): the photo is referred to a person, never dropped."""
    with db() as s:
        row = s.get(Photo, photo_id)
        if row.status == "pending":
            row.status, row.needs_review, row.error = "referred", True, error[:500]
            s.commit()
        return row


def pending_ids(db: sessionmaker) -> list[int]:
    with db() as s:
        return list(s.scalars(select(Photo.id).where(Photo.status == "pending").order_by(Photo.id)))


def load(db: sessionmaker, photo_id: int) -> Photo | None:
    with db() as s:
        return s.get(Photo, photo_id)


# ---------------------------------------------------------------- the review queue

def _open_queue():
    return (Photo.needs_review.is_(True)) & Photo.reviewed_at.is_(None)


def take_next(db: sessionmaker, operator: str, lease_seconds: float = LEASE_SECONDS,
              now: float | None = None) -> Photo | None:
    """The photo `operator` should review now, leased to them; None when the queue is empty.

    An operator who already holds an unexpired lease gets that photo again (a reload does not
    skip it). Otherwise the oldest free photo is claimed by a conditional UPDATE that succeeds
    only if the photo is still free, so concurrent operators never share a photo.
    """
    now = time.time() if now is None else now
    with db() as s:
        held = s.scalar(select(Photo).where(_open_queue(), Photo.lease_owner == operator,
                                            Photo.lease_until > now).order_by(Photo.id).limit(1))
        if held is not None:
            return held
        free = _open_queue() & (Photo.lease_until.is_(None) | (Photo.lease_until <= now))
        for _ in range(20):  # lost races retry with the next candidate
            candidate = s.scalar(select(Photo.id).where(free).order_by(Photo.id).limit(1))
            if candidate is None:
                return None
            claimed = s.execute(update(Photo).where(Photo.id == candidate, free)
                                .values(lease_owner=operator, lease_until=now + lease_seconds))
            s.commit()
            if claimed.rowcount == 1:
                return s.get(Photo, candidate, populate_existing=True)
        return None


class LeaseLost(Exception):
    """The photo is no longer leased to this operator (expired and taken, or already reviewed)."""


def submit(db: sessionmaker, photo_id: int, operator: str, text: str | None, unreadable: bool = False,
           now: float | None = None) -> None:
    """Record a review. `text` is the digits read ('' = no number); unreadable=True: cannot tell.
    Accepted only from the operator who holds the lease (even if it lapsed, as long as nobody
    else took the photo since)."""
    now = time.time() if now is None else now
    if not unreadable and (text is None or (text != "" and not text.isdigit()) or len(text) > MAX_TEXT):
        raise ValueError(f"a review is digits only (at most {MAX_TEXT}), got {text!r}")
    with db() as s:
        done = s.execute(update(Photo).where(Photo.id == photo_id, _open_queue(), Photo.lease_owner == operator)
                         .values(review_text=None if unreadable else text, unreadable=unreadable,
                                 reviewer=operator, reviewed_at=now, lease_owner=None, lease_until=None))
        s.commit()
        if done.rowcount != 1:
            raise LeaseLost(f"photo {photo_id} is not leased to {operator!r} (lease expired and taken, or reviewed)")


# ---------------------------------------------------------------- live figures

def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (95% by default); None when n = 0."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Stats:
    photos: int            # every request recorded
    accepted: int
    referred: int
    pending: int
    queue: int             # waiting for review (referred + audits), leased or not
    reviewed: int
    audits_reviewed: int   # accepted answers checked blind by a person
    audits_correct: int

    @property
    def coverage(self) -> float | None:
        """Share of answered photos the machine answered itself."""
        decided = self.accepted + self.referred
        return self.accepted / decided if decided else None

    @property
    def audit_accuracy(self) -> float | None:
        return self.audits_correct / self.audits_reviewed if self.audits_reviewed else None

    @property
    def audit_interval(self) -> tuple[float, float] | None:
        return wilson(self.audits_correct, self.audits_reviewed)


def stats(db: sessionmaker) -> Stats:
    with db() as s:
        by_status = dict(s.execute(select(Photo.status, func.count()).group_by(Photo.status)).all())
        queue = s.scalar(select(func.count()).where(_open_queue()))
        reviewed = s.scalar(select(func.count()).where(Photo.reviewed_at.is_not(None)))
        audited = select(func.count()).where(Photo.audit.is_(True), Photo.reviewed_at.is_not(None))
        audits = s.scalar(audited)
        # correct: the person read the same number (an unreadable verdict counts as wrong)
        correct = s.scalar(audited.where(Photo.unreadable.is_(False), Photo.review_text == Photo.text))
    return Stats(photos=sum(by_status.values()), accepted=by_status.get("accepted", 0),
                 referred=by_status.get("referred", 0), pending=by_status.get("pending", 0),
                 queue=queue, reviewed=reviewed, audits_reviewed=audits, audits_correct=correct)


def reviewed(db: sessionmaker) -> list[Photo]:
    """Every reviewed photo, oldest first (labels export, threshold re-choice)."""
    with db() as s:
        return list(s.scalars(select(Photo).where(Photo.reviewed_at.is_not(None)).order_by(Photo.id)))
