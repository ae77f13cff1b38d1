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


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("30s", 30), ("1m", 60), ("2h", 7200), ("1.5", 1.5), (" 10s ", 10)])
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
    ("WEBSOCKET_LISTEN", "8080"), ("WEBSOCKET_RATE_LIMIT_IPS", "0"),
    ("EXPLORERD_RPC_URL", "localhost:8545"), ("EXPLORERD_RPC_URL", "ws://127.0.0.1:8546"),
    ("EXPLORERD_RPC_URL", "http://127.0.0.1:99999/"), ("EXPLORERD_POLL_INTERVAL", "fast"),
    ("EXPLORERD_RPC_TIMEOUT", "0"), ("EXPLORERD_MAX_CATCHUP", "0"), ("EXPLORERD_MAX_REORG_DEPTH", "-3"),
    ("EXPLORERD_MAX_LAG", "x"), ("EXPLORERD_HISTORY_BLOCKS", "0"), ("EXPLORERD_REPLAY_BLOCK_TIME", "-1s"),
    ("EXPLORERD_RPC_BATCH_SIZE", "0"), ("EXPLORERD_RPC_RETRY", "0"), ("EXPLORERD_RPC_RETRY", "-30s"),
    ("EXPLORERD_RPC_RETRY", "forever"),
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
    from twisted.python import usage

    from explorerd.tap import Options

    with pytest.raises(usage.UsageError, match=r"invalid --rpc-retry='soon': expected a duration"):
        Options().parseOptions(["--rpc-retry", "soon"])
    assert Options().parseOptions(["--rpc-retry", "90s"]) is None


def test_every_setting_has_an_env_an_option_and_a_doc():
    names = {f for f in Config.__dataclass_fields__}
    assert {s.name for s in SETTINGS} == names
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
