"""Settings: defaults, environment, options, and start-up refusing bad values by name."""

import pytest

from explorerd.config import SETTINGS, Config, ConfigError, parse_duration, parse_size, settings_table


def test_defaults_match_the_documented_ones():
    c = Config.load({}, {})
    assert c.max_connections == 1000
    assert c.ping_interval == 30.0 and c.pong_timeout == 60.0 and c.write_deadline == 10.0
    assert c.read_buffer_size == 1024 and c.write_buffer_size == 1024
    assert c.send_queue == 256 and c.max_message_size == 1 << 20
    assert c.rate_limit == 10 and c.trusted_proxies == 0
    assert c.cors_origins == ("*",)
    assert c.poll_interval == 1.0 and c.rpc_retry == 30.0


def test_environment_then_options_win():
    env = {"WEBSOCKET_MAX_CONNECTIONS": "50", "WEBSOCKET_PING_INTERVAL": "500ms",
           "API_CORS_ORIGINS": "https://a.example, https://b.example/"}
    c = Config.load(env, {})
    assert c.max_connections == 50 and c.ping_interval == 0.5
    assert c.cors_origins == ("https://a.example", "https://b.example")
    c = Config.load(env, {"max-connections": "7", "ping-interval": "1m"})
    assert c.max_connections == 7 and c.ping_interval == 60.0
    assert Config.load({"WEBSOCKET_MAX_CONNECTIONS": ""}, {}).max_connections == 1000


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("30s", 30), ("1m", 60), ("2h", 7200), ("1.5", 1.5),
                                           (" 10s ", 10)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [("1024", 1024), ("64KiB", 65536), ("1MiB", 1 << 20), ("2M", 2 << 20)])
def test_sizes(text, size):
    assert parse_size(text) == size


BAD = [
    ("WEBSOCKET_MAX_CONNECTIONS", "-1"), ("WEBSOCKET_MAX_CONNECTIONS", "lots"), ("WEBSOCKET_MAX_CONNECTIONS", "0"),
    ("WEBSOCKET_PING_INTERVAL", "soon"), ("WEBSOCKET_PING_INTERVAL", "-5s"), ("WEBSOCKET_PING_INTERVAL", "0"),
    ("WEBSOCKET_PING_INTERVAL", "30 parsecs"), ("WEBSOCKET_PONG_TIMEOUT", "x"), ("WEBSOCKET_WRITE_DEADLINE", "1y"),
    ("WEBSOCKET_READ_BUFFER_SIZE", "-1024"), ("WEBSOCKET_READ_BUFFER_SIZE", "big"), ("WEBSOCKET_READ_BUFFER_SIZE", "0"),
    ("WEBSOCKET_WRITE_BUFFER_SIZE", "1.5"), ("WEBSOCKET_SEND_QUEUE", "0"), ("WEBSOCKET_MAX_MESSAGE_SIZE", "1GB?"),
    ("WEBSOCKET_RATE_LIMIT", "-1"), ("WEBSOCKET_TRUSTED_PROXIES", "one"), ("WEBSOCKET_HANDSHAKE_TIMEOUT", "never"),
    ("WEBSOCKET_SHUTDOWN_TIMEOUT", "-1s"), ("API_CORS_ORIGINS", "example.com"), ("API_CORS_ORIGINS", " , "),
    ("WEBSOCKET_LISTEN", "8080"), ("WEBSOCKET_LISTEN", "tcp:notaport"), ("WEBSOCKET_LISTEN", "tcp"),
    ("WEBSOCKET_LISTEN", "tcp:8080:interface=127.0.0.1:backlog=many"), ("WEBSOCKET_LISTEN", "tcp:8080:bogus=1"),
    ("WEBSOCKET_LISTEN", "tcp:99999"), ("WEBSOCKET_LISTEN", "carrier-pigeon:8080"),
    ("WEBSOCKET_LISTEN", "ssl:8443:privateKey=/nonexistent/key.pem"), ("WEBSOCKET_RATE_LIMIT_IPS", "0"),
    ("EXPLORERD_RPC_URL", "localhost:8545"), ("EXPLORERD_RPC_URL", "ftp://127.0.0.1:8546"),
    ("EXPLORERD_RPC_WS_URL", "http://127.0.0.1:8546"), ("EXPLORERD_RPC_WS_SILENCE", "0"),
    ("EXPLORERD_RPC_URL", "http://127.0.0.1:99999/"), ("EXPLORERD_POLL_INTERVAL", "fast"),
    ("EXPLORERD_RPC_TIMEOUT", "0"), ("EXPLORERD_MAX_CATCHUP", "0"), ("EXPLORERD_MAX_REORG_DEPTH", "-3"),
    ("EXPLORERD_MAX_LAG", "x"), ("EXPLORERD_HISTORY_BLOCKS", "0"), ("EXPLORERD_REPLAY_BLOCK_TIME", "-1s"),
    ("EXPLORERD_RPC_BATCH_SIZE", "0"), ("EXPLORERD_RPC_RETRY", "0"), ("EXPLORERD_RPC_RETRY", "-30s"),
    ("EXPLORERD_RPC_RETRY", "forever"), ("EXPLORERD_WEB_ROOT", "/nonexistent/web"),
]


