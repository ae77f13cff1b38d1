// The connection to explorerd's /v1/stream: one native WebSocket at a time,
// re-opened with exponential backoff and jitter, resumed with "since" so a
// drop or a daemon restart leaves no gap and no duplicate, and an app-level
// {"action":"ping"} heartbeat (browsers cannot send WebSocket pings) that
// notices a connection that went silent without closing.
//
// Events (CustomEvent, detail in parentheses):
//   "state"   ({state, reason, retryAt, attempt})  connecting | live | reconnecting | offline
//   "message" (the parsed server message)
//   "sent"    (the message sent)

/** The stream's URL next to the page: ws: for http:, wss: for https:, same host and path prefix. */
export function streamUrl(loc = window.location, path = "v1/stream") {
  const url = new URL(path, loc.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = url.hash = "";
  return url.href;
}

export class StreamClient extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.url
   * @param {string[]} o.channels
   * @param {() => ({height:number, hash:string}|null)} o.resumePoint  the last block we hold
   * @param {number} [o.heartbeatMs]  ping period; silence for ~2 of them means a dead connection
   * @param {number} [o.baseDelayMs]  first reconnect delay (before jitter)
   * @param {number} [o.maxDelayMs]   longest reconnect delay
   */
  constructor({ url, channels, resumePoint, heartbeatMs = 15000, baseDelayMs = 500, maxDelayMs = 30000 }) {
    super();
    this.url = url;
    this.channels = channels;
    this.resumePoint = resumePoint;
    this.heartbeatMs = heartbeatMs;
    this.baseDelayMs = baseDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.connectTimeoutMs = Math.min(10000, Math.max(1000, 2 * heartbeatMs));
    this.state = "idle";
    this.attempt = 0; // failed attempts since the last good connection
    this.connections = 0; // sockets opened, for the record
    this.ws = null;
    this.generation = 0;
    this.retryAt = null;
    this.lastMessageAt = 0;
    this.pingSentAt = 0;
    this._retryTimer = null;
    this._heartbeat = null;
    this._connectTimer = null;
    this._everLive = false;
    this._stopped = true;
  }

  start() {
    if (!this._stopped) return;
    this._stopped = false;
    this._onOnline = () => this.retryNow("the network is back");
    this._onOffline = () => this._lost("the browser went offline");
    this._onVisible = () => {
      if (document.visibilityState === "visible" && this._retryTimer) this.retryNow("the page is visible again");
    };
    window.addEventListener("online", this._onOnline);
    window.addEventListener("offline", this._onOffline);
    document.addEventListener("visibilitychange", this._onVisible);
    this._connect();
  }

  stop() {
    this._stopped = true;
    window.removeEventListener("online", this._onOnline);
    window.removeEventListener("offline", this._onOffline);
    document.removeEventListener("visibilitychange", this._onVisible);
    this._teardown();
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._setState("idle", {});
  }

  /** Give up waiting and try now (the network came back, the user is looking). */
  retryNow(reason) {
    if (this._stopped || this.state === "live" || (this.ws && this.ws.readyState === WebSocket.CONNECTING)) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this.attempt = 0;
    this._connect(reason);
  }

  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    this._emit("sent", message);
    return true;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, { reason = null, retryAt = null } = {}) {
    this.state = state;
    this.retryAt = retryAt;
    this._emit("state", { state, reason, retryAt, attempt: this.attempt });
  }

  _connect(reason = null) {
    if (this._stopped) return;
    if (navigator.onLine === false) {
      this._setState("offline", { reason: "the browser is offline" });
      return;
    }
    this._teardown();
    const generation = ++this.generation;
    this._setState(this._everLive ? "reconnecting" : "connecting", { reason });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this._lost(`cannot open ${this.url}: ${e.message}`);
      return;
    }
    this.ws = ws;
    this.connections += 1;
    const current = () => generation === this.generation && !this._stopped;
    this._connectTimer = setTimeout(() => {
      if (current()) this._lost("the connection did not open in time");
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      if (!current()) return;
      clearTimeout(this._connectTimer);
      this.lastMessageAt = Date.now();
      this.pingSentAt = 0;
      const message = { action: "subscribe", channels: this.channels };
      const since = this.resumePoint();
      if (since) message.since = { height: since.height, hash: since.hash };
      this.send(message);
      this._heartbeat = setInterval(() => this._beat(), this.heartbeatMs);
    };
    ws.onmessage = (event) => {
      if (!current()) return;
      this.lastMessageAt = Date.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!message || typeof message !== "object" || typeof message.type !== "string") return;
      if (message.type === "subscribed" && this.state !== "live") {
        this.attempt = 0;
        this._everLive = true;
        this._setState("live", {});
      }
      this._emit("message", message);
    };
    ws.onclose = (event) => {
      if (!current()) return;
      const why = event.reason ? `${event.code} ${event.reason}` : `code ${event.code}`;
      this._lost(`the connection closed (${why})`);
    };
    ws.onerror = () => {}; // a close event always follows
  }

  _beat() {
    const now = Date.now();
    // Dead: the last ping is unanswered after a whole period and nothing at
    // all has arrived for two.  (Timers in a background tab can run late;
    // asking "was the last ping answered" keeps a late timer from killing a
    // healthy connection.)
    if (this.pingSentAt > this.lastMessageAt && now - this.pingSentAt >= this.heartbeatMs
        && now - this.lastMessageAt >= 2 * this.heartbeatMs) {
      this._lost(`no message for ${Math.round((now - this.lastMessageAt) / 1000)} s`);
      return;
    }
    if (this.send({ action: "ping" })) this.pingSentAt = now;
  }

  _teardown() {
    clearInterval(this._heartbeat);
    clearTimeout(this._connectTimer);
    this._heartbeat = this._connectTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        try {
          ws.close(1000, "reconnecting");
        } catch {
          /* already closing */
        }
      }
    }
  }

  _lost(reason) {
    if (this._stopped) return;
    this.generation += 1; // late events of the old socket are ignored
    this._teardown();
    clearTimeout(this._retryTimer);
    if (navigator.onLine === false) {
      this._retryTimer = null;
      this._setState("offline", { reason });
      return;
    }
    const delay = this.backoff(this.attempt);
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._connect();
    }, delay);
    this._setState("reconnecting", { reason, retryAt });
  }

  /** Exponential backoff with "equal jitter": half fixed, half random. */
  backoff(attempt) {
    const ceiling = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(attempt, 20));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }
}
