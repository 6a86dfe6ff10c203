"""Atomic writes: concurrent writers of one file and a failing writer leave a whole file."""

import threading

import pytest

from glora.atomic import atomic_file, write_atomic


def test_concurrent_writers_leave_one_whole_file_and_no_temporaries(tmp_path):
    path = tmp_path / "data.bin"
    payloads = [bytes([k]) * 4_000_000 for k in range(6)]
    start = threading.Barrier(len(payloads))

    def writer(data: bytes) -> None:
        start.wait()
        write_atomic(path, data)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in payloads  # one writer's bytes, whole
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / "log.txt"
    write_atomic(path, "old ✓")
    with pytest.raises(RuntimeError), atomic_file(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text(encoding="utf-8") == "old ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]
