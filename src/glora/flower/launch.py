"""``glora run --engine flower``: Flower processes on this machine, and ``flwr run`` of the app.

:class:`LocalFederation` starts a SuperLink and one SuperNode per client on loopback, with TLS
from a throwaway CA; :func:`run_app` submits the glora app to a SuperLink (that one, or an
existing one given its address), streams its log and returns how the run ended. Runtime
dependency installation, telemetry and update checks are off in every process started here, and
every process is stopped when the run ends, also after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import tomli_w

from glora.config import ExperimentConfig
from glora.errors import GloraError
from glora.flower.tls import Certificates, make_certificates
from glora.tasks import task_for

#: Environment of every Flower process and ``flwr`` call started here.
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
              "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
CONNECTION = "glora"  # name of the SuperLink connection in the private FLWR_HOME


def flower_env(home: Path) -> dict[str, str]:
    """This environment plus :data:`FLOWER_ENV`, ``FLWR_HOME`` and this Python's scripts first
    on ``PATH`` (SuperLink and SuperNode start ``flower-superexec`` and the apps by name)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home), "PATH": path}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1 (TLS), stopped on exit.

    SuperNode ``i`` gets ``--node-config "partition-id=i num-partitions=num_nodes"`` and then
    ``node_config[i]``, where given (``data-path`` and ``test-path``, the files it alone reads).
    With ``registered``, the SuperLink admits only authenticated SuperNodes
    (``--enable-supernode-auth``): every node gets an ECDSA key pair under ``workdir/keys``, and
    only the keys of the nodes listed are registered (``flwr supernode register``), so the others
    are refused. Processes run in sessions of their own (Ctrl-C reaches only this process, which
    then stops them), with logs in ``workdir``; nodes sharing this machine get ``OMP_NUM_THREADS =
    cores // num_nodes`` (at least 1), like the simulator's worker processes.

    >>> with LocalFederation(Path("/tmp/fl"), num_nodes=3) as fed:
    ...     run_app(app_dir, fed.address, fed.certificates.ca, run_config={}, home=fed.home)
    """

    def __init__(self, workdir: Path, num_nodes: int, start_timeout: float = 60.0,
                 node_config: Sequence[dict[str, str]] | None = None,
                 registered: Sequence[int] | None = None) -> None:
        if num_nodes < 1:
            raise ValueError(f"`num_nodes` must be at least 1, got {num_nodes}.")
        if node_config is not None and len(node_config) != num_nodes:
            raise ValueError(f"{len(node_config)} node configs for {num_nodes} nodes.")
        self.workdir, self.num_nodes, self.start_timeout = Path(workdir), num_nodes, start_timeout
        self.node_config = [" ".join(f'{k}="{v}"' for k, v in c.items())
                            for c in node_config or [{}] * num_nodes]
        self.registered = None if registered is None else sorted(registered)
        self.home = self.workdir / "flwr-home"
        self.link: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.port = 0
        self._old_sigterm: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        return ([self.link] if self.link else []) + self.nodes

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str],
               ) -> subprocess.Popen[bytes]:
        with open(self.workdir / log_name, "wb") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.workdir, start_new_session=True)

    def __enter__(self) -> LocalFederation:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.certificates: Certificates = make_certificates(self.workdir / "certs")
        env = flower_env(self.home)
        self.port = free_port()
        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except ValueError:  # not the main thread: the caller handles signals
            self._old_sigterm = None
        try:
            self.link = self._spawn(
                ["flower-superlink", "--port", str(self.port),
                 "--ssl-ca-certfile", str(self.certificates.ca),
                 "--ssl-certfile", str(self.certificates.cert),
                 "--ssl-keyfile", str(self.certificates.key),
                 "--disable-runtime-dependency-installation",
                 *([] if self.registered is None else ["--enable-supernode-auth"])],
                "superlink.log", env)
            self._wait_for_port(self.link, "superlink.log")
            keys = self._register_keys()
            threads = str(max(1, (os.cpu_count() or 1) // self.num_nodes))
            node_env = {**env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            for i in range(self.num_nodes):
                self.nodes.append(self._spawn(
                    ["flower-supernode", "--superlink", self.address,
                     "--root-certificates", str(self.certificates.ca), "--port", str(free_port()),
                     *(["--auth-supernode-private-key", str(keys[i])] if keys else []),
                     "--node-config", f"partition-id={i} num-partitions={self.num_nodes} "
                     f"{self.node_config[i]}".strip()],
                    f"supernode-{i}.log", node_env))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _register_keys(self) -> list[Path]:
        """Each node's private key file, with the ``registered`` nodes' public keys registered
        on the SuperLink; none without ``registered``."""
        if self.registered is None:
            return []
        folder = self.workdir / "keys"
        folder.mkdir(exist_ok=True)
        connect(self.home, self.address, self.certificates.ca)
        keys = []
        for i in range(self.num_nodes):
            private, public = node_key_pair()
            keys.append(folder / f"node{i}")
            keys[-1].write_bytes(private)
            keys[-1].chmod(0o600)
            keys[-1].with_suffix(".pub").write_bytes(public)
            if i in self.registered:
                _json(_flwr(["supernode", "register", str(keys[-1].with_suffix(".pub")),
                             CONNECTION, "--format", "json"], self.home), "supernode register")
        return keys

    def _wait_for_port(self, proc: subprocess.Popen[bytes], log_name: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise GloraError(f"the SuperLink exited with code {proc.returncode}:\n"
                                 + log_tail(self.workdir / log_name))
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise GloraError(f"the SuperLink did not listen on {self.address} within "
                         f"{self.start_timeout:.0f} s:\n" + log_tail(self.workdir / log_name))

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process started here and all their descendants, SIGKILL what is left
        after ``grace`` seconds. Descendants count: Flower starts its SuperExec and the apps in
        sessions of their own, out of reach of a process-group signal. So does a SuperExec
        whose SuperNode already exited (a refused node's keeps retrying): it names its node
        with ``--parent-pid``."""
        import psutil

        procs = self.processes
        tree = []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.pid)
                tree += [parent, *parent.children(recursive=True)]
        ours = {str(proc.pid) for proc in procs}
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            node = cmd[cmd.index("--parent-pid") + 1:][:1] if "--parent-pid" in cmd else []
            if node and node[0] in ours and p not in tree:
                tree.append(p)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=grace)
        for proc in procs:
            proc.wait()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through LocalFederation.__exit__


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if missing)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _flwr(args: list[str], home: Path, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["flwr", *args], env=flower_env(home), text=True,
                          capture_output=capture, check=False)


