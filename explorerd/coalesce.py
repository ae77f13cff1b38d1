"""
An HTTP answer computed at most once per interval, however many ask.

C{/metrics} and C{/healthz} are cheap to ask for and not so cheap to
compute (a Prometheus render of every metric, a JSON status): a flood of
keep-alive scrapers made the daemon compute them thousands of times a
second.  Serving a cached copy for a while would answer a scrape with
numbers from before it was sent, which a test or an operator who acts and
then looks would misread; so here nobody gets an answer older than their
request: the first request after a quiet interval is computed at once, and
those that come within the interval wait for its end and share one
computation.  A scraper's next pipelined request waits behind its last, so
a flood of them is answered at the pace of the interval.
"""

from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

FAILED = (500, ((b"Content-Type", b"text/plain; charset=utf-8"),), b"could not compute the answer\n")


class Coalesced:
    """
    Answers HTTP requests with C{compute()}, a C{(code, headers, body)}
    tuple, computed at most once per C{interval} seconds of C{clock}.
    """

    log = Logger()

    def __init__(self, clock, compute, interval):
        self._clock = clock
        self._compute = compute
        self.interval = interval
        self._computed = None  # when compute() last ran
        self._waiting = {}  # request → None, in arrival order
        self._call = None

    def render(self, request):
        """What a resource's C{render_GET} returns: the answer's body, or C{NOT_DONE_YET}."""
        now = self._clock.seconds()
        if not self._waiting and (self._computed is None or now - self._computed >= self.interval):
            self._computed = now
            body = self._answer(request, self._compute())
            return b"" if request.method == b"HEAD" else body  # (its length is set)
        self._waiting[request] = None
        request.notifyFinish().addErrback(self._gone, request)
        if self._call is None:
            self._call = self._clock.callLater(max(0.0, self._computed + self.interval - now), self._flush)
        return NOT_DONE_YET

    @property
    def waiting(self):
        """How many requests wait for the next computation."""
        return len(self._waiting)

    def _gone(self, failure, request):
        # The client went away before its answer: forget it, and the timer if nobody else waits.
        self._waiting.pop(request, None)
        if not self._waiting and self._call is not None:
            self._call.cancel()
            self._call = None

    def _flush(self):
        self._call = None
        waiting, self._waiting = self._waiting, {}
        if not waiting:
            return
        self._computed = self._clock.seconds()
        try:
            answer = self._compute()
        except Exception:
            self.log.failure("computing an answer for {n} waiting requests", n=len(waiting))
            answer = FAILED
        for request in waiting:
            body = self._answer(request, answer)
            request.write(body)
            request.finish()

    @staticmethod
    def _answer(request, answer):
        code, headers, body = answer
        request.setResponseCode(code)
        for name, value in headers:
            request.setHeader(name, value)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body
