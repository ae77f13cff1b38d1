"""The daemon as an operator runs it: real twistd/twist processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request

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
                                        ("WEBSOCKET_WRITE_BUFFER_SIZE", "lots")])
def test_a_bad_setting_stops_startup_with_its_name(env, value):
    out = subprocess.run([tool("twistd"), "-n", "--pidfile=", "explorerd"], capture_output=True, text=True,
                         env=clean_env(**{env: value}), cwd=ROOT, timeout=60)
    assert out.returncode != 0
    assert f"invalid {env}={value!r}" in out.stdout + out.stderr


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
    assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    ws.close()


def test_twist_runs_it_and_serves_metrics(run_daemon):
    daemon = run_daemon([tool("twist"), "--log-format=text", "explorerd", "--listen", "tcp:0:interface=127.0.0.1"])
    ws = subscriber(daemon.url)
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=10).read().decode()
    assert "explorer_websocket_connections 1.0" in text
    assert 'explorer_websocket_messages_sent_total{type="subscribed"} 1.0' in text
    assert "explorer_websocket_broadcast_latency_seconds" in text
    ws.close()
