"""
CI's short soak with faults (tests/soak/faultsoak.py): a real twistd explorerd with a state
directory tailing the replay node in its own process behind the fault proxy; 200 Node clients that
verify every message and resume with "since" after every drop; one short window of each fault kind
(resets, 5xx, stalls, slow bodies, a head going backwards twice over: a lagging backend and a reorg
to a shorter branch, truncated, cut and garbage answers), and the daemon restarted under load by
SIGTERM and by SIGKILL.  The full run is

    python tests/soak/soak.py --faults --restarts term,kill --minutes 60 --clients 2000 \\
        --report tests/soak/RESULTS-faults-60min.md --json tests/soak/results-faults-60min.json
"""

import os
import shutil

import pytest

from tests.soak import faultsoak, soak

NODE_WS = os.path.join(os.path.dirname(__file__), "node", "node_modules", "ws")

pytestmark = [pytest.mark.needs_node,
              pytest.mark.skipif(shutil.which("node") is None or not os.path.isdir(NODE_WS),
                                 reason="needs node and tests/node/node_modules (npm ci --prefix tests/node)")]


@pytest.fixture(scope="module")
def fault_soak(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("faultsoak"))
    result = faultsoak.run_faults(
        minutes=1.15, clients=200, procs=1, sample_every=5.0, slow_hold=20.0, workdir=workdir,
        ping_interval=5.0, pong_timeout=12.0, shutdown_timeout=5.0, slow_kinds=("silent", "keepalive"),
        # every kind once, short: a window is a few of the node's blocks, the tail's retries are
        # capped at 1 s so that it is back within the gap after it
        window=2.5, gap=2.0, start=5.0, tail=6.0, restart_slot=8.0, restart_grace=6.0,
        rpc_timeout=1.5, rpc_retry=1.0, warmup=20.0, echo=lambda *a: None,
        slope_minutes=0)  # a minute's RSS slope says nothing: the 60-minute run judges it
    result["markdown"] = faultsoak.markdown(result)
    return result


def test_every_check_holds(fault_soak):
    failed = {k: v for k, (ok, v) in fault_soak["verdict"].items() if not ok}
    assert not failed, fault_soak["markdown"]


def test_every_fault_kind_and_both_restarts_happened(fault_soak):
    assert [w["kind"] for w in fault_soak["windows"]] == list(faultsoak.KINDS), fault_soak["plan"]
    assert [r["how"] for r in fault_soak["restarts"]] == ["term", "kill"]
    by_kind = {w["kind"]: w for w in fault_soak["windows"]}
    # the proxy spoiled answers in each window of a proxy fault, and the tail noticed
    for kind, fault in (("reset", "drop"), ("5xx", "error"), ("stall", "delay"), ("slow-body", "slow"),
                        ("truncate", "truncate"), ("cut", "cut"), ("garbage", "garbage")):
        w = by_kind[kind]
        assert w["proxy"].get(fault, 0) > 0, (kind, w)
        if kind != "slow-body":  # a slow body within the timeout is not an error
            assert sum(w["tail"]["errors"].values()) > 0 or w["tail"]["polls"].get("failed", 0) > 0, (kind, w)
    # the node's head went down, and the clients were told of the reorgs
    assert all(x["to"] < x["from"] for x in by_kind["reorg-shorter"]["reorgs"]) and by_kind["reorg-shorter"]["reorgs"]
    assert sum(fault_soak["roles"][k]["reorgs"] for k in soak.WELL_BEHAVED) > 0


def test_clients_resumed_across_the_restarts_without_a_gap(fault_soak):
    roles = fault_soak["roles"]
    closes = {}
    for role in soak.WELL_BEHAVED:
        s = roles[role]
        assert s["violations"] == 0, (role, s["violation_samples"])
        assert s["history_unavailable_within"] == 0, (role, s["history_unavailable_samples"])
        for code, n in s["restart_closes"].items():
            closes[code] = closes.get(code, 0) + n
    # SIGTERM says goodbye (1001), SIGKILL cannot (1006); nearly every client was connected for both
    assert closes.get("1001", 0) >= 100 and closes.get("1006", 0) >= 100, closes
    assert sum(roles[k]["resumes"] for k in soak.WELL_BEHAVED) >= 200
    for r in fault_soak["restarts"]:
        assert r["publishing_after_s"] is not None, r
    for life in fault_soak["lifetimes"][1:]:
        assert life["restored"], life  # the history came back from the state directory


def test_the_server_comes_back_to_its_baseline(fault_soak):
    base, after = fault_soak["baseline"], fault_soak["after"]
    assert after["connections"] == 0
    assert after["fds"] <= base["fds"] + 3, (base, after)
    assert fault_soak["log_bad_lines"] == 0, fault_soak["log_bad_samples"]
    assert [life["exit_status"] for life in fault_soak["lifetimes"]] == [-15, -9, -15]


def test_a_refused_resume_at_the_edge_of_the_history_is_judged_by_the_node(monkeypatch):
    # "since" at the oldest block held less one resumes when that block is
    # canonical (it is the oldest block's parent); a block a reorg orphaned
    # while the client was away cannot, since the canonical block at its
    # height is no longer held.  The soak's 45-minute run counted three of
    # the latter as "refused within the history".
    asked = []

    def canonical_hashes(node_port, heights):
        asked.append((node_port, sorted(heights)))
        return {91: "0x" + "3" * 64, 574: "0x" + "5" * 64}

    monkeypatch.setattr(soak, "canonical_hashes", canonical_hashes)
    roles = {"churn": {"history_unavailable": 2, "history_unavailable_within": 0, "history_unavailable_edge": {
        "91:0x" + "7" * 64: 1, "574:0x" + "5" * 64: 2}}, "batch": {"history_unavailable_edge": {}}}
    soak.settle_edge_refusals(4321, roles)
    assert asked == [(4321, [91, 574])]
    churn = roles["churn"]
    assert (churn["history_unavailable"], churn["history_unavailable_orphaned"], churn["history_unavailable_within"]) \
        == (3, 1, 2)
    assert churn["history_unavailable_samples"][0]["since"] == 574 and "history_unavailable_edge" not in churn
    verdict = faultsoak.verdict({"roles": roles})
    assert verdict["no resume within the history refused"][0] is False
