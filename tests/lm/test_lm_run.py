"""The instruction-tuning path through the config and the simulator, on the tiny Llama."""

from __future__ import annotations

import pytest

from glora.config import load_config
from glora.errors import ConfigError


def lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, *extra):
    return load_config(None, [
        f"data.dataset=natural_instructions:{tiny_tasks_dir}", "data.partition=task",
        "data.num_clients=2", "data.max_length=24",
        "data.options={unseen: 2, train_per_task: 6, test_per_task: 2, max_new_tokens: 3}",
        f"model.name={tiny_lm_dir}", "model.target_modules=[q_proj,v_proj]",
        "lora.ranks=[2,4]", "train.rounds=2", "train.local_steps=2", "train.batch_size=2",
        "train.lr=0.01", "eval.every=1", "eval.batch_size=4", "workers=1",
        f"output_dir={tmp_path / 'run'}", *extra])


def test_prepare_dispatches_to_the_lm_path(tiny_lm_dir, tiny_tasks_dir, tmp_path):
    from glora.federation.prepare import prepare
    from glora.tasks.causal_lm import InstructionData

    prep = prepare(lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "methods=[fedit]"))
    data = prep.data
    assert isinstance(data, InstructionData) and prep.model_spec["task"] == "causal_lm"
    assert prep.cache.task.name == "causal_lm" and prep.cache.head_init == {}
    unseen = set(data.unseen.tasks)
    assert len(unseen) == 2 and not unseen & set(data.seen.tasks)
    assert not unseen & {t for tasks in data.client_tasks for t in tasks}
    assert sum(len(p) for p in prep.parts) == len(data.train[0]) == 4 * 6
    scores = prep.evaluate({}, {}, "global_")
    assert set(scores) == {"global_rougeL", "global_rougeL_unseen"}
    assert set(prep.evaluate({}, {}, "p_", client=0)) == {"p_rougeL"}


def test_unknown_lm_option_and_wrong_partition_are_named(tiny_lm_dir, tiny_tasks_dir, tmp_path):
    from glora.federation.prepare import prepare

    cfg = lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "data.options={unsen: 2}")
    with pytest.raises(ConfigError, match="unsen"):
        prepare(cfg)
    cfg = lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "data.partition=iid")
    with pytest.raises(ConfigError, match="partition: task"):
        prepare(cfg)


def test_federated_run_end_to_end(tiny_lm_dir, tiny_tasks_dir, tmp_path):
    from glora.sim.experiment import run_experiment

    cfg = lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "methods=[glora,fedit,flexlora]")
    rows = run_experiment(cfg)
    assert [r["method"].split()[0] for r in rows] == ["glora", "fedit", "flexlora"]
    for r in rows:
        assert r["rounds"] == 2 and 0 <= r["global_rougeL"] <= 1
        assert 0 <= r["global_rougeL_unseen"] <= 1
    assert (tmp_path / "run" / "glora" / "adapter" / "adapter_config.json").is_file()


def test_shipped_superni_config_is_valid():
    from pathlib import Path

    from glora.tasks.causal_lm import LM_OPTIONS, is_lm_dataset

    cfg = load_config(Path(__file__).parents[2] / "configs" / "superni_scaled.yaml")
    assert is_lm_dataset(cfg.data.dataset) and cfg.data.partition == "task"
    assert set(cfg.data.options) <= set(LM_OPTIONS)
    assert {"glora", "fedit", "flora", "flexlora"} <= set(cfg.methods)
    assert len(set(cfg.lora.ranks)) > 1


def test_a_site_reads_its_own_task_folder_as_one_client(tiny_lm_dir, tiny_tasks_dir, tmp_path):
    """A Flower node's data: its own Natural Instructions folder, as one client holding every
    seen task of it; the server's data-free model spec is the one the node builds."""
    from glora.federation.prepare import prepare_node, prepare_server

    cfg = lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "methods=[fedit]")
    node = prepare_node(cfg, f"natural_instructions:{tiny_tasks_dir}")
    assert node.parts == [list(range(4 * 6))] and node.test_size(0) == 4 * 2
    assert set(node.evaluate({}, {}, "", client=0)) == {"rougeL"}
    server = prepare_server(cfg)
    assert server.data is None and (server.model_spec, server.metrics) == \
        (node.model_spec, node.metrics)
    with pytest.raises(ConfigError, match="is not data of the run's task 'causal_lm'"):
        prepare_node(cfg, str(tmp_path / "site.csv"))


def test_written_task_folders_give_each_node_the_simulator_s_examples(tiny_lm_dir, tiny_tasks_dir,
                                                                      tmp_path):
    """The local launcher's LM partitions: each node's folder, read with the run's options (and
    `unseen: 0`), gives that client's training examples and seen-task test examples."""
    from glora.federation.prepare import prepare, prepare_node
    from glora.tasks import task_for

    cfg = lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "methods=[fedit]")
    pooled = prepare(cfg)
    nodes, overrides = task_for(cfg.data.dataset).write_partitions(cfg, tmp_path / "sites")
    run = lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "methods=[fedit]", *overrides)
    assert run.data.options["unseen"] == 0 and run.data.options["train_per_task"] == 6
    for c, node_config in enumerate(nodes):
        node = prepare_node(run, node_config["data-path"])
        assert node.data.client_tasks == [pooled.data.client_tasks[c]]
        rows = lambda data: sorted(map(tuple, data[0].tolist()))  # noqa: E731
        assert rows(node.client_train(0)) == rows(pooled.client_train(c))
        assert node.test_size(0) == pooled.test_size(c)