@pytest.mark.parametrize("env, value", BAD)
def test_a_bad_value_names_the_setting_and_the_value(env, value):
    with pytest.raises(ConfigError) as e:
        Config.load({env: value}, {})
    assert env in str(e.value) and repr(value) in str(e.value)


def test_a_bad_option_names_the_option():
    with pytest.raises(ConfigError, match=r"--max-connections='-3'"):
        Config.load({}, {"max-connections": "-3"})


def test_the_live_tails_retry_cap_from_the_environment_or_the_option():
    assert Config.load({"EXPLORERD_RPC_RETRY": "5s"}, {}).rpc_retry == 5.0
    assert Config.load({"EXPLORERD_RPC_RETRY": "5s"}, {"rpc-retry": "2m"}).rpc_retry == 120.0


def test_a_bad_option_stops_twistd_naming_it():
    """Its message alone, not after twistd's usage text (which a UsageError would print)."""
    from explorerd.tap import Options

    with pytest.raises(SystemExit, match=r"^explorerd: invalid --rpc-retry='soon': expected a duration"):
        Options().parseOptions(["--rpc-retry", "soon"])
    assert Options().parseOptions(["--rpc-retry", "90s"]) is None


@pytest.mark.parametrize("value, message", [
    ("tcp:notaport", "invalid literal for int() with base 10: 'notaport'"),
    ("tcp:8080:bogus=1", "wrong arguments: got an unexpected keyword argument 'bogus'"),
    ("carrier-pigeon:8080", "Unknown endpoint type: 'carrier-pigeon'"),
    ("tcp:65536", "port 65536 is not between 0 and 65535"),
])
def test_a_bad_listen_address_is_refused_before_anything_listens(value, message):
    with pytest.raises(ConfigError) as e:
        Config.load({"WEBSOCKET_LISTEN": value}, {})
    assert str(e.value).startswith(f"invalid WEBSOCKET_LISTEN={value!r}: ")
    assert message in str(e.value)


def test_listen_addresses_twisted_accepts_are_accepted(tmp_path):
    from tests.tls import self_signed_pem

    pem = tmp_path / "server.pem"
    pem.write_bytes(self_signed_pem())
    for value in ("tcp:0:interface=127.0.0.1", "tcp:8080", "tcp6:8080:interface=\\:\\:1",
                  f"unix:{tmp_path}/explorerd.sock", f"ssl:8443:privateKey={pem}:certKey={pem}",
                  "tcp:8080:interface=127.0.0.1:backlog=1024"):
        assert Config.load({"WEBSOCKET_LISTEN": value}, {}).listen == value


def test_each_setting_is_declared_once_and_config_follows_settings():
    """C{Config}'s attributes are the rows of C{SETTINGS}, in order, typed by their parsers."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(Config)]
    assert names == [s.name for s in SETTINGS]
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    assert types["max_connections"] is int and types["ping_interval"] is float
    assert types["cors_origins"] is tuple and types["listen"] is str
    config = Config.defaults(max_connections=5)
    assert config.max_connections == 5 and config.replace(max_connections=6).max_connections == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_connections = 7


def test_the_router_ticket_is_not_in_the_configs_repr():
    config = Config.load({"EXPLORERD_WAMP_ROUTER_TICKET": "s3cret"}, {})
    assert config.wamp_router_ticket == "s3cret" and "s3cret" not in repr(config)


def test_the_web_root_from_the_environment_or_the_option(tmp_path):
    assert Config.load({}, {}).web_root == ""
    assert Config.load({"EXPLORERD_WEB_ROOT": str(tmp_path)}, {}).web_root == str(tmp_path)
    assert Config.load({}, {"web-root": str(tmp_path)}).web_root == str(tmp_path)


def test_every_setting_has_an_env_an_option_and_a_doc():
    for s in SETTINGS:
        assert s.env.startswith(("WEBSOCKET_", "API_", "EXPLORERD_")) and s.option and s.doc
        Config.load({s.env: s.default}, {})


def test_the_readme_documents_every_setting():
    import os

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    for s in SETTINGS:
        assert f"`{s.env}`" in readme and f"`--{s.option}`" in readme, s.env


def test_the_readme_settings_table_is_the_one_config_writes():
    """When this fails, paste the output of C{python -m explorerd.config} into the README."""
    import os

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    start = readme.index("<!-- settings table: generated from explorerd/config.py SETTINGS -->\n")
    end = readme.index("<!-- end of settings table -->")
    assert readme[readme.index("\n", start) + 1:end] == settings_table()
