"""
A real Crossbar.io router for the tests, from the repo's own configuration
(tests/crossbar/.crossbar/config.json), on 127.0.0.1.

Crossbar is installed by tests/crossbar/install.sh into its own virtualenv
(.tox/crossbar unless CROSSBAR_VENV says otherwise): it pins its own
Twisted and autobahn and never shares explorerd's environment.

Never import twisted.internet.reactor at module level here.
"""

import os
import re
import shutil
import signal
import socket
import subprocess

from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(HERE, ".crossbar", "config.json")
INSTALL = os.path.join(HERE, "install.sh")
VENV = os.environ.get("CROSSBAR_VENV") or os.path.join(ROOT, ".tox", "crossbar")

_READY = re.compile(rb"local node configuration ran successfully|NODE_BOOT_COMPLETE")
_WORKER = re.compile(rb"\[Router\s+(\d+)\]")


def install():
    """Install crossbar if it is not there yet (idempotent); returns the crossbar executable."""
    out = subprocess.run(["bash", INSTALL, VENV], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"installing crossbar failed:\n{out.stdout}\n{out.stderr}")
    return os.path.join(VENV, "bin", "crossbar")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Crossbar(protocol.ProcessProtocol):
    """One `crossbar start` process; C{ready} fires once its transport listens."""

    def __init__(self, executable, cbdir, port, ticket):
        self.executable = executable
        self.cbdir = cbdir
        self.port = port
        self.ticket = ticket
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.output = bytearray()
        self.workers = set()
        self.ready = Deferred()
        self.ended = Deferred()
        self.exit = None

    def start(self):
        from twisted.internet import reactor

        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPLORERD_", "WEBSOCKET_"))}
        env.update(EXPLORERD_ROUTER_PORT=str(self.port), EXPLORERD_WAMP_ROUTER_TICKET=self.ticket,
                   PYTHONUNBUFFERED="1")
        reactor.spawnProcess(self, self.executable,
                             [self.executable, "start", "--cbdir", self.cbdir, "--loglevel", "info"],
                             env=env, path=os.path.dirname(self.cbdir))
        return self

    def outReceived(self, data):
        self.output += data
        for pid in _WORKER.findall(data):
            self.workers.add(int(pid))
        if not self.ready.called and _READY.search(self.output):
            self.ready.callback(self)

    errReceived = outReceived

    def processEnded(self, reason):
        self.exit = reason.value
        if not self.ready.called:
            self.ready.errback(RuntimeError("crossbar exited before it was ready:\n"
                                            + self.output.decode("utf-8", "replace")[-4000:]))
        self.ended.callback(None)

    def log(self):
        return self.output.decode("utf-8", "replace")

    async def stop(self, timeout=15.0):
        """SIGTERM (crossbar stops its worker), SIGKILL if it does not end in time; by PID only."""
        from twisted.internet import reactor

        if self.exit is None:
            self.transport.signalProcess("TERM")
            self.ended.addTimeout(timeout, reactor)
            try:
                await self.ended
            except defer.TimeoutError:
                self.transport.signalProcess("KILL")
                self.ended = Deferred()
                await self.ended
        # The router worker is crossbar's child: make sure it went with it.
        for pid in self.workers:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"crossbar" not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def prepare_cbdir(tmp_path):
    """A copy of the repo's config in a scratch node directory (crossbar writes its keys there)."""
    cbdir = tmp_path / "crossbar" / ".crossbar"
    cbdir.mkdir(parents=True)
    shutil.copy(CONFIG, cbdir / "config.json")
    return str(cbdir)
