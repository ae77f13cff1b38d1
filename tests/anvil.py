"""
Start and stop a real anvil devnet for tests.

anvil comes from the npm package ``@foundry-rs/anvil`` pinned in
``tests/node/package.json`` (install it with ``npm ci --prefix tests/node``).
We run the *native* binary shipped in the platform package
(``@foundry-rs/anvil-<os>-<arch>/bin/anvil``), not the ``bin.mjs`` node
wrapper, so the PID we signal and measure is anvil's own.

Each anvil listens on 127.0.0.1 with ``--port 0``: anvil binds a free port
itself and prints ``Listening on 127.0.0.1:PORT``, which we read from its
stdout (no bind-then-close race). It is "ready" once it answers
``eth_chainId``.

Two front ends:

- :class:`Anvil` for Twisted code (pytest-twisted): ``start()`` and ``stop()``
  return Deferreds; waiting never blocks the reactor.
- :func:`blocking_anvil` for plain code (benchmarks, scripts): a context
  manager built on ``subprocess``.

Either way the process is stopped by PID (SIGTERM, then SIGKILL after a grace
period), and an ``atexit`` hook kills any anvil this module started that is
still alive, so an aborted test run does not leave nodes behind.
"""

import atexit
import json
import os
import platform
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import deque

from twisted.internet import defer, error, protocol
from twisted.internet.task import deferLater
from treq import json_content
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
INSTALL_HINT = "npm ci --prefix tests/node"

HOST = "127.0.0.1"

# anvil's first dev account (mnemonic "test test ... junk"), funded with
# 10000 ETH; handy for eth_sendTransaction without signing.
DEV_ACCOUNTS = (
    "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
    "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
)

_LISTENING = re.compile(rb"Listening on ([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")
_ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")

# npm's names for (os, cpu) -> @foundry-rs/anvil-<suffix>
_PLATFORMS = {
    ("linux", "x86_64"): "linux-amd64",
    ("linux", "amd64"): "linux-amd64",
    ("linux", "aarch64"): "linux-arm64",
    ("linux", "arm64"): "linux-arm64",
    ("darwin", "x86_64"): "darwin-amd64",
    ("darwin", "arm64"): "darwin-arm64",
    ("windows", "amd64"): "win32-amd64",
    ("windows", "x86_64"): "win32-amd64",
}


class AnvilError(Exception):
    """anvil could not be found, did not start, or died."""


def anvil_binary():
    """
    Path of the native anvil binary.

    ``$ANVIL_BIN`` wins (to try another build); otherwise the platform
    package under tests/node/node_modules, chosen from this machine's OS and
    CPU. We do not fall back to an ``anvil`` on PATH: tests should run the
    version the lock file pins.
    """
    override = os.environ.get("ANVIL_BIN")
    if override:
        if not os.access(override, os.X_OK):
            raise AnvilError(f"ANVIL_BIN={override!r} is not an executable file")
        return override
    key = (platform.system().lower(), platform.machine().lower())
    suffix = _PLATFORMS.get(key)
    if suffix is None:
        raise AnvilError(f"no @foundry-rs/anvil build for platform {key}")
    exe = "anvil.exe" if key[0] == "windows" else "anvil"
    path = os.path.join(
        NODE_DIR, "node_modules", "@foundry-rs", f"anvil-{suffix}", "bin", exe
    )
    if not os.access(path, os.X_OK):
        raise AnvilError(f"anvil not installed at {path}; run: {INSTALL_HINT}")
    return path


def anvil_command(
    binary=None,
    *,
    no_mining=False,
    block_time=None,
    chain_id=None,
    accounts=None,
    extra_args=(),
):
    """
    The argv for one anvil on 127.0.0.1 with an anvil-chosen port.

    Mining: ``no_mining=True`` mines only on ``evm_mine``/``anvil_mine``
    (deterministic tests); ``block_time=S`` mines every S seconds; neither
    means anvil's default automine (one block per transaction).
    """
    if no_mining and block_time is not None:
        raise ValueError("no_mining and block_time are mutually exclusive")
    argv = [binary or anvil_binary(), "--host", HOST, "--port", "0"]
    if no_mining:
        argv.append("--no-mining")
    if block_time is not None:
        argv += ["--block-time", str(block_time)]
    if chain_id is not None:
        argv += ["--chain-id", str(int(chain_id))]
    if accounts is not None:
        argv += ["--accounts", str(int(accounts))]
    argv += [str(a) for a in extra_args]
    return argv


