"""
twistd/twist plugin: C{Options} and C{makeService}.

Every option defaults to "not given" so that the environment's
C{WEBSOCKET_*} value, or else the built-in default, applies; an option on
the command line wins over both.
"""

import os

from twisted.python import usage

from explorerd.config import SETTINGS, Config, ConfigError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Stream new Ethereum blocks and transactions to WebSocket clients. "
        "Every option can also be set by the environment variable named in its help; "
        "the option wins."
    )
    optParameters = [
        [s.option, None, None, f"{s.doc} [env {s.env}, default {s.default}]"]
        for s in SETTINGS
    ] + [
        ["web-root", None, None, "Directory served at / (the dashboard) [default: the bundled web/]"],
    ]

    def postOptions(self):
        try:
            self.config = Config.load(os.environ, {s.option: self[s.option] for s in SETTINGS})
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options):
    from twisted.internet import reactor

    from explorerd.daemon import Daemon

    return Daemon(options.config, reactor, web_root=options["web-root"])
