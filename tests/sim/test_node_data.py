"""A site's own data as a run of one client (what a Flower node reads), and a server without
data: both build the model of the pooled run, and the sites' files hold the simulator's
partitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glora.errors import ConfigError
from glora.federation.prepare import prepare, prepare_node, prepare_server
from glora.tasks import task_for


def test_written_partitions_are_the_simulator_s_clients(tiny_config, tmp_path):
    """Each client's files, read back by `prepare_node`, give the simulator's training tensors
    for that client in the same order, and its test split (the same scores)."""
    # Prepare
    cfg = tiny_config("data.partition=dirichlet", "data.alpha=0.5")
    pooled = prepare(cfg)
    # Execute
    nodes, overrides = task_for(cfg.data.dataset).write_partitions(cfg, tmp_path / "sites")
    # Assert
    assert overrides == ["data.num_labels=2"] and len(nodes) == cfg.data.num_clients
    run = tiny_config("data.partition=dirichlet", "data.alpha=0.5", *overrides)
    for c, node_config in enumerate(nodes):
        node = prepare_node(run, node_config["data-path"], node_config["test-path"])
        assert node.examples == {0: len(pooled.parts[c])}
        for mine, theirs in zip(node.client_train(0), pooled.client_train(c), strict=True):
            assert torch.equal(mine, theirs)
        assert node.test_size(0) == pooled.test_size(c)
        assert node.evaluate({}, {}, "", client=0) == \
            {k.removeprefix("p_"): v for k, v in pooled.evaluate({}, {}, "p_", client=c).items()}
        assert node.model_spec == pooled.model_spec
    written = Path(nodes[0]["data-path"]).read_text().splitlines()
    assert {json.loads(line)["label"] for line in written} <= {0, 1}


def test_a_node_missing_a_class_builds_the_run_s_head_and_metrics(tiny_config, tmp_path):
    """A site whose file has only class 0 still builds the 2-class model the server checks
    replies against, given `data.num_labels`; without it, its model would differ."""
    site = tmp_path / "site.jsonl"
    site.write_text("".join(json.dumps({"text": f"fine film {i}", "label": 0}) + "\n"
                            for i in range(6)))
    cfg = tiny_config("data.num_labels=2")
    node = prepare_node(cfg, str(site))
    assert node.model_spec["num_labels"] == 2 and node.metrics == ("accuracy", "f1")
    assert prepare_node(tiny_config(), str(site)).model_spec["num_labels"] == 1


def test_a_server_without_data_needs_the_number_of_classes(tiny_config):
    with pytest.raises(ConfigError, match="server holds no training data .* `data.num_labels`"):
        prepare_server(tiny_config())
    server = prepare_server(tiny_config("data.num_labels=2"))
    assert server.data is None and server.model_spec == prepare(tiny_config()).model_spec
    with pytest.raises(RuntimeError, match="holds no data"):
        server.client_train(0)
    with pytest.raises(ConfigError, match="has 2 classes but `data.num_labels` is 1"):
        prepare(tiny_config("data.num_labels=1"))
