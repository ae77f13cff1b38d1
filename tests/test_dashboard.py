"""
The dashboard (web/) in a real headless Chromium against real twistd daemons.

Each daemon is a real ``twistd -n explorerd`` process tailing its embedded
replay node (real recorded mainnet, Polygon and Rinkeby blocks, with their
real reorgs) at a fast block time.  The browser is Debian's chromium driven
by npm playwright-core through ``tests/dashboard/driver.mjs`` (JSON lines over
stdio).  A Python WebSocket client on the same daemon records the wire, so
what the page shows is compared with what was sent.

Exact scenarios (receipts, logs, reorgs of logs) are told to a page through
its own message handler, on a page whose stream is stopped: the messages are
built by explorerd's own code (L{explorerd.history.Entry}) from real recorded
blocks and logs where the recordings have them, by hand where they do not
(the recordings have no receipts, so no failed transaction).

The page exposes what it shows as data-* attributes on its rows and its state
as ``window.__explorer``.  Screenshots go to ``artifacts/dashboard/``; with
``EXPLORERD_UPDATE_SCREENSHOTS=1`` the README's copies in ``web/screenshots/``
are refreshed too.
"""

import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from explorerd.events import logs_data
from explorerd.history import Entry
from tests.chaindata import load_blocks
from tests.dashboard.keccak import keccak256
from tests.processlog import ProcessLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.browser, pytest.mark.needs_node]  # chromium, driven by playwright-core in node
BIN = os.path.dirname(sys.executable)
DRIVER = os.path.join(ROOT, "tests", "dashboard", "driver.mjs")
PLAYWRIGHT = os.path.join(ROOT, "tests", "node", "node_modules", "playwright-core")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = os.path.join(ROOT, "artifacts", "dashboard")
SCREENSHOTS = os.path.join(ROOT, "web", "screenshots")
INSTALL_HINT = "npm ci --prefix tests/node && bash tests/install-browser.sh"

DESKTOP = (1280, 800)
PHONE = (390, 844)


# ---------------------------------------------------------------- processes


def tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "API_CORS", "EXPLORERD_"))}
    env.update(extra)
    return env


