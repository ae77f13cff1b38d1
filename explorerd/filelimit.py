"""
Open files enough for C{WEBSOCKET_MAX_CONNECTIONS}.

Every connection is a file descriptor.  Past the process's open-file limit
a new connection cannot even be accepted: Twisted closes it at once (the
client sees a reset, not our 503), and explorerd itself can no longer open
a file (its state file, a log).  Measured (bench/RESULTS-connections.md):
one process at a 20,000 cap held 19,980 subscribed connections with every
block delivered; at 20,000 the rest were reset.
"""

import resource

# Descriptors explorerd needs besides its clients: the listener, the reactor's
# own, the node's HTTP and WebSocket connections, the state file, logs.
RESERVE = 64


def ensureFiles(connections, getrlimit=resource.getrlimit, setrlimit=resource.setrlimit):
    """
    Raise the soft open-file limit, as far as the hard one allows, to
    C{connections} plus L{RESERVE}.  Returns C{None} when there is room,
    else a warning that names the setting, the limit and what to do.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    need = connections + RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(hard, need)
        if raised > soft:
            try:
                setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    most = max(0, soft - RESERVE)
    return (f"WEBSOCKET_MAX_CONNECTIONS is {connections}, but this process may open only {soft} files "
            f"(hard limit {hard}): past about {most} connections new ones are reset instead of refused with "
            f"503, and explorerd cannot open its own files. Set WEBSOCKET_MAX_CONNECTIONS to at most {most}, "
            f"or raise the limit (ulimit -n, systemd LimitNOFILE=).")
