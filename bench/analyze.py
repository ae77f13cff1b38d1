"""
Re-render a report from a run's raw results, e.g. after a run was interrupted, or to merge runs:

  python3 bench/analyze.py bench/results/<date>/results.json [more results.json ...] [--out bench/RESULTS.md]

The per-run figures are computed by bench/run.py (analyze()) while it runs; this only aggregates
(median, min–max) and writes the Markdown tables.
"""

import argparse
import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+")
    p.add_argument("--out", default="-")
    args = p.parse_args()
    results, meta, commands, side, raws = [], None, [], {}, []
    for path in args.results:
        with open(path) as f:
            data = json.load(f)
        raws.append(data)
        results += data["results"]
        if meta is None:
            meta = dict(data["meta"], out_dirs=[])
        meta["out_dirs"].append(data["meta"]["out_dir"])
        if data["meta"].get("finished"):  # merged runs: from the first one's start to the last one's end
            meta["finished"], meta["loadavg_end"] = data["meta"]["finished"], data["meta"].get("loadavg_end", [])
        if data["command"] not in commands:
            commands.append(data["command"])
        for name, measured in (data.get("side") or {}).items():
            side.setdefault(name, measured)
    scenarios = {}
    for r in results:
        name = r["scenario"]
        if name not in run.FULL:
            continue
        spec = scenarios.setdefault(name, dict(run.FULL[name], clients={}, blocks_for={}, blocks=r["blocks"]))
        spec["clients"][r["clients"]] = spec["clients"].get(r["clients"], 0) + 1
        if r["blocks"] != spec["blocks"]:
            spec["blocks_for"][r["clients"]] = r["blocks"]
    files = {}
    for path in args.results:  # the blocks' facts, as run.py recorded them
        with open(path) as f:
            for name, facts in (json.load(f).get("files") or {}).items():
                files.setdefault(name, facts)
    for name in scenarios:
        for path in args.results:
            if name in files:
                break
            d = os.path.dirname(path)
            wire = os.path.join(d, f"{name}.wire.json")
            if os.path.exists(wire):
                files[name] = run.file_facts(wire, os.path.join(d, f"{name}.raw.json"))
                break
    meta["parts"] = run.raw_parts(raws, [os.path.dirname(os.path.abspath(p)) for p in args.results])
    started, finished = _when(meta)
    out = args.out if args.out != "-" else "/dev/stdout"
    command = "; ".join(commands)
    if len(args.results) > 1:
        command += "; merged: python3 bench/analyze.py " + " ".join(args.results) + " --out " + args.out
    run.report(results, meta, out, command, files, started, finished, scenarios, side=side)


def _when(meta):
    """When the run was: recorded in its meta, or (older runs) its start from its folder's name."""
    if meta.get("started"):
        return (datetime.datetime.fromisoformat(meta["started"]),
                datetime.datetime.fromisoformat(meta["finished"]))
    name = os.path.basename(meta["out_dir"]).split("-quick")[0]
    started = datetime.datetime.strptime(name, "%Y%m%d-%H%M%S").replace(tzinfo=datetime.timezone.utc)
    return started, started


if __name__ == "__main__":
    main()
