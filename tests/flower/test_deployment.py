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


def test_deployment_matches_simulator(overrides: list[str], tmp_path: Path) -> None:
    """`glora run --engine flower` computes the simulator's rounds.

    Both run the same tasks through the same ``train_client`` with one torch thread per client,
    and tensors cross the wire byte for byte, so the results agree to the last bit in practice;
    the tolerance (1e-6 relative) only allows for a BLAS kernel choosing another summation order
    in another process (the ServerApp evaluates with the machine's default thread count).
    """
    # Prepare: the in-process simulator on the same config and seed
    run_experiment(load_config(None, [*overrides, f"output_dir={tmp_path / 'sim'}"]), export=False)
    # Execute
    with ProcessWatch() as watch:
        code = main(["run", "--engine", "flower", *overrides, f"output_dir={tmp_path / 'flower'}"])
    # Assert: the same rounds
    assert code == 0
    sim, fl = history(tmp_path / "sim"), history(tmp_path / "flower")
    assert [r["round"] for r in fl] == [1, 2]
    for s, f in zip(sim, fl, strict=True):
        assert f["missing_clients"] == [] and f["attempt"] == 1
        for key in ("clients", "bytes_up", "bytes_down", "label"):
            assert f[key] == s[key], key
        for key in [k for k in s if k == "train_loss" or k.startswith("global_")]:
            assert f[key] == pytest.approx(s[key], rel=1e-6), key
    a = load_state(tmp_path / "sim/glora/checkpoint.pt").model
    b = load_state(tmp_path / "flower/glora/checkpoint.pt").model
    for x, y in ((a.total_delta(), b.total_delta()), (a.head, b.head)):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(y[k], x[k], rtol=1e-6, atol=1e-7)
    assert (tmp_path / "flower/summary.md").exists()
    assert (tmp_path / "flower/glora/adapter").is_dir()
    # Assert: a TLS SuperLink, three TLS SuperNodes (one per partition), all gone now
    (link,) = watch.commands("flower-superlink")
    assert "--ssl-certfile" in link and "--insecure" not in link
    nodes = watch.commands("flower-supernode")
    assert sorted(n[n.index("--node-config") + 1] for n in nodes) == \
        [f"partition-id={i} num-partitions=3" for i in range(3)]
    assert all("--root-certificates" in n and "--insecure" not in n for n in nodes)
    assert watch.commands("flwr-clientapp") and watch.commands("flwr-serverapp")
    assert watch.alive() == []


def test_lost_node_is_left_out_and_reported(overrides: list[str], tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """A SuperNode killed (SIGKILL, with its children) during round 1: both rounds go on with the
    two others after the timeout, the absence is in the records and the log, and the checkpoint
    holds exactly the rounds of the history."""
    # Prepare
    out = tmp_path / "flower"
    run_config = {"overrides": shlex.join([*overrides, f"output_dir={out}"]),
                  "round-timeout": 50.0}
    with ProcessWatch() as watch, LocalFederation(tmp_path / "fed", num_nodes=3) as fed:
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
                                                                 tmp_path: Path) -> None:
    """The ServerApp killed (SIGKILL) once round 1 is checkpointed: the run fails; the same run
    submitted again with `resume` continues from the checkpoint, rewrites the metrics from it,
    and ends where the simulator ends on the same config."""
    # Prepare: the uninterrupted result
    run_experiment(load_config(None, [*overrides, f"output_dir={tmp_path / 'sim'}"]), export=False)
    out = tmp_path / "flower"
    run_config = {"overrides": shlex.join([*overrides, f"output_dir={out}"]), "round-timeout": 50.0}
    with ProcessWatch() as watch, LocalFederation(tmp_path / "fed", num_nodes=3) as fed:

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
    for s, f in zip(sim, fl, strict=True):
        assert f["clients"] == s["clients"]
        for key in [k for k in s if k == "train_loss" or k.startswith("global_")]:
            assert f[key] == pytest.approx(s[key], rel=1e-6), key
    assert watch.alive() == []
