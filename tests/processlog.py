"""Reading a child process's output line by line, waiting for a log line without sleeping."""

import queue
import re
import threading
import time


class ProcessLog:
    """
    Mixed into a test's process wrapper: C{self.proc} a C{subprocess.Popen}
    with text stdout; C{self.log} collects every line read so far.
    """

    def readOutput(self):
        self.lines = queue.Queue()
        self.log = []
        threading.Thread(target=self._readLines, args=(self.proc, self.lines), daemon=True).start()

    @staticmethod
    def _readLines(proc, lines):
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def wait_for(self, pattern, timeout=20):
        """The first match of C{pattern} in the lines still to come; fails with the log."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"never saw {pattern!r}; log:\n" + "".join(self.log))
            self.log.append(line)
            match = re.search(pattern, line)
            if match:
                return match
