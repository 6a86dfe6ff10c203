"""Natural Instructions loaders, seen/unseen task splits, per-task caps, the pip refusal."""

from __future__ import annotations

import json

import pytest

from glora.data import natural_instructions as ni
from glora.data.partition import by_task
from glora.errors import ConfigError, GloraError


def test_bigbench_task_file_gives_instruction_input_and_all_references(tiny_tasks_dir):
    ex = ni.load_task_file(tiny_tasks_dir / "subtask001_toy" / "task.json")
    assert len(ex) == 10
    assert ex[0].task == "subtask001_toy" and ex[0].instruction == "copy the word 1"
    assert ex[0].outputs == (ex[0].input,)
    assert ex[1].outputs == (ex[1].input, "answer")  # a list of references is kept whole


def test_superni_task_file(tmp_path):
    path = tmp_path / "task100_demo.json"
    path.write_text(json.dumps({"Definition": ["Say yes.", "Always."], "Instances": [
        {"id": "a", "input": "x", "output": ["yes", "yes!"]}, {"input": "y", "output": "yes"}]}))
    ex = ni.load_task_file(path)
    assert [e.outputs for e in ex] == [("yes", "yes!"), ("yes",)]
    assert ex[0].task == "task100_demo" and ex[0].instruction == "Say yes. Always."
    assert ni.task_files(tmp_path) == [path]


def test_bad_task_file_is_named(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"Definition": "d"}))
    with pytest.raises(ConfigError, match="Instances"):
        ni.load_superni_task(path)


def test_task_split_is_seeded_disjoint_and_sized():
    names = [f"t{i:02d}" for i in range(61)]
    seen, unseen = ni.split_tasks(names, 0.2, seed=3)
    assert len(unseen) == 12 and not set(seen) & set(unseen) and len(seen) + len(unseen) == 61
    assert ni.split_tasks(names, 0.2, seed=3) == (seen, unseen)
    assert ni.split_tasks(names, 0.2, seed=4) != (seen, unseen)
    assert len(ni.split_tasks(names, 5, seed=0)[1]) == 5
    with pytest.raises(ConfigError, match="none to train"):
        ni.split_tasks(names[:3], 3, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unseen_tasks_never_reach_training_or_a_client(tiny_tasks_dir, seed):
    s = ni.load_natural_instructions(tiny_tasks_dir, unseen=2, train_per_task=4, test_per_task=3,
                                     seed=seed)
    assert len(s.unseen_tasks) == 2 and set(s.seen_tasks) | set(s.unseen_tasks) == \
        {f"subtask00{k}_toy" for k in range(6)}
    assert not set(s.train.tasks) & set(s.unseen_tasks)
    assert set(s.test_unseen.tasks) == set(s.unseen_tasks)
    assert set(s.test_seen.tasks) == set(s.seen_tasks)
    # the cap holds, and held-out examples of seen tasks are never trained on
    assert all(s.train.tasks.count(t) == 4 for t in s.seen_tasks)
    assert not set(s.train.examples) & set(s.test_seen.examples)
    for part in by_task(s.train.tasks, 3, seed):
        assert part and not {s.train.tasks[i] for i in part} & set(s.unseen_tasks)


def test_cap_per_task_keeps_small_tasks_whole():
    ex = [ni.InstructionExample(t, "i", str(j), ("o",)) for t, n in (("a", 5), ("b", 2))
          for j in range(n)]
    kept = ni.cap_examples(ex, 3, seed=0)
    assert [e.task for e in kept].count("a") == 3 and [e.task for e in kept].count("b") == 2
    assert ni.cap_examples(ex, None, seed=0) == ex


def test_pip_refusal_says_use_old_pip(monkeypatch):
    def refuse(name, version):
        raise GloraError("Could not download ... pip exited with status 1.")

    monkeypatch.setattr(ni, "fetch_sdist", refuse)
    monkeypatch.setattr(ni, "_pip_version", lambda: "25.1")
    with pytest.raises(GloraError, match=r"pip 25\.1.*pip<24"):
        ni.fetch_bigbench_archive()


def test_archive_members_are_found_by_streaming(tmp_path):
    import io
    import tarfile

    archive = tmp_path / "bigbench-1.0.0.tar.gz"
    root = "bigbench-1.0.0/bigbench/benchmark_tasks/natural_instructions/"
    with tarfile.open(archive, "w:gz") as tar:
        for name in (root + "task.json", root + "subtask001_a/task.json",
                     root + "subtask002_b/task.json", "bigbench-1.0.0/other/task.json"):
            data = json.dumps({"name": name, "examples": [{"input": "x", "target": "y"}]}).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    files = ni.extract_task_files(archive, tmp_path / "out")
    assert [f.parent.name for f in files] == ["subtask001_a", "subtask002_b"]
    assert ni.extract_task_files(tmp_path / "missing.tar.gz", tmp_path / "out") == files  # cached
