"""reviews.py: the review queue and its leases, on SQLite and (when installed) PostgreSQL."""

import threading

import pytest

from transcribe import reviews


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return reviews.open_db(reviews.sqlite_url(tmp_path / "r.sqlite"))
    url = request.getfixturevalue("postgres")
    from sqlalchemy import create_engine
    engine = create_engine(url)
    reviews.Base.metadata.drop_all(engine)  # a clean schema for each test
    engine.dispose()
    return reviews.open_db(url)


def queue(db, n: int, accepted: bool = False, share: float = 0.0) -> list[int]:
    ids = []
    for i in range(n):
        row, created = reviews.add_pending(db, f"key-{i}", b"png", "image/png", 10, 8, None)
        assert created
        reviews.record_answer(db, row.id, "12", -0.5, accepted, (0, 0, 10, 8), "v", share)
        ids.append(row.id)
    return ids


def test_a_retried_key_keeps_one_row_and_the_first_answer(db):
    row, created = reviews.add_pending(db, "k", b"a", "image/png", 4, 4, (1, 1, 2, 2))
    again, created_again = reviews.add_pending(db, "k", b"b", "image/png", 4, 4, None)
    assert created and not created_again and again.id == row.id and again.image == b"a"
    assert reviews.pending_ids(db) == [row.id]
    reviews.record_answer(db, row.id, "7", -0.1, True, (0, 0, 4, 4), "v1", 0.0)
    second = reviews.record_answer(db, row.id, "8", -9.0, False, (0, 0, 4, 4), "v2", 0.0)
    assert (second.text, second.status, second.model_version) == ("7", "accepted", "v1")
    assert reviews.pending_ids(db) == [] and reviews.stats(db).photos == 1


def test_two_operators_never_hold_the_same_photo_and_leases_expire(db):
    a_id, b_id = queue(db, 2)
    ann = reviews.take_next(db, "ann", lease_seconds=60, now=1000.0)
    bob = reviews.take_next(db, "bob", lease_seconds=60, now=1001.0)
    assert {ann.id, bob.id} == {a_id, b_id}
    assert reviews.take_next(db, "cid", lease_seconds=60, now=1002.0) is None       # both leased
    assert reviews.take_next(db, "ann", lease_seconds=60, now=1003.0).id == ann.id  # a reload: same photo
    # ann's lease lapses: cid may take the photo, and then ann's late answer is refused
    assert reviews.take_next(db, "cid", lease_seconds=60, now=1061.0).id == ann.id
    with pytest.raises(reviews.LeaseLost):
        reviews.submit(db, ann.id, "ann", "12", now=1062.0)
    reviews.submit(db, ann.id, "cid", "13", now=1063.0)
    reviews.submit(db, bob.id, "bob", "", unreadable=True, now=1064.0)
    with pytest.raises(reviews.LeaseLost):  # reviewed once only
        reviews.submit(db, bob.id, "bob", "12", now=1065.0)
    st = reviews.stats(db)
    assert (st.queue, st.reviewed, st.referred) == (0, 2, 2)
    with pytest.raises(ValueError, match="digits only"):
        reviews.submit(db, a_id, "cid", "12a")


def test_concurrent_operators_claim_distinct_photos(db):
    """8 threads take photos until the queue is empty: each photo is claimed exactly once."""
    ids = queue(db, 24)
    taken: dict[str, list[int]] = {}

    def work(name):
        mine = taken.setdefault(name, [])
        while (row := reviews.take_next(db, name)) is not None:
            mine.append(row.id)
            reviews.submit(db, row.id, name, "1")

    threads = [threading.Thread(target=work, args=(f"op{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [i for mine in taken.values() for i in mine]
    assert sorted(claimed) == ids  # every photo reviewed, none twice


def test_audits_are_a_share_of_accepted_answers_and_accuracy_has_an_interval(db):
    share = 0.25
    ids = queue(db, 40, accepted=True, share=share)
    expected = [i for n, i in enumerate(ids) if reviews.audit_draw(f"key-{n}", share)]
    st = reviews.stats(db)
    assert st.accepted == 40 and st.coverage == 1.0 and st.queue == len(expected) > 0
    for n, _ in enumerate(expected):
        row = reviews.take_next(db, "ann")
        assert row.audit and row.status == "accepted"
        reviews.submit(db, row.id, "ann", "12" if n else "99")  # the first one: the model was wrong
    st = reviews.stats(db)
    assert (st.audits_reviewed, st.audits_correct) == (len(expected), len(expected) - 1)
    low, high = st.audit_interval
    assert low < st.audit_accuracy < high <= 1.0


def test_audit_draw_is_deterministic_with_the_asked_share():
    keys = [f"photo-{i}" for i in range(20_000)]
    drawn = sum(reviews.audit_draw(k, reviews.AUDIT_SHARE) for k in keys)
    assert abs(drawn / len(keys) - reviews.AUDIT_SHARE) < 0.004   # 400 expected, sd 20
    assert [reviews.audit_draw(k, 0.5) for k in keys[:50]] == [reviews.audit_draw(k, 0.5) for k in keys[:50]]
    assert not any(reviews.audit_draw(k, 0.0) for k in keys) and all(reviews.audit_draw(k, 1.0) for k in keys)


def test_wilson_interval_known_values():
    assert reviews.wilson(0, 0) is None
    low, high = reviews.wilson(98, 100)
    assert low == pytest.approx(0.9300, abs=1e-3) and high == pytest.approx(0.9945, abs=1e-3)
    assert reviews.wilson(10, 10)[1] == pytest.approx(1.0) and reviews.wilson(0, 10)[0] == pytest.approx(0.0)