def _env():
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    return env


def _parse_listening(line):
    m = _LISTENING.search(_ANSI.sub(b"", line))
    if m is None:
        return None
    return int(m.group(2))


def _chain_id_request():
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    ).encode()


# Every anvil this module started and has not yet seen exit: pid -> argv.
_LIVE = {}


@atexit.register
def _kill_leftovers():
    """Last resort: never leave an anvil running after the interpreter exits."""
    for pid in list(_LIVE):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _LIVE.clear()


class Anvil(protocol.ProcessProtocol):
    """
    One anvil process driven from the Twisted reactor.

    ``await Anvil(reactor, no_mining=True).start()`` fires with the instance
    once anvil answers ``eth_chainId``; ``url``, ``port``, ``pid`` and
    ``chain_id`` are then set. ``stop()`` always works (also before or after
    the process ended) and fires when the process has been reaped.
    """

    def __init__(
        self,
        reactor,
        *,
        no_mining=False,
        block_time=None,
        chain_id=None,
        accounts=None,
        extra_args=(),
        binary=None,
        startup_timeout=15.0,
        keep_lines=200,
    ):
        self._reactor = reactor
        self.argv = anvil_command(
            binary,
            no_mining=no_mining,
            block_time=block_time,
            chain_id=chain_id,
            accounts=accounts,
            extra_args=extra_args,
        )
        self._startup_timeout = startup_timeout
        self.output = deque(maxlen=keep_lines)  # last lines of stdout+stderr
        self._partial = {1: b"", 2: b""}
        self.port = None
        self.url = None
        self.pid = None
        self.chain_id = None
        self.exit_reason = None
        self._listening = defer.Deferred()
        self._ended = defer.Deferred()
        self._end_waiters = []

    def __repr__(self):
        return f"<Anvil pid={self.pid} url={self.url}>"

    # ProcessProtocol -----------------------------------------------------

    def childDataReceived(self, fd, data):
        buf = self._partial.get(fd, b"") + data
        *lines, self._partial[fd] = buf.split(b"\n")
        for line in lines:
            self.output.append(line.decode("utf-8", "replace"))
            if self.port is None and fd == 1:
                port = _parse_listening(line)
                if port is not None:
                    self.port = port
                    self.url = f"http://{HOST}:{port}"
                    if not self._listening.called:
                        self._listening.callback(port)

    def processEnded(self, reason):
        _LIVE.pop(self.pid, None)
        self.exit_reason = reason
        if not self._listening.called:
            self._listening.errback(
                AnvilError(f"anvil exited before listening: {self._describe()}")
            )
        waiters, self._end_waiters = self._end_waiters, []
        self._ended.callback(None)
        for d in waiters:
            d.callback(None)

    # Public API ----------------------------------------------------------

    @property
    def running(self):
        return self.pid is not None and not self._ended.called

    def start(self):
        """Spawn anvil; fire with self once it answers eth_chainId."""
        return defer.ensureDeferred(self._start())

    async def _start(self):
        self._reactor.spawnProcess(
            self,
            self.argv[0],
            self.argv,
            env=_env(),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self.pid = self.transport.pid
        _LIVE[self.pid] = self.argv
        self.transport.closeStdin()
        deadline = self._reactor.seconds() + self._startup_timeout
        try:
            listening = self._listening
            listening.addTimeout(self._startup_timeout, self._reactor)
            await listening
            self.chain_id = await self._wait_for_rpc(deadline)
        except BaseException as e:
            await self.stop()
            if isinstance(e, defer.TimeoutError):
                raise AnvilError(
                    f"anvil not ready within {self._startup_timeout}s: "
                    f"{self._describe()}"
                ) from e
            raise
        return self

    async def _wait_for_rpc(self, deadline):
        """Poll eth_chainId until it answers (no blocking sleeps)."""
        pool = HTTPConnectionPool(self._reactor, persistent=True)
        http = HTTPClient(Agent(self._reactor, pool=pool))
        try:
            while True:
                try:
                    return await self._chain_id_once(http)
                except Exception as e:
                    if not self.running:
                        raise AnvilError(
                            f"anvil died during startup: {self._describe()}"
                        ) from e
                    if self._reactor.seconds() >= deadline:
                        raise AnvilError(
                            f"anvil did not answer eth_chainId on {self.url}: "
                            f"{e!r}; {self._describe()}"
                        ) from e
                await deferLater(self._reactor, 0.02, lambda: None)
        finally:
            await pool.closeCachedConnections()

    async def _chain_id_once(self, http):
        d = http.post(
            self.url,
            data=_chain_id_request(),
            headers={"Content-Type": ["application/json"]},
            timeout=1.0,
            reactor=self._reactor,
        )
        d.addCallback(json_content)
        return int((await d)["result"], 16)

    def stop(self, grace=5.0):
        """
        Stop anvil by PID: SIGTERM, then SIGKILL after ``grace`` seconds.

        Fires (never fails) once the process has been reaped. Safe to call
        more than once and after anvil died on its own.
        """
        if self.pid is None or self._ended.called:
            return defer.succeed(None)
        d = defer.Deferred()
        self._end_waiters.append(d)
        self._signal("TERM")
        killer = self._reactor.callLater(grace, self._signal, "KILL")

        def cancel_killer(result):
            if killer.active():
                killer.cancel()
            return result

        return d.addBoth(cancel_killer)

    def _signal(self, name):
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def _describe(self):
        tail = "\n".join(list(self.output)[-20:])
        return f"argv={self.argv!r} exit={self.exit_reason!r}\n{tail}"


def start_anvil(reactor, **kwargs):
    """Shorthand: ``Anvil(reactor, **kwargs).start()``."""
    return Anvil(reactor, **kwargs).start()


class BlockingAnvil:
    """
    anvil for code that has no reactor (benchmarks, scripts).

    Use as a context manager, or call ``start()``/``stop()``. stdout is
    drained by a daemon thread so a chatty anvil never blocks on a full pipe.
    """

    def __init__(self, *, startup_timeout=15.0, binary=None, **kwargs):
        self.argv = anvil_command(binary, **kwargs)
        self._startup_timeout = startup_timeout
        self.output = deque(maxlen=200)
        self.port = None
        self.url = None
        self.chain_id = None
        self.proc = None
        self._listening = threading.Event()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
        _LIVE[self.proc.pid] = self.argv
        self._drainer = threading.Thread(
            target=self._drain, name=f"anvil-{self.proc.pid}", daemon=True
        )
        self._drainer.start()
        try:
            deadline = time.monotonic() + self._startup_timeout
            if not self._listening.wait(self._startup_timeout) or self.port is None:
                raise AnvilError(f"anvil did not listen: {self._describe()}")
            self.url = f"http://{HOST}:{self.port}"
            self.chain_id = self._wait_for_rpc(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _drain(self):
        for line in self.proc.stdout:
            self.output.append(line.decode("utf-8", "replace").rstrip("\n"))
            if self.port is None:
                port = _parse_listening(line)
                if port is not None:
                    self.port = port
                    self._listening.set()
        self._listening.set()  # EOF: wake start() so it can report the death

    def _wait_for_rpc(self, deadline):
        while True:
            req = urllib.request.Request(
                self.url,
                data=_chain_id_request(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=1.0) as resp:
                    return int(json.loads(resp.read())["result"], 16)
            except (OSError, ValueError, KeyError) as e:
                if self.proc.poll() is not None or time.monotonic() >= deadline:
                    raise AnvilError(
                        f"anvil did not answer eth_chainId: {e!r}; {self._describe()}"
                    ) from e
            time.sleep(0.02)  # not in a reactor: a plain sleep is fine here

    def stop(self, grace=5.0):
        """SIGTERM by PID, SIGKILL after ``grace`` seconds; always reaps."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _LIVE.pop(self.proc.pid, None)
        self._drainer.join(grace)  # EOF follows the exit; then close our end
        if not self._drainer.is_alive():
            self.proc.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def _describe(self):
        code = self.proc.poll() if self.proc else None
        tail = "\n".join(list(self.output)[-20:])
        return f"argv={self.argv!r} returncode={code!r}\n{tail}"


def blocking_anvil(**kwargs):
    """``with blocking_anvil(no_mining=True) as node: node.url ...``"""
    return BlockingAnvil(**kwargs)
