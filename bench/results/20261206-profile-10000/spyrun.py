"""
explorerd under py-spy in the per-transaction cell at 10,000 clients (8 blocks); from the repo root:

    PYSPY=/path/to/py-spy python3 bench/results/20261206-profile-10000/spyrun.py [OUT_DIR]

(bench/run.py --profile samples this cell at 1,000 clients only.)
"""

import json
import os
import sys

sys.path.insert(0, "bench")
import run  # noqa: E402


def main(out):
    os.makedirs(out, exist_ok=True)
    spec = dict(run.FULL["txs"], clients={10000: 1}, blocks_for={}, blocks=8)
    files = run.make_files(spec, out, "spy-txs")
    raw = os.path.join(out, "txs-10000.pyspy.raw")
    r = run.run_cell("pyspy-txs", spec, "explorerd", 10000, 0, files, out, pyspy=raw)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        run.summarize_pyspy(raw, f, top=45)
    print(json.dumps({k: r.get(k) for k in ("delivered", "server_cpu_s", "error")}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/spyout")
