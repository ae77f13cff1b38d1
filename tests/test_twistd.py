"""The daemon as an operator runs it: real twistd/twist processes."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from explorerd.config import SETTINGS
from tests.processlog import ProcessLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "API_CORS", "EXPLORERD_"))}
    env.update(extra)
    return env


class Daemon(ProcessLog):
    """A real explorerd process; finds its port in its own log."""

    def __init__(self, argv, env=None, cwd=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env or clean_env(), cwd=cwd or ROOT, text=True)
        self.readOutput()
        self.port = None
        match = self.wait_for(r"explorerd listening on .*http://127\.0\.0\.1:(\d+)/")
        self.port = int(match.group(1))
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def run_daemon():
    started = []

    def start(argv, **kw):
        d = Daemon(argv, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


TWISTD = [tool("twistd"), "-n", "--pidfile=", "explorerd", "--listen", "tcp:0:interface=127.0.0.1"]


def test_help_lists_every_option():
    out = subprocess.run([tool("twistd"), "-n", "explorerd", "--help"], capture_output=True, text=True,
                         env=clean_env(), cwd=ROOT, timeout=60)
    assert out.returncode == 0
    for s in SETTINGS:
        assert f"--{s.option}=" in out.stdout and s.env in out.stdout


@pytest.mark.parametrize("env, value", [("WEBSOCKET_PING_INTERVAL", "soon"), ("WEBSOCKET_MAX_CONNECTIONS", "-1"),
                                        ("WEBSOCKET_WRITE_BUFFER_SIZE", "lots"), ("WEBSOCKET_LISTEN", "tcp:notaport"),
                                        ("WEBSOCKET_LISTEN", "tcp:70000:interface=127.0.0.1")])
@pytest.mark.parametrize("runner", ["twistd", "twist"])
def test_a_bad_setting_stops_startup_with_its_name_alone(runner, env, value):
    """One line naming the setting, not buried under the usage text; nothing started before it."""
    argv = [tool("twistd"), "-n", "--pidfile=", "explorerd"] if runner == "twistd" else [tool("twist"), "explorerd"]
    out = subprocess.run(argv, capture_output=True, text=True, env=clean_env(**{env: value}), cwd=ROOT, timeout=60)
    assert out.returncode != 0
    assert out.stdout == ""
    assert out.stderr.startswith(f"explorerd: invalid {env}={value!r}: ")
    assert out.stderr.count("\n") == 1, out.stderr


def test_a_bad_listen_option_names_the_option():
    out = subprocess.run([tool("twistd"), "-n", "--pidfile=", "explorerd", "--listen", "tcp:notaport"],
                         capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=60)
    assert out.returncode != 0
    assert out.stderr == ("explorerd: invalid --listen='tcp:notaport': not a usable endpoint (invalid literal for "
                          "int() with base 10: 'notaport'); expected a Twisted endpoint string such as "
                          "tcp:8080:interface=127.0.0.1\n")


def test_a_port_in_use_stops_startup(run_daemon):
    first = run_daemon(TWISTD)
    out = subprocess.run([tool("twistd"), "-n", "--pidfile=", "explorerd", "--listen",
                          f"tcp:{first.port}:interface=127.0.0.1"],
                         capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=60)
    assert out.returncode != 0
    assert "Address already in use" in out.stdout + out.stderr


def subscriber(url):
    ws = ws_connect(url, compression=None, open_timeout=10)
    ws.send(json.dumps({"action": "subscribe", "channels": ["newBlocks"]}))
    assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
    return ws


def test_sigterm_says_1001_to_every_client_and_exits_cleanly(run_daemon):
    daemon = run_daemon(TWISTD + ["--shutdown-timeout", "5s"])
    clients = [subscriber(daemon.url) for _ in range(5)]
    health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=10))
    assert health["status"] == "ok" and health["clients"] == 5
    daemon.proc.send_signal(signal.SIGTERM)
    for ws in clients:
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # blocks from the embedded node may come before the close
                assert json.loads(ws.recv(timeout=10))["type"] == "newBlock"
        assert closed.value.rcvd.code == 1001
        assert closed.value.rcvd.reason == "server shutting down"
    # twistd re-raises SIGTERM after a clean shutdown, as service managers expect.
    assert daemon.proc.wait(15) in (0, -signal.SIGTERM)
    rest = daemon.proc.stdout.read()
    assert "Traceback" not in "".join(daemon.log) + rest


def test_the_tac_file_runs_the_same_service(run_daemon):
    env = clean_env(WEBSOCKET_LISTEN="tcp:0:interface=127.0.0.1", WEBSOCKET_MAX_CONNECTIONS="2")
    daemon = run_daemon([tool("twistd"), "-n", "--pidfile=", "-y", os.path.join(ROOT, "explorerd.tac")], env=env)
    ws = subscriber(daemon.url)
    ws.send(json.dumps({"action": "ping"}))
    answer = json.loads(ws.recv(timeout=10))
    while answer["type"] == "newBlock":  # the embedded node's blocks may come first
        answer = json.loads(ws.recv(timeout=10))
    assert answer == {"type": "pong"}
    ws.close()


def test_twist_runs_it_and_serves_metrics(run_daemon):
    daemon = run_daemon([tool("twist"), "--log-format=text", "explorerd", "--listen", "tcp:0:interface=127.0.0.1"])
    ws = subscriber(daemon.url)
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=10).read().decode()
    assert "explorer_websocket_connections 1.0" in text
    assert 'explorer_websocket_messages_sent_total{type="subscribed"} 1.0' in text
    assert "explorer_websocket_broadcast_latency_seconds" in text
    ws.close()


def _mirror(source, target, skip):
    """C{target}: a folder of links to what C{source} holds, but for the names C{skip} refuses."""
    target.mkdir()
    for entry in os.scandir(source):
        if not skip(entry.name):
            (target / entry.name).symlink_to(entry.path)


def test_an_editable_install_gives_twistd_the_plugin(tmp_path):
    """
    The README's C{pip install -e .}, then C{twistd explorerd --help}, in a
    fresh virtualenv, as a newcomer would.  Offline and quick: the
    dependencies are this environment's own, seen through a .pth file,
    without explorerd and its plugin (twistd would find that copy instead).
    """
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("needs pip and setuptools in this environment to install without a network")
    import twisted

    site = Path(twisted.__file__).parent.parent
    deps = tmp_path / "deps"
    _mirror(site, deps, lambda name: name.startswith(("explorerd", "__editable__")) or name.endswith(".pth")
            or name == "twisted")
    _mirror(site / "twisted", deps / "twisted", lambda name: name == "plugins")
    _mirror(site / "twisted" / "plugins", deps / "twisted" / "plugins",
            lambda name: name.startswith(("explorerd", "dropin")) or name == "__pycache__")

    project = tmp_path / "explorerd"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(
        ".git", ".tox", "node_modules", "tests", "bench", "build", "dist", "*.egg-info", "__pycache__",
        "dropin.cache", "artifacts", "explorerd-state", "state", "venv", ".venv"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    elsewhere = tmp_path / "elsewhere"  # not the project: the current directory is on sys.path
    elsewhere.mkdir()

    def run(*argv):
        out = subprocess.run([python, *argv], capture_output=True, text=True, env=env, cwd=elsewhere, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    purelib = run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    Path(purelib, "dependencies.pth").write_text(f"{deps}\n")
    run("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(project))

    usage = run("-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
                "explorerd", "--help")
    assert usage.startswith("Usage: twistd [options] explorerd [options]")
    assert "--rpc-url=" in usage
    plugin = run("-c", "import twisted.plugins.explorerd_plugin as p, explorerd; print(p.__file__, explorerd.__file__)")
    assert plugin.split() == [str(project / "twisted" / "plugins" / "explorerd_plugin.py"),
                              str(project / "explorerd" / "__init__.py")]
