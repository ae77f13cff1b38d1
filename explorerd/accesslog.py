"""
The HTTP access log at a bounded cost.

twisted.web writes a line per request, and formatting and writing one
costs more than answering C{/healthz} (about 26 µs against 21 µs here): a
flood of scrapers made the daemon spend half its time logging them.  The
first C{per_second} requests of each second still get their line, in
twisted.web's combined log format; the rest are counted by path and told
in one line when their second is over.
"""

from twisted.logger import Logger


class AccessLog:
    """Hands at most C{per_second} requests a second to C{write}; sums up the rest."""

    log = Logger()

    def __init__(self, clock, write, per_second=100, paths=8):
        self._clock = clock
        self._write = write
        self.per_second = per_second
        self._paths = paths  # most paths named in a summary; the rest are "other paths"
        self._second_ends = None
        self._lines = 0
        self._skipped = {}  # path → requests not logged one by one this second
        self._call = None

    def record(self, request):
        now = self._clock.seconds()
        if self._second_ends is None or now >= self._second_ends:
            self._tell()
            self._second_ends = now + 1.0
            self._lines = 0
        if self._lines < self.per_second:
            self._lines += 1
            self._write(request)
            return
        skipped = self._skipped
        path = request.path
        if path not in skipped and len(skipped) >= self._paths:
            path = None
        skipped[path] = skipped.get(path, 0) + 1
        if self._call is None:
            self._call = self._clock.callLater(self._second_ends - now, self._tell)

    def stop(self):
        """Tells what is still counted; no timer is left behind."""
        self._tell()

    def _tell(self):
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        if not self._skipped:
            return
        skipped, self._skipped = self._skipped, {}
        self.log.info("{count} more HTTP requests in the last second, not logged one by one: {paths}",
                      count=sum(skipped.values()),
                      paths=", ".join(f"{_printable(path)} {n}" for path, n in
                                      sorted(skipped.items(), key=lambda item: -item[1])))


def _printable(path):
    if path is None:
        return "(other paths)"
    text = repr(path[:100])[2:-1]  # control characters and non-ASCII escaped
    return text + "…" if len(path) > 100 else text