def _json(done: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    try:
        out = json.loads(done.stdout)
    except json.JSONDecodeError:
        out = {"success": False}
    if done.returncode != 0 or not out.get("success"):
        raise GloraError(f"`flwr {what}` failed (exit {done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return out


def node_key_pair() -> tuple[bytes, bytes]:
    """A SuperNode's authentication key pair: ECDSA P-384, private and public key in OpenSSH
    format (what ``ssh-keygen -t ecdsa -b 384`` writes)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    return private, key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)


def connect(home: Path, superlink: str, root_certificates: Path | None,
            insecure: bool = False) -> None:
    """``home/config.toml``: the ``glora`` connection to ``superlink`` that ``flwr`` calls with
    ``FLWR_HOME=home`` use."""
    home.mkdir(parents=True, exist_ok=True)
    connection: dict[str, Any] = {"address": superlink}
    if insecure:
        connection["insecure"] = True
    elif root_certificates is not None:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    (home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": CONNECTION, CONNECTION: connection}}))


def run_app(app_dir: Path, superlink: str, root_certificates: Path | None,
            run_config: dict[str, Any], home: Path, insecure: bool = False) -> tuple[int, str]:
    """``flwr run`` the app in ``app_dir`` on ``superlink``; stream its log until it ends.

    ``home`` becomes ``FLWR_HOME`` of the ``flwr`` calls (a private connection config, so the
    user's ``~/.flwr`` is left alone). Ctrl-C (or SIGTERM, inside :class:`LocalFederation`)
    stops the run on the SuperLink.

    Returns:
        ``(run id, status)``, the status as ``flwr ls`` gives it (``finished:completed`` on
        success).
    """
    connect(home, superlink, root_certificates, insecure)
    overrides = home / "run_config.toml"
    overrides.write_text(tomli_w.dumps(run_config))
    started = _json(_flwr(["run", str(app_dir), CONNECTION, "--run-config", str(overrides),
                           "--format", "json"], home), "run")
    run_id = int(started["run-id"])
    try:
        _flwr(["log", str(run_id), CONNECTION, "--stream"], home, capture=False)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: the run stops too
        _flwr(["stop", str(run_id), CONNECTION], home)
        raise
    runs = _json(_flwr(["ls", "--run-id", str(run_id), CONNECTION, "--format", "json"], home), "ls")
    return run_id, str(runs["runs"][0]["status"])


def app_folder(folder: Path) -> Path:
    """A Flower app folder with what the app's bundle holds: this checkout's ``pyproject.toml``
    (which declares the app) and ``configs/``.

    ``flwr run .`` in the checkout works too, but bundling walks every file there (``.venv``
    included: about 20 s); the apps import the installed glora package either way.
    """
    root = Path(__file__).resolve().parents[3]
    if "[tool.flwr.app]" not in _read(root / "pyproject.toml"):
        raise GloraError("cannot find the glora Flower app (pyproject.toml with [tool.flwr.app]); "
                         "run from a source checkout installed with `pip install -e .`.")
    app = folder / "glora-app"
    shutil.copytree(root / "configs", app / "configs", dirs_exist_ok=True)
    shutil.copyfile(root / "pyproject.toml", app / "pyproject.toml")
    return app


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def node_files(cfg: ExperimentConfig, folder: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Write each client's partition under ``folder/client-<i>/`` (readable by its owner only)
    and return each node's ``data-path``/``test-path`` node config and the overrides a server
    without data needs (see :meth:`glora.tasks.base.Task.write_partitions`)."""
    nodes, overrides = task_for(cfg.data.dataset).write_partitions(cfg, folder)
    for i in range(len(nodes)):
        (folder / f"client-{i}").chmod(0o700)
    return nodes, overrides


def run_flower(cfg: ExperimentConfig, config: str | None, overrides: Sequence[str],
               resume: bool = False, superlink: str | None = None,
               root_certificates: str | None = None, insecure: bool = False) -> str:
    """Run the experiment on Flower; return the summary table (or where to find it).

    Without ``superlink``, a :class:`LocalFederation` of ``data.num_clients`` nodes runs it and
    the results land under ``output_dir`` here: each node reads only the partition files
    written for it (:func:`node_files`), as a site reads its own. With one, the run goes to that
    SuperLink (the config file must exist on its machines, each SuperNode names its own data)
    and the results stay with its ServerApp.

    Raises:
        GloraError: the run did not complete (its status says how it ended).
    """
    run_config: dict[str, Any] = {"config": config or "", "overrides": shlex.join(overrides),
                                  "resume": resume}
    out = Path(cfg.output_dir)
    with tempfile.TemporaryDirectory(prefix="glora-flower-") as tmp:
        if superlink is None:
            out = out.resolve()  # the apps run in other working directories
            run_config["config"] = str(Path(config).resolve()) if config else ""
            nodes, server_overrides = node_files(cfg, Path(tmp) / "data")
            run_config["overrides"] = shlex.join([*overrides, *server_overrides,
                                                  f"output_dir={out}"])
            with LocalFederation(Path(tmp), cfg.data.num_clients, node_config=nodes) as fed:
                run_id, status = run_app(app_folder(Path(tmp)), fed.address, fed.certificates.ca,
                                         run_config, fed.home)
        else:
            ca = Path(root_certificates) if root_certificates else None
            run_id, status = run_app(app_folder(Path(tmp)), superlink, ca, run_config,
                                     Path(tmp) / "flwr-home", insecure)
    if status != "finished:completed":
        raise GloraError(f"Flower run {run_id} ended as {status!r}; see its log above.")
    if superlink is not None:
        return f"Flower run {run_id} completed; results are on the SuperLink's machine."
    return (out / "summary.md").read_text()
