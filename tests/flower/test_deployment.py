"""Real deployments on loopback: a SuperLink and three SuperNodes with TLS, tiny BERT, tiny CSV.

Each test starts its own SuperLink on a free port and stops every process it started by PID.
On the shared 2-core development machine each took 110-200 s depending on its load: Flower 1.42
starts a fresh ClientApp process (torch, transformers) for every message.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from glora.cli import main
from glora.config import load_config
from glora.flower.launch import LocalFederation, app_folder, run_app
from glora.federation.server import load_state
from glora.sim.experiment import run_experiment
from tests.flower.conftest import checkpoint_history, history


Nodes = tuple[list[dict[str, str]], list[str]]  # the `nodes` fixture


class ProcessWatch(threading.Thread):
    """Records every descendant of this process while active (what the launcher started, and
    what those started: SuperExecs, the ServerApp, ClientApps, ``flwr`` calls)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[int, tuple[psutil.Process, list[str], int]] = {}  # pid -> (p, cmd, ppid)
        self.done = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.is_set():
            for p in me.children(recursive=True):
                # read again every time: a child caught between fork and exec still shows its
                # parent's command line. A zombie's reads empty: keep what it ran.
                with contextlib.suppress(psutil.Error):
                    if cmd := p.cmdline():
                        self.seen[p.pid] = (self.seen.get(p.pid, (p,))[0], cmd, p.ppid())
            time.sleep(0.1)

    def __enter__(self) -> ProcessWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()

    def commands(self, name: str) -> list[list[str]]:
        """Command lines of the processes started as ``name``; a child that exited between fork
        and exec (its parent's command line) is not one."""
        def fork_of_parent(cmd: list[str], ppid: int) -> bool:
            return ppid in self.seen and self.seen[ppid][1] == cmd
        return [cmd for _, cmd, ppid in self.seen.values()
                if any(a.endswith(name) for a in cmd[:2]) and not fork_of_parent(cmd, ppid)]

    def alive(self) -> list[list[str]]:
        def running(p: psutil.Process) -> bool:
            with contextlib.suppress(psutil.Error):
                return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            return False
        return [cmd for p, cmd, _ in self.seen.values() if running(p)]


def kill_when(ready: Callable[[], bool], victims: Callable[[], list[psutil.Process]],
              ) -> threading.Thread:
    """A started thread that SIGKILLs ``victims()`` once ``ready()`` holds."""
    def run() -> None:
        while not ready():
            time.sleep(0.05)
        for p in victims():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


#: Installed by ``sitecustomize`` in every Python process the federation starts: logs
#: ``pid <tab> parent pid <tab> path`` of each file opened whose path holds ``GLORA_WATCH``.
AUDIT_HOOK = """
import os, sys
_log, _watch = os.environ.get("GLORA_OPEN_LOG"), os.environ.get("GLORA_WATCH")
def _hook(event, args):
    if event == "open" and _log and _watch and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if _watch in path:
            with open(_log, "a") as f:
                f.write(f"{os.getpid()}\\t{os.getppid()}\\t{path}\\n")
sys.addaudithook(_hook)
"""


def node_of(pid: int, ppid: int, watch: ProcessWatch) -> int | None:
    """The partition of the SuperNode that ``pid`` descends from (``None``: no SuperNode)."""
    while True:
        cmd = watch.seen[pid][1] if pid in watch.seen else []
        if any(a.endswith("flower-supernode") for a in cmd[:2]):
            config = cmd[cmd.index("--node-config") + 1]
            return int(config.split("partition-id=")[1].split()[0])
        if pid not in watch.seen and ppid not in watch.seen:
            return None
        pid, ppid = ppid, watch.seen[ppid][2] if ppid in watch.seen else -1


def same_rounds(sim: list[dict], fl: list[dict], rel: float = 1e-6) -> None:
    """Equal training records; the nodes' federated evaluation equal to the simulator's."""
    assert [r["round"] for r in fl] == [r["round"] for r in sim]
    for s, f in zip(sim, fl, strict=True):
        for key in ("clients", "bytes_up", "bytes_down", "label"):
            assert f[key] == s[key], key
        assert f["train_loss"] == pytest.approx(s["train_loss"], rel=rel)
        evaluated = [k for k in s if k.startswith("federated_")]
        assert evaluated == [k for k in f if k.startswith("federated_")
                             and k != "federated_clients"]
        for key in evaluated:
            assert f[key] == pytest.approx(s[key], rel=1e-5), key


