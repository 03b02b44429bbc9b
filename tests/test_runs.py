"""runs.py: the one atomic writer and the run-folder readers."""

import json

import pytest

from transcribe import runs


def test_atomic_write_takes_text_bytes_or_a_writer_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    runs.atomic_write(target, "first")
    assert target.read_text() == "first"
    runs.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    runs.atomic_write(target, lambda f: f.write(b"third"))
    assert target.read_text() == "third"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "keep.json"
    runs.save_json({"a": 1}, target)

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        runs.atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_read_metrics_names_the_file_and_tolerates_a_row_being_written(tmp_path):
    (tmp_path / runs.METRICS_FILE).write_text(json.dumps({"step": 0}) + "\n" + '{"step": 2, "val')
    assert runs.read_metrics(tmp_path, partial_ok=True) == [{"step": 0}]
    with pytest.raises(ValueError, match="metrics.jsonl: line 2"):
        runs.read_metrics(tmp_path)
    assert runs.read_metrics(tmp_path / "absent", partial_ok=True) == []


def test_read_config_refuses_what_is_not_a_run_configuration(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": {}, "oops": 1}))
    with pytest.raises(ValueError, match="config.json: expected"):
        runs.read_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such config"):
        runs.read_config(tmp_path / "missing.json")
