"""
A JSON-RPC node that replays real recorded chains (mainnet, Polygon and
Rinkeby blocks, their reorgs and logs) for the daemon to tail when it has no
node of its own, and for tests and benchmarks.  C{docs/replay.md} tells how
it builds its chain; C{python -m explorerd.replay --help} runs it alone.
"""

from explorerd.replay.chain import DEFAULT_CHAIN_ID, Chain, Head, Reorg, expected_reorgs
from explorerd.replay.node import ReplayNode, ReplayService
from explorerd.replay.recordings import DEFAULT_RECORDINGS, Recording, load_recording, packaged_recordings

__all__ = [
    "DEFAULT_CHAIN_ID",
    "DEFAULT_RECORDINGS",
    "Chain",
    "Head",
    "Recording",
    "Reorg",
    "ReplayNode",
    "ReplayService",
    "expected_reorgs",
    "load_recording",
    "packaged_recordings",
]