def test_deployment_matches_simulator(overrides: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`glora run --engine flower` computes the simulator's rounds, each node reading only its
    own partition files and no server process reading any.

    Both run the same tasks through the same ``train_client`` with one torch thread per client,
    and tensors cross the wire byte for byte, so the results agree to the last bit in practice;
    the tolerance (1e-6 relative) only allows for a BLAS kernel choosing another summation order
    in another process. The nodes evaluate the global model from its SVD factors (1e-5).
    """
    # Prepare: the in-process simulator on the same config and seed; an audit hook in every
    # process of the federation logging who opens a node's files
    run_experiment(load_config(None, [*overrides, "eval.federated=true",
                                      f"output_dir={tmp_path / 'sim'}"]), export=False)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(AUDIT_HOOK)
    opened = tmp_path / "opened.tsv"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "hook"))
    monkeypatch.setenv("GLORA_OPEN_LOG", str(opened))
    monkeypatch.setenv("GLORA_WATCH", "/data/client-")
    # Execute
    with ProcessWatch() as watch:
        code = main(["run", "--engine", "flower", *overrides, f"output_dir={tmp_path / 'flower'}"])
    # Assert: the same rounds
    assert code == 0
    sim, fl = history(tmp_path / "sim"), history(tmp_path / "flower")
    assert [(r["missing_clients"], r["attempt"]) for r in fl] == [([], 1), ([], 1)]
    same_rounds(sim, fl)
    assert fl[-1]["federated_clients"] == 3 and "global_accuracy" not in fl[-1]
    a = load_state(tmp_path / "sim/glora/checkpoint.pt").model
    b = load_state(tmp_path / "flower/glora/checkpoint.pt").model
    for x, y in ((a.total_delta(), b.total_delta()), (a.head, b.head)):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(y[k], x[k], rtol=1e-6, atol=1e-7)
    assert (tmp_path / "flower/summary.md").exists()
    assert (tmp_path / "flower/glora/adapter").is_dir()
    # Assert: every node opened its own two files, and nothing opened another node's
    reads = {(node_of(int(pid), int(ppid), watch), Path(path).parent.name, Path(path).name)
             for pid, ppid, path in (line.split("\t") for line in opened.read_text().splitlines())}
    assert reads == {(i, f"client-{i}", f) for i in range(3) for f in ("train.jsonl", "test.jsonl")}
    # Assert: a TLS SuperLink, three TLS SuperNodes (one per partition), all gone now
    (link,) = watch.commands("flower-superlink")
    assert "--ssl-certfile" in link and "--insecure" not in link
    nodes = watch.commands("flower-supernode")
    assert sorted(n[n.index("--node-config") + 1].split(" data-path")[0] for n in nodes) == \
        [f"partition-id={i} num-partitions=3" for i in range(3)]
    assert all("--root-certificates" in n and "--insecure" not in n for n in nodes)
    assert watch.commands("flwr-clientapp") and watch.commands("flwr-serverapp")
    assert watch.alive() == []


def test_lost_node_is_left_out_and_reported(overrides: list[str], nodes: Nodes, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """A SuperNode killed (SIGKILL, with its children) during round 1: both rounds go on with the
    two others after the timeout, the absence is in the records and the log, and the checkpoint
    holds exactly the rounds of the history."""
    # Prepare
    out = tmp_path / "flower"
    run_config = {"overrides": shlex.join([*overrides, *nodes[1], f"output_dir={out}"]),
                  "round-timeout": 50.0}
    with ProcessWatch() as watch, \
            LocalFederation(tmp_path / "fed", num_nodes=3, node_config=nodes[0]) as fed:
        victim = psutil.Process(fed.nodes[2].pid)
        log = tmp_path / "fed" / "supernode-2.log"
        killer = kill_when(lambda: "Receiving: train message" in log.read_text(errors="replace"),
                           lambda: [victim, *victim.children(recursive=True)])
        # Execute
        _, status = run_app(app_folder(tmp_path), fed.address, fed.certificates.ca, run_config,
                            fed.home)
        killer.join(timeout=1)
    # Assert
    assert status == "finished:completed"
    records = history(out)
    assert [(r["round"], r["clients"], r["missing_clients"]) for r in records] == \
        [(1, [0, 1], [2]), (2, [0, 1], [2])]
    assert load_state(out / "glora" / "checkpoint.pt").model.round == 2
    assert checkpoint_history(out) == records
    assert "aggregated without clients [2]" in capfd.readouterr().out
    assert not victim.is_running() and watch.alive() == []


def test_a_killed_server_app_resumes_to_the_uninterrupted_result(overrides: list[str],
                                                                 nodes: Nodes,
                                                                 tmp_path: Path) -> None:
    """The ServerApp killed (SIGKILL) once round 1 is checkpointed: the run fails; the same run
    submitted again with `resume` continues from the checkpoint, rewrites the metrics from it,
    and ends where the simulator ends on the same config."""
    # Prepare: the uninterrupted result
    run_experiment(load_config(None, [*overrides, "eval.federated=true",
                                      f"output_dir={tmp_path / 'sim'}"]), export=False)
    out = tmp_path / "flower"
    run_config = {"overrides": shlex.join([*overrides, *nodes[1], f"output_dir={out}"]),
                  "round-timeout": 50.0}
    with ProcessWatch() as watch, \
            LocalFederation(tmp_path / "fed", num_nodes=3, node_config=nodes[0]) as fed:

        metrics = out / "glora" / "metrics.jsonl"
        killer = kill_when(lambda: metrics.exists() and bool(metrics.read_text().strip()),
                           lambda: [p for p, cmd, _ in list(watch.seen.values())
                                    if any(a.endswith("flwr-serverapp") for a in cmd[:2])])
        # Execute: killed, then resumed
        _, killed = run_app(app_folder(tmp_path), fed.address, fed.certificates.ca, run_config,
                            fed.home)
        killer.join(timeout=5)
        assert killed != "finished:completed"
        assert load_state(out / "glora" / "checkpoint.pt").model.round == 1
        _, status = run_app(app_folder(tmp_path), fed.address, fed.certificates.ca,
                            {**run_config, "resume": True}, fed.home)
    # Assert
    assert status == "finished:completed"
    sim, fl = history(tmp_path / "sim"), history(out)
    assert [r["round"] for r in fl] == [1, 2] and checkpoint_history(out) == fl
    same_rounds(sim, fl)
    assert watch.alive() == []


def test_only_registered_nodes_join(overrides: list[str], nodes: Nodes, tmp_path: Path) -> None:
    """A SuperLink with node authentication, nodes 0 and 1 registered, node 2 not: node 2 is
    refused and exits, and the run completes with the two others."""
    # Prepare
    out = tmp_path / "flower"
    run_config = {"overrides": shlex.join([*overrides, *nodes[1], f"output_dir={out}"]),
                  "round-timeout": 45.0}  # round 1 waits this long for node 2
    with ProcessWatch() as watch, LocalFederation(tmp_path / "fed", num_nodes=3,
                                                  node_config=nodes[0], registered=[0, 1]) as fed:
        # Execute
        _, status = run_app(app_folder(tmp_path), fed.address, fed.certificates.ca, run_config,
                            fed.home)
        exits = [node.poll() for node in fed.nodes]
    # Assert: node 2 was refused and gave up (Flower's exit code 305, "could not establish a
    # connection", process status 1); the registered nodes served the run
    assert status == "finished:completed"
    assert exits == [None, None, 1]
    assert "Exit Code: 305" in (tmp_path / "fed" / "supernode-2.log").read_text(errors="replace")
    assert [(r["clients"], r["missing_clients"]) for r in history(out)] == [([0, 1], [2])] * 2
    (link,) = watch.commands("flower-superlink")
    assert "--enable-supernode-auth" in link
    keyed = watch.commands("flower-supernode")
    assert len(keyed) == 3 and all("--auth-supernode-private-key" in n for n in keyed)
    assert watch.alive() == []
