"""
Run a daemon in the foreground for C{tox -e run}: a stop by Ctrl-C or
SIGTERM is a success.

twistd re-raises the SIGINT or SIGTERM it stopped on once its clean
shutdown is done (service managers expect that), so tox saw a process
killed by a signal and reported C{FAIL code -15} and C{evaluation failed}
for an ordinary stop.  Here a child ended by one of those two signals
exits 0; any other status (a bad setting, a port in use, a crash) is passed
on as it is.

    python tools/foreground.py twistd --nodaemon --pidfile= explorerd ...
"""

import signal
import subprocess
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv):
    if not argv:
        sys.exit("usage: foreground.py COMMAND [ARGUMENTS...]")
    child = subprocess.Popen(argv)
    # Ctrl-C reaches the child from the terminal (we share its process
    # group); a second SIGINT from us would make twistd stop twice.  A
    # SIGTERM sent to us alone (tox does, if a stop takes too long) is
    # passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    status = child.wait()
    if -status in STOP_SIGNALS:
        print(f"{argv[0]} stopped by {signal.Signals(-status).name}", file=sys.stderr)
        return 0
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
