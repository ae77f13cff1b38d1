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
        [s.option, None, None, f"{s.doc} [env {s.env}, default {s.default or '(empty)'}]"]
        for s in SETTINGS
    ]

    def postOptions(self):
        """
        Load and check the settings.  A bad one stops start-up with its
        message alone: twistd and twist print their whole usage (some 160
        lines) before the message of a L{usage.UsageError}, which buries it.
        """
        try:
            self.config = Config.load(os.environ, {s.option: self[s.option] for s in SETTINGS})
        except ConfigError as e:
            raise SystemExit(f"explorerd: {e}") from None


def makeService(options):
    from twisted.internet import reactor

    from explorerd.daemon import Daemon

    config = options.config
    return Daemon(config, reactor, web_root=config.web_root or None)