class Daemon(ProcessLog):
    """A real explorerd process on the embedded replay node; finds its port in its own log."""

    def __init__(self, port=0, block_time=0.1, poll_interval=0.02, receipts=None):
        argv = [tool("twistd"), "-n", "--pidfile=", "explorerd", "--state-dir=",
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--replay-block-time", str(block_time), "--poll-interval", str(poll_interval)]
        if receipts is not None:
            argv += ["--receipts", receipts]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=clean_env(), cwd=ROOT, text=True)
        self.readOutput()
        try:
            match = self.wait_for(r"explorerd listening on .*http://127\.0\.0\.1:(\d+)/")
        except AssertionError:
            self.stop()
            raise
        self.port = int(match.group(1))
        self.http = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"

    def stop(self):
        """SIGTERM (clients get their 1001), by PID; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def daemons():
    started = []

    def start(**kw):
        d = Daemon(**kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


class Wire:
    """A plain WebSocket subscriber recording every message, beside the page."""

    def __init__(self, url):
        self.ws = None
        self.messages = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._error:
            raise AssertionError(f"the wire client could not subscribe: {self._error!r}")

    def _read(self, url):
        try:
            with ws_connect(url, compression=None, open_timeout=10, max_size=None) as ws:
                self.ws = ws
                ws.send(json.dumps({"action": "subscribe", "channels": ["newBlocks", "newTxs", "logs"]}))
                self._ready.set()
                for raw in ws:
                    with self._lock:
                        self.messages.append(json.loads(raw))
        except (ConnectionClosed, OSError) as e:
            self._error = e
        finally:
            self._ready.set()

    def snapshot(self):
        with self._lock:
            return list(self.messages)

    def block_count(self):
        return sum(m["type"] == "newBlock" for m in self.snapshot())

    def wait_for_more_blocks(self, n, timeout=10):
        """Until C{n} more blocks than now have come in."""
        goal = self.block_count() + n
        deadline = time.monotonic() + timeout
        while self.block_count() < goal:
            if time.monotonic() > deadline:
                raise AssertionError(f"the wire client got fewer than {n} more blocks")
            time.sleep(0.02)

    def first_block(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            for m in self.snapshot():
                if m["type"] == "newBlock":
                    return m["data"]
            if time.monotonic() > deadline:
                raise AssertionError("the wire client got no block")
            time.sleep(0.02)

    def wait_for_blocks(self, hashes, timeout=5):
        """Until every block in C{hashes} has come (the page may read a message a moment earlier)."""
        deadline = time.monotonic() + timeout
        while set(hashes) - set(self.blocks()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the wire client never got {sorted(set(hashes) - set(self.blocks()))}")
            time.sleep(0.02)

    def blocks(self):
        return {m["data"]["hash"]: m["data"] for m in self.snapshot() if m["type"] == "newBlock"}

    def txs(self):
        return {(m["data"]["block_hash"], m["data"]["hash"]): m["data"] for m in self.snapshot() if m["type"] == "newTx"}

    def reorgs(self):
        return [m["data"] for m in self.snapshot() if m["type"] == "reorg"]

    def logs(self):
        """(block hash, log index) -> (the log, removed) as last sent."""
        return {(m["data"]["block_hash"], log["log_index"]): (log, m["data"]["removed"])
                for m in self.snapshot() if m["type"] == "logs" for log in m["data"]["logs"]}

    def canonical(self):
        """height -> hash of the chain as the wire tells it, reorgs applied."""
        chain = {}
        for m in self.snapshot():
            if m["type"] == "newBlock":
                chain[m["data"]["height"]] = m["data"]["hash"]
            elif m["type"] == "reorg":
                top = m["data"]["common_ancestor"]["height"]
                for h in [h for h in chain if h > top]:
                    del chain[h]
        return chain

    def close(self):
        if self.ws is not None:
            self.ws.close()
        self._thread.join(5)


class Proxy:
    """
    A TCP proxy between the browser and the daemon that can take the network
    away: ``cut()`` closes every connection (and refuses new ones for a
    while), ``silence()`` keeps the connections open but lets nothing through
    (a half-dead network: only a heartbeat notices).
    """

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.refuse_until = 0.0
        self.pipes = []
        self.closed = False
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            if time.monotonic() < self.refuse_until:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                conn.close()
                continue
            pipe = {"sockets": (conn, upstream), "silent": False}
            with self._lock:
                self.pipes.append(pipe)
            for src, dst in ((conn, upstream), (upstream, conn)):
                t = threading.Thread(target=self._pump, args=(src, dst, pipe), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src, dst, pipe):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not pipe["silent"]:
                    dst.sendall(data)
        except OSError:
            pass
        for s in pipe["sockets"]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, refuse_for=1.5):
        self.refuse_until = time.monotonic() + refuse_for
        with self._lock:
            pipes, self.pipes = self.pipes, []
        for pipe in pipes:
            for s in pipe["sockets"]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def silence(self):
        with self._lock:
            for pipe in self.pipes:
                pipe["silent"] = True

    def close(self):
        self.closed = True
        self.cut(0)
        for t in self._threads:
            t.join(5)
        for pipe in self.pipes:
            for s in pipe["sockets"]:
                s.close()
        self.listener.close()


# ---------------------------------------------------------------- the browser


class BrowserError(AssertionError):
    pass


class Browser:
    """One headless Chromium (through the Node driver) for the whole module."""

    def __init__(self):
        for path, what in ((PLAYWRIGHT, "playwright-core"), (CHROMIUM, "chromium")):
            if not os.path.exists(path):
                raise AssertionError(f"{what} is not installed ({path}); run: {INSTALL_HINT}")
        os.makedirs(ARTIFACTS, exist_ok=True)
        self.stderr = open(os.path.join(ARTIFACTS, "driver.log"), "w")
        self.proc = subprocess.Popen([shutil.which("node") or "node", DRIVER], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     start_new_session=True)
        self.answers = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ids = iter(range(1, 1 << 30))
        try:
            self._get(0, timeout=60)
        except BrowserError:
            self.close()
            raise

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.answers.put(json.loads(line))
            except ValueError:
                pass
        self.answers.put(None)

    def _get(self, request_id, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self.answers.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BrowserError(f"the browser driver did not answer request {request_id} in {timeout}s")
            if answer is None:
                raise BrowserError("the browser driver exited; see artifacts/dashboard/driver.log")
            if answer.get("id") == request_id:
                if not answer["ok"]:
                    raise BrowserError(answer["error"])
                return answer["result"]

    def call(self, cmd, timeout=30, **kw):
        request_id = next(self.ids)
        self.proc.stdin.write(json.dumps({"id": request_id, "cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._get(request_id, timeout)

    def open(self, url, size=DESKTOP, color_scheme="dark"):
        return Page(self, self.call("open", url=url, width=size[0], height=size[1], colorScheme=color_scheme))

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("quit", timeout=15)
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                # The driver and the chromium it started: our own process group.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.stderr.close()


class Page:
    def __init__(self, browser, page_id):
        self.browser = browser
        self.id = page_id

    def eval(self, expr):
        return self.browser.call("eval", page=self.id, expr=expr)

    def wait(self, expr, timeout=15, what=None):
        try:
            return self.browser.call("wait", timeout=timeout + 10, page=self.id, expr=expr, ms=timeout * 1000)
        except BrowserError as e:
            state = self.eval(STATE_JS)
            raise AssertionError(f"timed out waiting for {what or expr}: {e}\npage state: "
                                 f"{json.dumps(summary(state), indent=1)}") from None

    def click(self, selector):
        return self.browser.call("click", page=self.id, selector=selector)

    def activate(self, selector, timeout=5):
        """Focus an element and press Enter (the keyboard's click); False if it went away first."""
        return self.browser.call("activate", page=self.id, selector=selector, ms=timeout * 1000)

    def press(self, key):
        return self.browser.call("press", page=self.id, key=key)

    def viewport(self, size):
        return self.browser.call("viewport", page=self.id, width=size[0], height=size[1])

    def screenshot(self, name, readme_name=None, full_page=False):
        path = os.path.join(ARTIFACTS, name)
        self.browser.call("screenshot", page=self.id, path=path, fullPage=full_page)
        if readme_name and os.environ.get("EXPLORERD_UPDATE_SCREENSHOTS"):
            os.makedirs(SCREENSHOTS, exist_ok=True)
            shutil.copyfile(path, os.path.join(SCREENSHOTS, readme_name))
        return path

    def state(self):
        return self.eval(STATE_JS)

    def problems(self):
        """Page errors and console errors, except the ones a reconnect legitimately logs."""
        return [p for p in self.browser.call("problems", page=self.id)
                if not re.search(r"WebSocket connection to .* failed|ERR_CONNECTION_(REFUSED|CLOSED|RESET)"
                                 r"|net::ERR_EMPTY_RESPONSE", p["text"])]

    def close(self):
        self.browser.call("close", page=self.id)


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture
def pages(browser):
    opened = []

    def open_page(url, **kw):
        p = browser.open(url, **kw)
        opened.append(p)
        return p

    yield open_page
    for p in opened:
        p.close()


# What the page shows, read from the DOM (visible text without the
# screen-reader-only words) and from window.__explorer.
STATE_JS = r"""(() => {
  const text = (node) => {
    if (!node) return null;
    const copy = node.cloneNode(true);
    copy.querySelectorAll('.visually-hidden').forEach((n) => n.remove());
    return copy.textContent.replace(/\s+/g, ' ').trim();
  };
  const x = window.__explorer;
  x.render();  // the DOM is drawn at most every 150 ms: bring it up to the store first
  return {
    state: x.state,
    conn: text(document.getElementById('conn')),
    connStateRole: document.getElementById('conn-state').getAttribute('role'),
    connStateLive: document.getElementById('conn-state').getAttribute('aria-live'),
    title: document.title,
    stats: Object.fromEntries(['head-height', 'head-age', 'bpm', 'tpm', 'lag', 'reorg-count', 'reorg-last', 'spark-desc']
      .map((id) => [id, text(document.getElementById(id))])),
    tickerItems: [...document.querySelectorAll('#blocks > li:not(.empty)')].map((li) => li.classList.contains('gap')
      ? { gap: true, text: text(li), after: li.dataset.afterHeight }
      : { gap: false, key: li.dataset.key, epoch: +li.dataset.epoch, height: +li.dataset.height, hash: li.dataset.hash,
          txCount: +li.dataset.txCount, gasUsed: +li.dataset.gasUsed, miner: li.dataset.miner,
          orphaned: li.dataset.orphaned === 'true', struck: getComputedStyle(li.querySelector('.b-height')).textDecorationLine,
          tagShown: !li.querySelector('.orphan-tag').hidden && li.querySelector('.orphan-tag').offsetParent !== null,
          heightText: text(li.querySelector('.b-height')), hashText: text(li.querySelector('.b-hash')),
          txsText: text(li.querySelector('.b-txs')), gasText: text(li.querySelector('.gas-num')),
          minerTitle: li.querySelector('.b-miner .mono').title }),
    txRows: [...document.querySelectorAll('#tx-rows tr[data-hash]')].map((tr) => ({
      hash: tr.dataset.hash, blockHash: tr.dataset.blockHash, blockKey: tr.dataset.blockKey, blockHeight: +tr.dataset.blockHeight,
      valueWei: tr.dataset.valueWei, from: tr.dataset.from, to: tr.dataset.to, orphaned: tr.dataset.orphaned === 'true',
      status: tr.dataset.status, feeWei: tr.dataset.feeWei, failed: tr.classList.contains('failed'),
      background: getComputedStyle(tr).backgroundColor, edge: getComputedStyle(tr.cells[0]).boxShadow,
      cells: [...tr.cells].map(text) })),
    logRows: [...document.querySelectorAll('#log-rows tr[data-key]')].map((tr) => ({
      key: tr.dataset.key, blockHash: tr.dataset.blockHash, blockHeight: +tr.dataset.blockHeight,
      logIndex: +tr.dataset.logIndex, address: tr.dataset.address, topic: tr.dataset.topic, txHash: tr.dataset.txHash,
      removed: tr.dataset.removed === 'true',
      struck: getComputedStyle(tr.querySelector('.c-address')).textDecorationLine,
      tagShown: !!tr.querySelector('.removed-tag') && tr.querySelector('.removed-tag').offsetParent !== null,
      txLink: !!tr.querySelector('.c-logtx button'), cells: [...tr.cells].map(text) })),
    logs: (() => {
      const notice = document.getElementById('logs-notice');
      const empty = document.getElementById('logs-empty');
      return { available: x.logsAvailable, notice: text(notice), noticeShown: notice.offsetHeight > 0,
               empty: text(empty), emptyShown: empty.offsetParent !== null };
    })(),
    events: [...document.querySelectorAll('#events li[data-kind]')].map((li) => ({ kind: li.dataset.kind, text: text(li) })),
    store: {
      epoch: x.store.epoch,
      blocks: x.store.timeline.filter((r) => r.kind === 'block').map((r) => ({
        key: r.key, height: r.height, hash: r.hash, epoch: r.epoch, orphaned: r.orphaned, replayed: r.replayed,
        txsSeen: r.txsSeen, txCount: r.data.tx_count })),
      gaps: x.store.gaps.map((g) => ({ epoch: g.epoch, after: g.after, oldestHeight: g.oldestHeight })),
      reorgs: x.store.reorgs.map((r) => ({ depth: r.depth, removed: r.removed, ancestor: r.common_ancestor })),
      duplicates: x.store.duplicates,
      latestHash: x.store.latest ? x.store.latest.hash : null,
    },
    shown: x.log.shown,
    states: x.log.states.map((s) => ({ state: s.state, reason: s.reason, retryAt: s.retryAt })),
    sent: x.log.sent.map((s) => s.message),
    answers: x.log.answers.map((a) => a.message),
    connections: x.stream.connections,
  };
})()"""


def summary(state):
    """A short page state for failure messages."""
    blocks = state["store"]["blocks"]
    return {
        "state": state["state"], "conn": state["conn"], "blocks": len(blocks),
        "heights": [b["height"] for b in blocks[-12:]], "gaps": state["store"]["gaps"],
        "states": [s["state"] for s in state["states"]][-10:], "sent": state["sent"][-3:],
        "answers": state["answers"][-3:], "events": state["events"],
    }


# ---------------------------------------------------------------- expectations (an independent implementation)


def eth(wei):
    """The page's value format, computed with Python integers: "1,234.5 ETH"."""
    whole, fraction = divmod(int(wei), 10**18)
    text = f"{whole:,}"
    if fraction:
        text += "." + f"{fraction:018d}".rstrip("0")
    return text


def short(hex_string, head=4, tail=4):
    return f"{hex_string[:2 + head]}…{hex_string[-tail:]}"


UNKNOWN = "—"  # what the page shows for a value the server does not know (a null receipt field)
STATUS_TEXT = {1: "success", 0: "failed", None: UNKNOWN}


def fee_text(wei):
    """The page's fee cell: ETH rounded half up to six decimals, never 0 for a fee that is not 0."""
    if wei is None:
        return UNKNOWN
    value = int(wei)
    rounded = (value + 5 * 10**11) // 10**12
    if rounded == 0 and value:
        return "<0.000001 ETH"
    whole, fraction = divmod(rounded, 10**6)
    text = f"{whole:,}"
    if fraction:
        text += "." + f"{fraction:06d}".rstrip("0")
    return text + " ETH"


def tx_cells(sent):
    """The cells of a transaction's row, as the page should show them."""
    return [
        short(sent["hash"], 6, 4),
        STATUS_TEXT[sent["status"]],
        short(sent["from_addr"]),
        short(sent["to_addr"]) if sent["to_addr"] else "contract creation",
        f"{eth(sent['value_wei'])} ETH",
        fee_text(sent["fee_wei"]),
        f"#{sent['block_height']}",
    ]


def log_cells(log, height, known, removed=False):
    """The cells of a log's row in the events view: event (first topic), contract, transaction, block."""
    topic = log["topics"][0] if log["topics"] else None
    signature = known.get(topic)
    event = "no topic" if topic is None else f"{signature.split('(')[0]} {short(topic)}" if signature else short(topic)
    return [event + (" removed" if removed else ""), short(log["address"]), short(log["tx_hash"], 6, 4), f"#{height}"]


def recorded_logs(network):
    """Block hash -> its recorded logs (eth_getLogs' shape), from the replay node's data."""
    logs = {}
    with open(os.path.join(ROOT, "explorerd", "data", f"{network}.logs.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                log = json.loads(line)
                logs.setdefault(log["blockHash"], []).append(log)
    return logs


def block_messages(entry):
    """What the server sends a newBlocks + newTxs + logs subscriber for one published block."""
    messages = [{"type": "newBlock", "data": entry.data}]
    messages += [{"type": "newTx", "data": tx} for tx in entry.txs_data]
    if entry.logs:
        messages.append({"type": "logs", "data": logs_data(entry.data, entry.logs)})
    return messages


def tell(page, messages):
    """Messages through the page's own handler, as if its server had sent them."""
    page.eval("((messages) => { for (const m of messages) window.__explorer.stream.dispatchEvent("
              f"new CustomEvent('message', {{detail: m}})); }})({json.dumps(messages)})")


def quiet_page(pages, live):
    """
    A page of the live daemon whose stream is stopped, so that nothing moves
    while a test tells it things (what it got before is still there).
    """
    page = pages(live.daemon.http)
    page.wait("window.__explorer.state === 'live'", what="live")
    page.eval("window.__explorer.stream.stop()")
    return page


# The details dialog's fields: label -> the text shown (without the screen-reader-only words).
DETAILS_JS = r"""(() => {
  const text = (node) => {
    const copy = node.cloneNode(true);
    copy.querySelectorAll('.visually-hidden').forEach((n) => n.remove());
    copy.querySelectorAll('br').forEach((n) => n.replaceWith(' '));  // lines, as they are seen
    copy.querySelectorAll('li').forEach((n) => n.append(' '));
    return copy.textContent.replace(/\s+/g, ' ').trim();
  };
  const dts = [...document.querySelectorAll('#details-body dl.fields > dt')];
  return Object.fromEntries(dts.map((dt) => [text(dt), text(dt.nextElementSibling)]));
})()"""


# For a picture: the events view scrolled to where live logs end and removed ones begin.
SHOW_REMOVED_LOGS_JS = r"""(() => {
  const wrap = document.querySelector('.pane-logs .table-wrap');
  const first = wrap.querySelector('tr[data-removed=true]');
  wrap.scrollTop = first.offsetTop - wrap.querySelector('thead').offsetHeight - 2 * first.offsetHeight;
})()"""


def open_details(page, selector, title):
    page.click(selector)
    page.wait(f"document.getElementById('details').open && "
              f"document.getElementById('details-title').textContent === {json.dumps(title)}",
              what=f"details of {title}")
    return page.eval(DETAILS_JS)


def close_details(page):
    page.press("Escape")
    page.wait("!document.getElementById('details').open", what="the details closed")


def reorg_notice(reorg):
    """The page's notice for a reorg message, without its time."""
    heights = sorted(r["height"] for r in reorg["removed"])
    which = f"block #{heights[0]}" if len(heights) == 1 else f"blocks #{heights[0]}–#{heights[-1]}"
    ancestor = reorg["common_ancestor"]
    return (f"Reorg, depth {reorg['depth']}: {which} orphaned; chain continues from "
            f"#{ancestor['height']} {short(ancestor['hash'])}")


def canonical_runs(blocks, epoch):
    """The page's canonical blocks of one epoch, in arrival order."""
    return [b for b in blocks if b["epoch"] == epoch and not b["orphaned"]]


def settled_chain(page, wire, epoch=0, timeout=5):
    """
    The page's canonical blocks, once they agree with the wire's chain: one
    of the two connections may be a message behind (a reorg the wire client
    has read and the page not yet, or the other way round).
    """
    deadline = time.monotonic() + timeout
    while True:
        blocks = canonical_runs(page.state()["store"]["blocks"], epoch)
        chain = wire.canonical()
        wrong = [(b["height"], b["hash"]) for b in blocks if chain.get(b["height"]) != b["hash"]]
        if not wrong:
            return blocks
        if time.monotonic() > deadline:
            raise AssertionError(f"the page's canonical chain is not the wire's at {wrong}")
        time.sleep(0.05)


def assert_contiguous_without_duplicates(blocks):
    hashes = [b["hash"] for b in blocks]
    assert len(hashes) == len(set(hashes)), f"a block is shown twice: {hashes}"
    heights = [b["height"] for b in blocks]
    assert heights == list(range(heights[0], heights[0] + len(heights))), f"heights have a gap: {heights}"


# ---------------------------------------------------------------- a live page on one daemon, for several tests


class Live:
    def __init__(self, daemon, wire, page):
        self.daemon, self.wire, self.page = daemon, wire, page


@pytest.fixture(scope="class")
def live(browser):
    """
    One daemon (a block every 0.12 s; the first recorded reorg, Polygon
    13522194, comes at chain height 27, about 3 s in), a wire recorder
    connected first, and a desktop page opened right after.  Closed when
    the class is done, so it does not load the machine for later tests.
    """
    daemon = Daemon(block_time=0.12, poll_interval=0.02)
    wire = page = None
    try:
        wire = Wire(daemon.ws_url)
        page = browser.open(daemon.http)
        yield Live(daemon, wire, page)
    finally:
        if page is not None:
            page.close()
        if wire is not None:
            wire.close()
        daemon.stop()


class TestLivePage:
    """One daemon, one wire recorder and one page, shared by these tests (in this order)."""

    def test_wei_values_are_formatted_exactly(self, live):
        """formatEther (web/format.js) against Python integers: every digit kept, zeros trimmed, thousands grouped."""
        rng = random.Random(5)
        values = ["0", "1", "10", "1000000000000000000", "1500000000000000000", "999999999999999999",
                  "1234567890123456789012", "100000000000000000000000000", str(2**256 - 1), "000123"]
        values += [str(rng.randrange(10 ** rng.randrange(0, 40))) for _ in range(300)]
        shown = live.page.eval(f"import('./format.js').then((m) => {json.dumps(values)}.map(m.formatEther))")
        assert shown[6] == "1,234.567890123456789012"
        assert shown[:6] == ["0", "0.000000000000000001", "0.00000000000000001", "1", "1.5", "0.999999999999999999"]
        for value, text in zip(values, shown):
            assert text == eth(value), value
        junk = live.page.eval("import('./format.js').then((m) => ['', '-1', '1e18', '0x10', '1.5', null].map(m.formatEther))")
        assert junk == [None] * 6
        # Fees: ETH to six decimals, rounded half up; a fee that rounds to nothing is not shown as 0.
        values += ["500000000000", "499999999999", "1499999999999", "2146789000000000"]
        fees = live.page.eval(f"import('./format.js').then((m) => {json.dumps(values)}"
                              ".map((v) => m.formatUnits(v, 18, 6)))")
        assert fees[-4:] == ["0.000001", "<0.000001", "0.000001", "0.002147"]
        for value, text in zip(values, fees):
            assert f"{text} ETH" == fee_text(value), value

    def test_known_event_names_are_the_keccak_of_their_signatures(self, live):
        """The events view names a log by its first topic only when that topic is the signature's hash."""
        known = live.page.eval("import('./topics.js').then((m) => m.KNOWN_EVENTS)")
        assert len(known) >= 10
        for topic, signature in known.items():
            assert keccak256(signature.encode()) == topic, signature

    def test_blocks_and_transactions_match_the_wire(self, live):
        page, wire = live.page, live.wire
        page.wait("document.querySelectorAll('#blocks li.block').length >= 8 && "
                  "document.querySelectorAll('#tx-rows tr[data-hash]').length >= 20", what="blocks and transactions")
        state = page.state()
        assert state["state"] == "live" and state["conn"] == "Live"
        assert state["connStateRole"] == "status" and state["connStateLive"] == "polite"
        # The page got the stream by itself, at the URL derived from its location.
        assert state["sent"][0] == {"action": "subscribe", "channels": ["newBlocks", "newTxs", "logs"]}
        assert page.eval("window.__explorer.stream.url") == live.daemon.ws_url
        assert state["logs"]["available"] is True and not state["logs"]["noticeShown"]

        on_wire, wire_txs = wire.blocks(), wire.txs()
        blocks = [b for b in state["tickerItems"] if not b["gap"]]
        for b in blocks:
            sent = on_wire[b["hash"]]  # every block shown was sent
            assert (b["height"], b["txCount"], b["gasUsed"], b["miner"]) == (
                sent["height"], sent["tx_count"], sent["gas_used"], sent["miner"])
            assert b["heightText"] == f"#{sent['height']}"
            assert b["hashText"] == short(sent["hash"])
            assert b["txsText"] == f"{sent['tx_count']:,} tx{'' if sent['tx_count'] == 1 else 's'}"
            assert b["gasText"] == f"{sent['gas_used']:,} gas"
            assert b["minerTitle"] == sent["miner"]
        # Newest first, in chain order.
        canonical = [b["height"] for b in blocks if not b["orphaned"]]
        assert canonical == sorted(canonical, reverse=True)
        assert canonical[0] - canonical[-1] == len(canonical) - 1

        rows = state["txRows"]
        assert 20 <= len(rows) <= 100
        for row in rows:
            sent = wire_txs[(row["blockHash"], row["hash"])]
            assert row["valueWei"] == sent["value_wei"]
            assert row["cells"] == tx_cells(sent)
            assert row["failed"] == (sent["status"] == 0)
        # The table holds the newest transactions, newest first, in stream order.
        order = [(m["data"]["block_hash"], m["data"]["hash"]) for m in wire.snapshot() if m["type"] == "newTx"]
        position = {key: i for i, key in enumerate(order)}
        shown = [position[(r["blockHash"], r["hash"])] for r in rows]
        assert shown == sorted(shown, reverse=True)

        # Throughput, lag and the chart are filled in.
        page.wait("document.getElementById('bpm').textContent !== '–'", what="blocks per minute")
        stats = page.state()["stats"]
        assert re.fullmatch(r"[0-9.]+k?", stats["bpm"]) and re.fullmatch(r"[0-9.]+k?", stats["tpm"])
        assert re.fullmatch(r"\d+\.\d s|\d+ s", stats["lag"])
        assert re.fullmatch(r"#\d+", stats["head-height"])
        assert stats["spark-desc"].startswith("last ")
        painted = page.eval("""(() => { const c = document.getElementById('spark');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()""")
        assert painted > 50

        # The events view: every log shown is one the server sent for its block; the embedded
        # node serves its recorded logs, so once a block with logs is out there are rows.
        deadline = time.monotonic() + 5
        while True:
            state, on_wire = page.state(), wire.logs()
            rows = state["logRows"]
            if all((r["blockHash"], r["logIndex"]) in on_wire for r in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        known = page.eval("import('./topics.js').then((m) => m.KNOWN_EVENTS)")
        if any(b["log_count"] for b in wire.blocks().values()):
            assert rows, "blocks with logs went out, but the events view shows none"
        for row in rows:
            log, removed = on_wire[(row["blockHash"], row["logIndex"])]
            assert row["cells"] == log_cells(log, row["blockHeight"], known, removed=row["removed"])
            if removed:
                assert row["removed"]
        if not rows:
            latest = state["store"]["latestHash"]
            wire.wait_for_blocks([latest])
            assert state["logs"]["emptyShown"]
            if wire.blocks()[latest]["log_count"] is None:
                assert state["logs"]["empty"] == ("Waiting for events… the server does not know the logs of "
                                                  "the latest blocks.")
            else:
                assert state["logs"]["empty"] == "Waiting for events…"
        assert page.problems() == []

    def test_a_recorded_reorg_shows_orphaned_blocks(self, live):
        """
        The first recorded reorg is Polygon 13522194 at chain height 27 (depth 1);
        the daemon's tail can miss a head that lasts 0.12 s on a starved machine,
        and then the next one (height 73, 78, ...) is the first.
        """
        page, wire = live.page, live.wire
        page.wait("document.querySelector('#blocks li.block[data-orphaned=true]') !== null", timeout=20,
                  what="the first recorded reorg")
        first = page.eval("window.__explorer.store.reorgs[0]")
        wire.wait_for_blocks([r["hash"] for r in first["removed"]])
        reorg = wire.reorgs()[0]
        assert reorg == {k: first[k] for k in ("depth", "common_ancestor", "removed")}
        top = max(r["height"] for r in reorg["removed"])
        page.wait(f"window.__explorer.store.latest.height >= {top + 2}", what="blocks after it")
        # Screenshots now, while the orphan is in view (look at them: artifacts/dashboard/).
        page.screenshot("desktop.png", "dashboard-desktop.png")
        state = page.state()
        assert reorg["depth"] == len(reorg["removed"])
        assert reorg["common_ancestor"]["height"] == min(r["height"] for r in reorg["removed"]) - 1

        # Later reorgs may have come too; every orphan shown is one the server removed.
        removed = {r["hash"] for m in wire.reorgs() for r in m["removed"]}
        shown = [b for b in state["tickerItems"] if not b["gap"]]
        assert {b["hash"] for b in shown if b["orphaned"]} <= removed
        chain = wire.canonical()
        for gone in reorg["removed"]:
            orphan = next(b for b in shown if b["hash"] == gone["hash"])
            assert orphan["orphaned"] and orphan["height"] == gone["height"]
            assert orphan["tagShown"] and "line-through" in orphan["struck"]
            # Kept, not replaced: the replacement at the same height is above it and canonical.
            replacement = next(b for b in shown if b["height"] == gone["height"] and not b["orphaned"])
            assert replacement["hash"] == chain[gone["height"]] != gone["hash"]
            assert shown.index(replacement) < shown.index(orphan)
        orphan_hash = reorg["removed"][0]["hash"]

        # A short notice with the depth, and the counter.
        notices = [e["text"].split(" ", 1)[1] for e in state["events"] if e["kind"] == "reorg"]
        assert notices and set(notices) <= {reorg_notice(r) for r in wire.reorgs()}
        assert int(state["stats"]["reorg-count"]) == len(state["store"]["reorgs"]) >= 1
        assert re.fullmatch(r"last depth \d, .*", state["stats"]["reorg-last"])
        # The orphans' transactions still in the table are marked too.
        records = {b["key"]: b for b in state["store"]["blocks"]}
        for row in state["txRows"]:
            assert row["orphaned"] == records[row["blockKey"]]["orphaned"]
        assert all(row["orphaned"] for row in state["txRows"] if row["blockHash"] == orphan_hash)
        assert state["store"]["reorgs"][0] == {"depth": reorg["depth"], "removed": reorg["removed"],
                                               "ancestor": reorg["common_ancestor"]}
        # The page's canonical chain is the wire's.
        settled_chain(page, wire)

        page.viewport(PHONE)
        try:
            page.wait("document.documentElement.scrollWidth <= 390", what="no horizontal overflow on a phone")
            page.screenshot("phone.png", "dashboard-phone.png")
            # One column: the transactions come below the blocks, each row a two-line card.
            layout = page.eval("""(() => { const r = (s) => document.querySelector(s).getBoundingClientRect();
                const row = document.querySelector('#tx-rows tr[data-hash]');
                return {blocksBottom: r('.pane-blocks').bottom, txsTop: r('.pane-txs').top,
                        rowDisplay: getComputedStyle(row).display, width: r('.pane-txs').width}; })()""")
            assert layout["txsTop"] >= layout["blocksBottom"] and layout["rowDisplay"] == "grid"
            assert layout["width"] <= 390
        finally:
            page.viewport(DESKTOP)

    def test_clicking_a_block_or_transaction_shows_its_full_message(self, live):
        page, wire = live.page, live.wire
        page.wait("document.querySelectorAll('#tx-rows tr[data-hash]').length > 0", what="transactions")
        block_hash = page.eval("document.querySelector('#blocks li.block').dataset.hash")
        # Rows move as blocks arrive: use the keyboard, as a keyboard user would.
        page.activate(f"#blocks li.block[data-hash='{block_hash}'] button")
        page.wait("document.getElementById('details').open", what="the details dialog")
        shown = page.eval("JSON.parse(document.querySelector('#details pre').textContent)")
        assert shown == {"type": "newBlock", "data": wire.blocks()[block_hash]}
        body = page.eval("document.getElementById('details-body').textContent")
        assert block_hash in body and wire.blocks()[block_hash]["parent_hash"] in body
        page.press("Escape")
        page.wait("!document.getElementById('details').open", what="Escape to close the dialog")

        # A block of the recorded mainnet stretch replaces all 100 rows at once; if
        # that happens between picking a row and pressing Enter, pick again.
        for attempt in range(10):
            row = page.eval("(() => { const tr = document.querySelector('#tx-rows tr[data-hash]');"
                            " return {hash: tr.dataset.hash, block: tr.dataset.blockHash}; })()")
            if page.activate(f"#tx-rows tr[data-hash='{row['hash']}'][data-block-hash='{row['block']}'] button",
                             timeout=0.3):
                break
        page.wait("document.getElementById('details').open", what="the details dialog")
        sent = wire.txs()[(row["block"], row["hash"])]
        assert page.eval("JSON.parse(document.querySelector('#details pre').textContent)") == {"type": "newTx", "data": sent}
        body = page.eval("document.getElementById('details-body').textContent")
        assert f"{eth(sent['value_wei'])} ETH" in body and f"{sent['value_wei']} wei" in body
        assert sent["from_addr"] in body and sent["hash"] in body
        page.screenshot("details-tx.png")
        page.press("Escape")
        page.wait("!document.getElementById('details').open", what="Escape to close the dialog")

    def test_edge_cases_render_and_mouse_clicks_open_details(self, live, pages):
        """
        Crafted messages through the page's own handler, on a page whose stream
        is stopped (so nothing moves under the mouse): contract creation, the
        largest value, a gas limit, duplicates dropped; real mouse clicks.
        """
        page = pages(live.daemon.http)
        page.wait("window.__explorer.state === 'live'", what="live")
        page.eval("window.__explorer.stream.stop()")
        page.eval(r"""(() => {
          const send = (message) => window.__explorer.stream.dispatchEvent(new CustomEvent('message', {detail: message}));
          const h = (c) => '0x' + c.repeat(64);
          send({type: 'newBlock', data: {height: 9000099, hash: h('a'), parent_hash: h('9'), tx_count: 2, timestamp: 1600000000,
                miner: '0x' + '1'.repeat(40), gas_used: 7500000, gas_limit: 30000000}});
          send({type: 'newTx', data: {hash: h('b'), from_addr: '0x' + '2'.repeat(40), to_addr: null,
                value_wei: '115792089237316195423570985008687907853269984665640564039457584007913129639935',
                block_height: 9000099, block_hash: h('a'), tx_index: 0}});
          send({type: 'newTx', data: {hash: h('b'), from_addr: '0x' + '2'.repeat(40), to_addr: null, value_wei: '1',
                block_height: 9000099, block_hash: h('a'), tx_index: 0}});
        })()""")
        page.wait(f"document.querySelector(`#tx-rows tr[data-hash='0x{'b' * 64}']`) !== null",
                  what="the crafted transaction")
        state = page.state()
        rows = [r for r in state["txRows"] if r["blockHash"] == "0x" + "a" * 64]
        assert len(rows) == 1, "a second message with the same hash in the same block is a duplicate"
        assert rows[0]["cells"][3] == "contract creation"
        assert rows[0]["cells"][4] == f"{eth(str(2**256 - 1))} ETH"
        # A message without receipt fields (an older server): nothing is known of them.
        assert rows[0]["cells"][1] == rows[0]["cells"][5] == UNKNOWN
        assert state["store"]["duplicates"] == {"blocks": 0, "txs": 1, "logs": 0}
        bar = page.eval("(() => { const li = document.querySelector(`#blocks li[data-height='9000099']`);"
                        " return [li.querySelector('.gas').title, li.querySelector('.fill').style.width]; })()")
        assert bar == ["25% of the gas limit (30,000,000)", "25%"]

        # A chain that flip-flops: X orphaned by Y, then Y orphaned and X canonical again
        # (as the recorded Polygon blocks 13522239/40 do).  X comes back as a new row.
        page.eval(r"""(() => {
          const send = (message) => window.__explorer.stream.dispatchEvent(new CustomEvent('message', {detail: message}));
          const h = (c) => '0x' + c.repeat(64);
          const block = (c) => ({height: 9000100, hash: h(c), parent_hash: h('a'), tx_count: 1, timestamp: 1600000012,
                                 miner: '0x' + '3'.repeat(40), gas_used: 21000});
          const tx = (c) => ({hash: h('d'), from_addr: '0x' + '4'.repeat(40), to_addr: '0x' + '5'.repeat(40),
                              value_wei: '1000000000000000000', block_height: 9000100, block_hash: h(c), tx_index: 0});
          const reorg = (c) => ({type: 'reorg', data: {depth: 1, common_ancestor: {height: 9000099, hash: h('a')},
                                                     removed: [{height: 9000100, hash: h(c)}]}});
          send({type: 'newBlock', data: block('c')}); send({type: 'newTx', data: tx('c')});
          send(reorg('c'));
          send({type: 'newBlock', data: block('e')}); send({type: 'newTx', data: tx('e')});
          send(reorg('e'));
          send({type: 'newBlock', data: block('c')}); send({type: 'newTx', data: tx('c')});
          send({type: 'newBlock', data: block('c')}); send({type: 'newTx', data: tx('c')});  // a duplicate now
        })()""")
        page.wait("document.querySelectorAll('#blocks li[data-height=\"9000100\"]').length === 3", what="the flip-flop")
        state = page.state()
        x, y = "0x" + "c" * 64, "0x" + "e" * 64
        at_100 = [(b["hash"], b["orphaned"]) for b in state["tickerItems"] if not b["gap"] and b["height"] == 9000100]
        assert at_100 == [(x, False), (y, True), (x, True)]
        rows = [(r["blockHash"], r["orphaned"]) for r in state["txRows"] if r["hash"] == "0x" + "d" * 64]
        assert rows == [(x, False), (y, True), (x, True)]
        assert page.eval("window.__explorer.store.resumePoint()") == {"height": 9000100, "hash": x}
        assert state["store"]["duplicates"] == {"blocks": 1, "txs": 2, "logs": 0}

        # A resume from the parent of a block whose transactions were cut off, when
        # that block was orphaned meanwhile: the server replays from the parent and
        # has no reorg to tell; the replacement at the same height tells the page.
        page.eval(r"""(() => {
          const send = (message) => window.__explorer.stream.dispatchEvent(new CustomEvent('message', {detail: message}));
          const h = (c) => '0x' + c.repeat(64);
          const block = (height, c, parent, txs) => ({type: 'newBlock', data: {height, hash: h(c), parent_hash: h(parent),
                          tx_count: txs, timestamp: 1600000024, miner: '0x' + '3'.repeat(40), gas_used: 0}});
          send(block(9000200, '7', 'c', 0));
          send(block(9000201, '8', '7', 2));
          send({type: 'newTx', data: {hash: h('5'), from_addr: '0x' + '4'.repeat(40), to_addr: null, value_wei: '0',
                                      block_height: 9000201, block_hash: h('8'), tx_index: 0}});
        })()""")
        page.wait("window.__explorer.store.txs.some((t) => t.data.block_height === 9000201)", what="the cut-off block")
        assert page.eval("window.__explorer.store.resumePoint()") == {"height": 9000200, "hash": "0x" + "7" * 64}
        page.eval(r"""window.__explorer.stream.dispatchEvent(new CustomEvent('message', {detail: {type: 'newBlock',
          data: {height: 9000201, hash: '0x' + '6'.repeat(64), parent_hash: '0x' + '7'.repeat(64), tx_count: 0,
                 timestamp: 1600000025, miner: '0x' + '3'.repeat(40), gas_used: 0}}}))""")
        page.wait(f"document.querySelector(`#blocks li[data-hash='0x{'8' * 64}'][data-orphaned=true]`) !== null",
                  what="the cut-off block orphaned")
        state = page.state()
        assert state["events"][0]["text"].endswith(
            f"Reorg, depth 1: block #9000201 orphaned; chain continues from #9000200 {short('0x' + '7' * 64)}"
            " (seen in the catch-up after a reconnect)")
        assert [r["orphaned"] for r in state["txRows"] if r["blockHash"] == "0x" + "8" * 64] == [True]
        assert page.eval("window.__explorer.store.resumePoint()") == {"height": 9000201, "hash": "0x" + "6" * 64}

        page.click("#blocks li[data-height='9000099'] button")
        page.wait("document.getElementById('details').open", what="the block's details")
        assert page.eval("document.getElementById('details-title').textContent") == "Block #9000099"
        body = page.eval("document.getElementById('details-body').textContent")
        assert "7,500,000 of 30,000,000" in body and "0x" + "9" * 64 in body
        page.click("#details .close")
        page.wait("!document.getElementById('details').open", what="the close button")
        page.click(f"#tx-rows tr[data-hash='0x{'b' * 64}'] button")
        page.wait("document.getElementById('details').open", what="the transaction's details")
        body = page.eval("document.getElementById('details-body').textContent")
        assert f"{eth(str(2**256 - 1))} ETH" in body and "contract creation" in body
        page.click("#details button[data-key]")  # its block, from the transaction
        page.wait("document.getElementById('details-title').textContent === 'Block #9000099'", what="the block from the tx")
        page.press("Escape")
        page.wait("!document.getElementById('details').open", what="Escape")

    def test_a_branch_that_flip_flops_shows_a_block_orphaned_then_canonical_again(self, live):
        """
        The recorded Polygon 13522239/40 (chain heights 91/92): the head goes
        A at 91, B at 91, C on B at 92, then A's child at 92, so A is orphaned
        and then canonical again.  The page shows A struck through and, above
        it, A again as canonical; its chain is the wire's, without a hole.
        """
        page, wire = live.page, live.wire
        page.wait("window.__explorer.store.latest.height >= 94", timeout=30, what="chain height 94")
        state = page.state()
        removed, again = set(), []
        for m in wire.snapshot():
            if m["type"] == "reorg":
                removed.update(r["hash"] for r in m["data"]["removed"])
            elif m["type"] == "newBlock" and m["data"]["hash"] in removed:
                again.append(m["data"]["hash"])
        if not again:  # the tail polls every 20 ms; a starved machine can miss a 0.12 s head
            pytest.skip("the daemon's tail did not see the recorded flip-flop this time")
        for block_hash in again:
            lives = [b["orphaned"] for b in state["store"]["blocks"] if b["hash"] == block_hash]
            assert lives == [True, False]
        assert any(e["kind"] == "reorg" and re.search(r"Reorg, depth \d: blocks? #9[12]", e["text"])
                   for e in state["events"])
        assert_contiguous_without_duplicates(settled_chain(page, wire))
        assert page.eval("window.__explorer.store.resumePoint().height") >= 93

    def test_status_fee_and_log_counts_show_what_the_server_knows(self, live, pages):
        """
        Receipt fields as the server sends them: a failed transaction (status 0)
        is marked in the table and its fee shown; a transaction without a receipt
        (status, fee, gas used and log count null) shows "—", never success or 0;
        a block's details give its log count, or "—" when the server does not know it.
        """
        page = quiet_page(pages, live)
        h = lambda c: "0x" + c * 64
        a = lambda c: "0x" + c * 40
        block = {"height": 9100000, "hash": h("a"), "parent_hash": h("9"), "tx_count": 5, "timestamp": 1700000000,
                 "miner": a("1"), "gas_used": 235000, "gas_limit": 30000000, "base_fee_per_gas": "38119263451",
                 "size": 51234, "burnt_fees_wei": str(38119263451 * 235000), "log_count": 3}
        unknown_block = dict(block, height=9100001, hash=h("b"), parent_hash=h("a"), tx_count=0, gas_used=0,
                             base_fee_per_gas=None, burnt_fees_wei=None, size=None, log_count=None)

        def tx(c, index, status, fee, **more):
            return {"hash": h(c), "from_addr": a("2"), "to_addr": a("3"), "value_wei": "1500000000000000000",
                    "block_height": 9100000, "block_hash": h("a"), "tx_index": index, "nonce": 7, "gas": 100000,
                    "type": 2, "gas_price_wei": "40000000000", "max_fee_per_gas_wei": "50000000000",
                    "max_priority_fee_per_gas_wei": "1500000000", "method_id": "0xa9059cbb", "input_size": 68,
                    "status": status, "gas_used": 52000, "fee_wei": fee, "contract_address": None,
                    "log_count": 3 if status == 1 else 0, **more}

        txs = [
            tx("c", 0, 1, "2080000000000000"),
            tx("d", 1, 0, "1234567890123456"),
            tx("e", 2, None, None, gas_used=None, log_count=None, gas_price_wei="40000000000"),
            tx("f", 3, 1, "400000000000"),  # rounds to nothing: not "0"
            tx("0", 4, 1, "0", gas_price_wei="0", type=0, max_fee_per_gas_wei=None, max_priority_fee_per_gas_wei=None),
        ]
        tell(page, [{"type": "newBlock", "data": block}] + [{"type": "newTx", "data": t} for t in txs]
             + [{"type": "newBlock", "data": unknown_block}])
        page.wait(f"document.querySelectorAll(`#tx-rows tr[data-block-hash='{h('a')}']`).length === 5",
                  what="the transactions")
        # New rows flash as they come in: compare their colours once that is over.
        page.wait(f"document.querySelector(`#tx-rows tr[data-hash='{h('d')}']`).getAnimations().length === 0",
                  what="the new rows' flash over")
        state = page.state()
        rows = {r["hash"]: r for r in state["txRows"]}
        for sent in txs:
            assert rows[sent["hash"]]["cells"] == tx_cells(sent)
        succeeded, failed, unknown = rows[h("c")], rows[h("d")], rows[h("e")]
        assert failed["cells"][1] == "failed" and failed["cells"][5] == "0.001235 ETH"
        assert rows[h("f")]["cells"][5] == "<0.000001 ETH" and rows[h("0")]["cells"][5] == "0 ETH"
        # Visibly: a tinted row with a coloured edge, unlike a successful one.
        assert failed["failed"] and not succeeded["failed"] and not unknown["failed"]
        assert failed["background"] != succeeded["background"]
        assert failed["edge"] != "none" and succeeded["edge"] == "none"
        # Unknown is neither success nor 0, and says "unknown" to a screen reader.
        assert unknown["cells"][1] == unknown["cells"][5] == UNKNOWN
        assert (unknown["status"], unknown["feeWei"]) == ("", "")
        said = page.eval(f"[...document.querySelector(`#tx-rows tr[data-hash='{h('e')}']`).cells]"
                         ".map((td) => td.textContent)")
        assert said[1] == "—status unknown" and said[5] == "—fee unknown"
        assert page.problems() == []
        page.screenshot("status-fee.png")

        fields = open_details(page, f"#tx-rows tr[data-hash='{h('d')}'] button", "Transaction")
        assert fields["Status"] == "failed"
        assert fields["Fee"] == "0.001234567890123456 ETH 1234567890123456 wei"
        assert fields["Gas used"] == "52,000 of 100,000 (its gas limit)"
        assert fields["Gas price"] == "40 gwei · max 50 gwei · priority 1.5 gwei"
        assert fields["Call"] == "0xa9059cbb · 68 bytes of input" and fields["Logs"] == "0"
        close_details(page)
        fields = open_details(page, f"#tx-rows tr[data-hash='{h('e')}'] button", "Transaction")
        assert fields["Status"] == fields["Fee"] == "— the server has no receipt for it"
        assert fields["Gas used"] == "— of 100,000 (its gas limit)"
        assert fields["Logs"] == "— the server does not know its logs"
        close_details(page)

        fields = open_details(page, "#blocks li[data-height='9100000'] button", "Block #9100000")
        assert fields["Logs"] == "3"
        assert fields["Base fee"] == "38.119 gwei (38119263451 wei)"
        assert fields["Burnt fees"] == f"{eth(block['burnt_fees_wei'])} ETH" and fields["Size"] == "51,234 bytes"
        close_details(page)
        fields = open_details(page, "#blocks li[data-height='9100001'] button", "Block #9100001")
        assert fields["Logs"] == "— the server does not know this block's logs"
        assert fields["Size"] == UNKNOWN
        close_details(page)

    def test_the_events_view_lists_logs_and_marks_the_ones_a_reorg_removed(self, live, pages):
        """
        The recorded Polygon reorg at 13522194, told as the server tells a
        newBlocks + newTxs + logs subscriber (messages built by explorerd's own
        Entry from the recorded blocks and logs): the parent and the orphan with
        their logs; the reorg, the orphan's logs again with "removed": true, then
        the replacement.  The events view lists every log (event, contract,
        transaction, block), newest first; the orphan's stay, struck through and
        tagged removed, as orphaned blocks do.
        """
        page = quiet_page(pages, live)
        known = page.eval("import('./topics.js').then((m) => m.KNOWN_EVENTS)")
        logs = recorded_logs("polygon")
        run = {int(b["number"], 16): b for b in load_blocks("polygon_13522175-13522230")}
        orphan_block = next(b for b in load_blocks("polygon.reorged") if int(b["number"], 16) == 13522194)
        parent, orphan, replacement = (Entry.fromNode(b, logs=logs[b["hash"]])
                                       for b in (run[13522193], orphan_block, run[13522194]))
        assert orphan.parent_hash == replacement.parent_hash == parent.hash != orphan.hash
        assert 0 < len(parent.logs) + len(orphan.logs) + len(replacement.logs) <= 100  # all of them in view

        ours = (parent.hash, orphan.hash, replacement.hash)
        count = f"[...document.querySelectorAll('#log-rows tr[data-key]')].filter((tr) => {json.dumps(ours)}" \
                ".includes(tr.dataset.blockHash)).length"

        def rows():
            state = page.state()
            return state, [r for r in state["logRows"] if r["blockHash"] in ours]

        tell(page, block_messages(parent) + block_messages(orphan))
        page.wait(f"{count} === {len(parent.logs) + len(orphan.logs)}", what="the recorded logs")
        state, shown_rows = rows()
        shown = [(e, log) for e in (parent, orphan) for log in e.logs][::-1]  # newest first
        assert state["logRows"][:len(shown)] == shown_rows  # above anything older
        assert [(r["blockHash"], r["logIndex"]) for r in shown_rows] == [(e.hash, log["log_index"]) for e, log in shown]
        for row, (e, log) in zip(shown_rows, shown):
            assert row["cells"] == log_cells(log, e.height, known)
            assert (row["address"], row["topic"], row["txHash"]) == (log["address"], log["topics"][0], log["tx_hash"])
            assert not row["removed"] and row["struck"] == "none" and not row["tagShown"]
            assert row["txLink"]  # its transaction is in the table
        assert any(r["cells"][0].startswith("Transfer ") for r in shown_rows)
        assert not state["logs"]["emptyShown"] and not state["logs"]["noticeShown"]

        # The same logs again (a replay overlapping what the page holds) are dropped.
        duplicates = state["store"]["duplicates"]["logs"]
        tell(page, block_messages(parent)[-1:])
        assert page.state()["store"]["duplicates"]["logs"] == duplicates + len(parent.logs)

        reorg = {"type": "reorg", "data": {"depth": 1, "common_ancestor": parent.ref(), "removed": [orphan.ref()]}}
        retracted = {"type": "logs", "data": logs_data(orphan.data, orphan.logs, removed=True)}
        tell(page, [reorg, retracted] + block_messages(replacement))
        total = len(parent.logs) + len(orphan.logs) + len(replacement.logs)
        page.wait(f"{count} === {total}", what="the replacement's logs")
        state, shown_rows = rows()
        shown = [(e, log) for e in (parent, orphan, replacement) for log in e.logs][::-1]
        assert [(r["blockHash"], r["logIndex"]) for r in shown_rows] == [(e.hash, log["log_index"]) for e, log in shown]
        for row, (e, log) in zip(shown_rows, shown):
            gone = e is orphan
            assert row["cells"] == log_cells(log, e.height, known, removed=gone)
            assert row["removed"] == row["tagShown"] == gone
            assert ("line-through" in row["struck"]) == gone
        assert state["store"]["duplicates"]["logs"] == duplicates + len(parent.logs)
        page.eval(SHOW_REMOVED_LOGS_JS)
        page.screenshot("events.png", "dashboard-events.png")

        # A log's details: everything it carries, and the way to its transaction.
        log = replacement.logs[0]
        key = next(r["key"] for r in shown_rows
                   if r["blockHash"] == replacement.hash and r["logIndex"] == log["log_index"])
        name = known.get(log["topics"][0])
        fields = open_details(page, f"#log-rows tr[data-key='{key}'] .c-event button",
                              f"Event {name.split('(')[0]}" if name else "Event")
        assert fields["Status"] == "in a canonical block" and fields["Contract"] == log["address"]
        assert fields["Topics" if len(log["topics"]) > 1 else "Topic"] == " ".join(log["topics"])
        assert fields["Transaction"] == f"{log['tx_hash']} · index {log['tx_index']}"
        assert fields["Block"] == f"#{replacement.height} · log index {log['log_index']}"
        assert page.eval("JSON.parse(document.querySelector('#details pre').textContent)") == log
        page.click("#details dd button[data-key]")  # its transaction
        page.wait("document.getElementById('details-title').textContent === 'Transaction'", what="the log's transaction")
        assert page.eval(DETAILS_JS)["Hash"] == log["tx_hash"]
        close_details(page)
        fields = open_details(page, f"#blocks li[data-hash='{replacement.hash}'] button", f"Block #{replacement.height}")
        assert fields["Logs"] == str(len(replacement.logs))
        close_details(page)

        # On a phone: one column, each log a two-line card, nothing wider than the screen.
        page.viewport(PHONE)
        try:
            page.eval("document.getElementById('logs-pane').scrollIntoView()")
            page.eval(SHOW_REMOVED_LOGS_JS)
            page.wait("document.documentElement.scrollWidth <= 390", what="no horizontal overflow on a phone")
            page.screenshot("events-phone.png", "dashboard-events-phone.png")
            layout = page.eval("""(() => { const r = (s) => document.querySelector(s).getBoundingClientRect();
                const row = document.querySelector('#log-rows tr[data-key]');
                return {txsBottom: r('.pane-txs').bottom, logsTop: r('.pane-logs').top,
                        rowDisplay: getComputedStyle(row).display, width: r('.pane-logs').width}; })()""")
            assert layout["logsTop"] >= layout["txsBottom"] and layout["rowDisplay"] == "grid"
            assert layout["width"] <= 390
        finally:
            page.viewport(DESKTOP)
        assert page.problems() == []

    def test_a_retracted_log_is_marked_removed_and_live_again_when_sent_again(self, live, pages):
        """
        "removed": true marks exactly the logs it lists, even without a reorg
        the page saw; the same log sent again later (its block canonical
        again) is a new, live row above the removed one.  A log without topics
        (an anonymous event) says so.
        """
        page = quiet_page(pages, live)
        h = lambda c: "0x" + c * 64
        a = lambda c: "0x" + c * 40
        block = {"height": 9200000, "hash": h("a"), "parent_hash": h("9"), "tx_count": 0, "timestamp": 1700000000,
                 "miner": a("1"), "gas_used": 0, "gas_limit": 30000000, "base_fee_per_gas": None, "size": None,
                 "burnt_fees_wei": None, "log_count": 2}
        first = {"address": a("4"), "topics": [h("7"), h("8")], "data": "0x", "tx_hash": h("c"), "tx_index": 0,
                 "log_index": 0}
        anonymous = {"address": a("5"), "topics": [], "data": "0x1234", "tx_hash": h("c"), "tx_index": 0,
                     "log_index": 1}
        logs = {"type": "logs", "data": {"block_height": 9200000, "block_hash": h("a"), "removed": False,
                                          "logs": [first, anonymous]}}
        ours = f"#log-rows tr[data-block-hash='{h('a')}']"

        def our_rows():
            return [r for r in page.state()["logRows"] if r["blockHash"] == h("a")]

        tell(page, [{"type": "newBlock", "data": block}, logs])
        page.wait(f"document.querySelectorAll(`{ours}`).length === 2", what="two logs")
        rows = our_rows()
        assert [r["cells"] for r in rows] == [log_cells(anonymous, 9200000, {}), log_cells(first, 9200000, {})]
        assert rows[0]["cells"][0] == "no topic" and not rows[0]["txLink"]

        tell(page, [{"type": "logs", "data": dict(logs["data"], removed=True, logs=[first])}])
        page.wait(f"document.querySelector(`{ours}[data-removed=true]`) !== null", what="the retracted log")
        rows = our_rows()
        assert [(r["logIndex"], r["removed"], r["tagShown"]) for r in rows] == [(1, False, False), (0, True, True)]
        assert "line-through" in rows[1]["struck"]
        assert rows[1]["cells"] == log_cells(first, 9200000, {}, removed=True)

        tell(page, [{"type": "logs", "data": dict(logs["data"], logs=[first])}])
        page.wait(f"document.querySelectorAll(`{ours}`).length === 3", what="the log, live again")
        rows = our_rows()
        assert [(r["logIndex"], r["removed"]) for r in rows] == [(0, False), (1, False), (0, True)]
        assert page.state()["store"]["duplicates"]["logs"] == 0
        assert page.problems() == []

    def test_logs_unavailable_is_said_in_the_events_view(self, live, pages):
        """
        A server without logs answers the subscribe with logs_unavailable and
        serves the other channels: the events view says so (not as a chain
        event); a later connection that gets logs clears it.
        """
        page = quiet_page(pages, live)
        tell(page, [{"type": "error", "error": {"code": "logs_unavailable", "message":
                     "this server does not fetch logs (EXPLORERD_RECEIPTS=off); the logs channel is off"}},
                    {"type": "subscribed", "channels": ["newBlocks", "newTxs"]}])
        page.wait("window.__explorer.logsAvailable === false", what="logs unavailable")
        state = page.state()
        assert state["logs"]["notice"] == "Logs are not available on this server, so no events can be shown."
        assert state["logs"]["noticeShown"] and not state["logs"]["emptyShown"]
        assert not any(e["kind"] == "error" for e in state["events"])
        assert page.eval("document.getElementById('logs-notice').getAttribute('role')") == "status"
        page.screenshot("logs-unavailable.png")

        tell(page, [{"type": "subscribed", "channels": ["logs", "newBlocks", "newTxs"]}])
        page.wait("window.__explorer.logsAvailable === true", what="logs available again")
        state = page.state()
        assert state["logs"]["notice"] == "" and not state["logs"]["noticeShown"]
        assert state["logs"]["emptyShown"] == (state["logRows"] == [])
        assert page.problems() == []

    def test_offline_then_back_online_resumes(self, live, browser, pages):
        """
        The browser says it is offline: the page says so and waits; online again,
        it resumes.  (Last in the class: the whole browser goes offline, the
        other pages too.)
        """
        page = pages(live.daemon.http)
        page.wait("window.__explorer.state === 'live' && window.__explorer.store.timeline.length >= 3", what="live")
        try:
            browser.call("offline", value=True)
            page.wait("window.__explorer.state === 'offline'", what="offline")
            page.wait("document.getElementById('conn').textContent.trim() === 'Offline · waiting for the network'",
                      what="'Offline' shown")
            held = page.eval("window.__explorer.store.resumePoint()")
            live.wire.wait_for_more_blocks(3)  # blocks go by meanwhile
        finally:
            browser.call("offline", value=False)
        page.wait("window.__explorer.state === 'live' && window.__explorer.log.answers.length >= 2", what="live again")
        state = page.state()
        assert state["sent"][-1]["since"] == held
        assert state["answers"][-1]["type"] == "subscribed" and state["answers"][-1]["replayed"] >= 1
        assert [s["state"] for s in state["states"]][-3:] == ["offline", "reconnecting", "live"]
        assert_contiguous_without_duplicates(settled_chain(page, live.wire))


@pytest.mark.parametrize("outage", ["cut", "silence"])
def test_resume_after_a_network_drop_has_no_gap_and_no_duplicate(daemons, pages, outage):
    """
    The page reaches the daemon through a proxy that drops the network:
    "cut" closes the connection (and refuses new ones for 1 s); "silence"
    lets nothing through without closing anything, which only the page's
    heartbeat (0.5 s here) can notice.  Either way the page reconnects,
    resumes with "since" and the daemon replays exactly what it missed.
    """
    daemon = daemons(block_time=0.1, poll_interval=0.02)
    wire = Wire(daemon.ws_url)
    proxy = Proxy(daemon.port)
    try:
        page = pages(f"http://127.0.0.1:{proxy.port}/?heartbeat=0.5")
        page.wait("window.__explorer.state === 'live' && window.__explorer.store.timeline.length >= 5", what="live")
        before = page.state()
        held = canonical_runs(before["store"]["blocks"], 0)[-1]
        if outage == "cut":
            proxy.cut(refuse_for=1.0)
        else:
            proxy.silence()
        page.wait("window.__explorer.state === 'reconnecting'", what="reconnecting")
        page.wait("window.__explorer.state === 'live' && window.__explorer.log.answers.length >= 2",
                  timeout=20, what="live again")
        page.wait(f"window.__explorer.store.latest.height >= {held['height'] + 12}", what="the stream going on")
        after = page.state()
        blocks = settled_chain(page, wire)
    finally:
        proxy.close()
        wire.close()

    states = [s["state"] for s in after["states"]]
    assert states[:2] == ["connecting", "live"]
    assert states[-1] == "live" and "reconnecting" in states[2:]
    lost = next(s for s in after["states"][2:] if s["state"] == "reconnecting")
    if outage == "silence":
        assert re.search(r"no message for \d+ s", lost["reason"])
    else:
        assert "closed" in lost["reason"]
    assert any(re.fullmatch(r"Reconnecting in \d+ s", text) for text in after["shown"]), after["shown"]
    assert after["shown"][-1] == "Live"

    # Resumed from the last block it held, and the server replayed the rest.
    resume = after["sent"][-1]
    assert resume["channels"] == ["newBlocks", "newTxs", "logs"]
    assert resume["since"]["height"] >= held["height"]
    by_hash = {b["hash"]: b for b in after["store"]["blocks"]}
    assert by_hash[resume["since"]["hash"]]["height"] == resume["since"]["height"]
    subscribed = [a for a in after["answers"] if a["type"] == "subscribed"][-1]
    assert subscribed["replayed"] >= 1
    assert not any(a["type"] == "error" for a in after["answers"])
    assert after["store"]["gaps"] == [] and not any(i["gap"] for i in after["tickerItems"])
    assert any(e["kind"] == "resume" and re.search(r"Reconnected after #\d+: \d+ missed blocks? caught up", e["text"])
               for e in after["events"])

    # No gap, no duplicate, the same chain as the wire, every transaction there.
    assert_contiguous_without_duplicates(blocks)
    for b in blocks[:-1]:  # the newest one's transactions may still be on their way
        assert b["txsSeen"] == b["txCount"], f"block {b['height']} is missing transactions"
    assert after["connections"] >= 2
    assert page.problems() == []


def test_a_daemon_restart_on_the_same_port_shows_reconnecting_live_and_a_gap(daemons, pages):
    """
    SIGTERM the daemon and start a new one on the same port.  The new one's
    replay node starts its chain over at height 1, so it cannot resume the
    page's stream: it says history_unavailable, and the page marks a gap and
    goes on with the new chain.
    """
    first = daemons(block_time=0.1, poll_interval=0.02)
    page = pages(first.http)
    page.wait("window.__explorer.state === 'live' && window.__explorer.store.timeline.length >= 10", what="10 blocks")
    first.stop()
    page.wait("window.__explorer.state === 'reconnecting'", what="reconnecting")
    page.wait("/^Reconnecting in \\d+ s$/.test(document.getElementById('conn').textContent.trim())",
              what="'Reconnecting in N s'")
    held = canonical_runs(page.state()["store"]["blocks"], 0)[-1]

    # A slow chain, so the new daemon stays far below the page's height.
    second = daemons(port=first.port, block_time=1.0, poll_interval=0.05)
    wire = Wire(second.ws_url)
    try:
        page.wait("window.__explorer.state === 'live' && window.__explorer.store.epoch === 1", timeout=20,
                  what="live again, after a gap")
        page.wait("window.__explorer.store.timeline.some((r) => r.kind === 'block' && r.epoch === 1)", what="new blocks")
        page.wait("document.querySelector('#blocks li.gap') !== null", what="the gap marker")
        # A block both the wire client and the page got (the page may have joined first).
        wire_first = wire.first_block()
        page.wait(f"window.__explorer.store.epoch === 1 && window.__explorer.store.latest.height >= {wire_first['height']}",
                  what="a block the wire client got too")
        page.screenshot("after-restart.png")
        state = page.state()
        wire.wait_for_blocks([b["hash"] for b in canonical_runs(state["store"]["blocks"], 1)
                              if b["height"] >= wire_first["height"]])
    finally:
        wire.close()

    states = [s["state"] for s in state["states"]]
    assert states[:2] == ["connecting", "live"] and states[-1] == "live"
    first_lost = next(s for s in state["states"] if s["state"] == "reconnecting")
    assert "1001 server shutting down" in first_lost["reason"]

    assert state["sent"][-1]["since"] == {"height": held["height"], "hash": held["hash"]}
    error = next(a for a in state["answers"] if a["type"] == "error")
    assert error["error"]["code"] == "history_unavailable"
    assert state["answers"][-1]["type"] == "subscribed"

    gap = next(i for i in state["tickerItems"] if i["gap"])
    assert gap["after"] == str(held["height"]) and f"after #{held['height']}" in gap["text"]
    assert any(e["kind"] == "gap" and "could not resume" in e["text"] for e in state["events"])
    # Newest first: the new chain above the marker, the old one below it.
    items = state["tickerItems"]
    marker = items.index(gap)
    assert all(i["epoch"] == 1 for i in items[:marker]) and all(i["epoch"] == 0 for i in items[marker + 1:])

    old, new = canonical_runs(state["store"]["blocks"], 0), canonical_runs(state["store"]["blocks"], 1)
    assert_contiguous_without_duplicates(old)
    assert_contiguous_without_duplicates(new)
    # The new chain is the new daemon's.
    chain = wire.canonical()
    overlap = [b for b in new if b["height"] >= wire_first["height"]]
    assert overlap and all(chain[b["height"]] == b["hash"] for b in overlap)
    assert page.problems() == []


def test_a_server_without_logs_says_so_and_serves_the_rest(daemons, pages):
    """
    A real daemon with EXPLORERD_RECEIPTS=off (here --receipts off): the
    page's subscribe gets logs_unavailable, then the other channels; the
    events view says logs are not available, blocks and transactions go on.
    """
    daemon = daemons(block_time=0.1, poll_interval=0.02, receipts="off")
    page = pages(daemon.http)
    page.wait("window.__explorer.state === 'live' && document.querySelectorAll('#blocks li.block').length >= 3 && "
              "document.querySelectorAll('#tx-rows tr[data-hash]').length >= 3", what="blocks and transactions")
    state = page.state()
    assert state["sent"][0]["channels"] == ["newBlocks", "newTxs", "logs"]
    error, subscribed = state["answers"][:2]
    assert error["type"] == "error" and error["error"]["code"] == "logs_unavailable"
    assert subscribed["type"] == "subscribed" and sorted(subscribed["channels"]) == ["newBlocks", "newTxs"]
    assert state["logs"]["available"] is False and state["logs"]["noticeShown"]
    assert state["logs"]["notice"] == "Logs are not available on this server, so no events can be shown."
    assert state["logRows"] == [] and not state["logs"]["emptyShown"]
    assert not any(e["kind"] == "error" for e in state["events"])
    # Without receipts nothing is known of a transaction's outcome: "—", never success or 0.
    assert all(r["cells"][1] == UNKNOWN and r["cells"][5] == UNKNOWN for r in state["txRows"])
    page.screenshot("receipts-off.png")
    page.eval("window.__explorer.stream.stop()")  # so that the newest block stays the newest
    newest = page.state()["tickerItems"][0]
    fields = open_details(page, f"#blocks li[data-hash='{newest['hash']}'] button", f"Block #{newest['height']}")
    assert fields["Logs"] == "— the server does not know this block's logs"
    assert page.problems() == []
