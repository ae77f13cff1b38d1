"""Turn a hub server log and a loadgen summary into latency, completion, loss and CPU figures."""

import json
import sys


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def analyze(server_path, load_path):
    blocks = {}
    done = {}
    for line in open(server_path):
        m = json.loads(line)
        if m["event"] == "block":
            blocks[m["height"]] = m
        elif m["event"] == "done":
            done = m
    load = [json.loads(line) for line in open(load_path)]
    summary = next(m for m in load if m["event"] == "done")
    latencies, completions, lost, dupes, delivered = [], [], 0, 0, 0
    per_block_last = {h: [] for h in blocks}
    for c in summary["perClient"]:
        dupes += c["dupes"]
        for h, b in blocks.items():
            got = c["blocks"].get(str(h))
            if got is None:
                lost += 1 + b["txs"]
                continue
            t_block, t_last, ntx, _ = got
            delivered += (1 if t_block else 0) + ntx
            if ntx < b["txs"] and ntx:
                lost += b["txs"] - ntx
            first = t_block if t_block else t_last
            latencies.append(first - b["t"])
            per_block_last[h].append(t_last - b["t"])
    for h, lasts in per_block_last.items():
        if lasts:
            completions.append(max(lasts))
    ms = lambda v: None if v is None else round(v * 1000, 1)
    result = {
        "clients": summary["clients"], "subscribed": summary["subscribed"], "silent": summary["silent"],
        "blocks": len(blocks), "delivered": delivered, "lost": lost, "dupes": dupes,
        "first_msg_p50_ms": ms(pct(latencies, 50)), "first_msg_p99_ms": ms(pct(latencies, 99)),
        "whole_block_p50_ms": ms(pct([x for v in per_block_last.values() for x in v], 50)),
        "whole_block_p99_ms": ms(pct([x for v in per_block_last.values() for x in v], 99)),
        "completion_max_ms": ms(max(completions) if completions else None),
        "completion_p50_ms": ms(pct(completions, 50)),
        "hub_took_ms_p50": ms(pct([b["took"] for b in blocks.values()], 50)),
        "server_cpu_s": round(done.get("cpu", 0), 3),
        "cpu_us_per_msg": round(done.get("cpu", 0) / delivered * 1e6, 2) if delivered else None,
        "rss_idle_kb": done.get("rss_idle_kb"), "rss_base_kb": done.get("rss_base_kb"), "rss_kb": done.get("rss_kb"),
        "closed_by_server": summary["closeCodes"], "slow_closed": done.get("slow_closed"),
    }
    return result


if __name__ == "__main__":
    print(json.dumps(analyze(sys.argv[1], sys.argv[2])))
