"""
The live-tail's position on disk, so a restart resumes where it stopped.

We keep the last published blocks (height, hash, parent hash), not only the
last one: a restart that finds the node on another branch must walk back to
the common ancestor and report what it removed, which needs the hashes we
had; and it gives the hub back its history of the blocks clients saw (the
tail fetches them by hash), which needs as many as the hub keeps.  The file
is small (about 170 bytes a block: 44 KiB for 256, written in about 2 ms
with the fsyncs) and replaced atomically: written to a temporary file in
the same directory, fsynced, renamed over the old one with ``os.replace``
and the directory fsynced, so a crash leaves either the old position or the
new one, never half a file.  ``write`` does the same without the fsyncs and
``sync`` does them later (in a thread): the live-tail writes before clients
get a batch (enough for a killed process) and syncs after (for a machine
crash, which may then leave the older file, or one that is ignored).

A file that cannot be parsed is logged and ignored (the tail then starts
at the node's head, as with no file); a file that cannot be *read* (e.g.
permissions) raises, so a misconfigured state directory stops start-up
instead of silently losing the position.
"""

import json
import os
import re
import tempfile
from collections import namedtuple

from twisted.logger import Logger

Position = namedtuple("Position", "height hash parent")
Position.__doc__ = "One published block as the tail remembers it (lowercase 0x-hex hashes)."

VERSION = 1
_HASH = re.compile(r"^0x[0-9a-f]{64}$")


class TailState:
    """
    One JSON file holding the tail's last published blocks, oldest first.

    ``load()`` returns them as :class:`Position` tuples; ``save(positions)``
    replaces the file atomically.  ``last`` is the newest position loaded or
    saved (``None`` before either, or when the file is empty).
    """

    log = Logger()

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        self.last = None
        #: Blocks a reorg removed, as loaded (oldest first): clients may still hold one.
        self.orphans = []

    def __repr__(self):
        return f"<TailState {self.path}>"

    @classmethod
    def inDirectory(cls, directory, name="livetail.json"):
        """The state file C{name} in C{directory} (created on first save)."""
        return cls(os.path.join(directory, name))

    def load(self):
        """
        The saved positions, oldest first; ``[]`` when there is no file or
        it is unusable (logged).  Raises ``OSError`` if it exists but cannot
        be read.
        """
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        try:
            positions, orphans = _parse(raw)
        except ValueError as e:
            self.log.error("ignoring unusable tail state {path}: {error}; starting at the node's head",
                           path=self.path, error=str(e))
            return []
        self.last = positions[-1] if positions else None
        self.orphans = orphans
        return positions

    def save(self, positions, orphans=()):
        """
        Replace the file with C{positions} (oldest first) and C{orphans}
        (blocks a reorg removed, which clients may still hold), atomically
        and durably.
        """
        self._replace(positions, orphans, durable=True)

    def write(self, positions, orphans=()):
        """
        Replace the file with C{positions} atomically but without waiting for
        the disk: once this returns, a killed process (even C{kill -9}) loses
        nothing, since the kernel has the file; only a machine crash before
        L{sync} may lose it (the file is then older, or unusable and ignored).
        The live-tail calls this before a batch reaches clients, and L{sync}
        off the reactor thread after.
        """
        self._replace(positions, orphans, durable=False)

    def sync(self):
        """
        Make what L{write} wrote durable (fsync the file and its directory).
        Blocking: run it in a thread.  A L{write} while it runs may not be
        covered: call it again after that one.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_directory(os.path.dirname(self.path))

    def _replace(self, positions, orphans, durable):
        positions = [Position(int(p[0]), p[1], p[2]) for p in positions]
        body = {"version": VERSION}
        if positions:
            body["height"] = positions[-1].height
            body["hash"] = positions[-1].hash
        body["chain"] = [{"height": p.height, "hash": p.hash, "parent": p.parent} for p in positions]
        if orphans:
            body["orphans"] = [{"height": int(p[0]), "hash": p[1], "parent": p[2]} for p in orphans]
        data = json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".", suffix=".tmp",
                                   dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if durable:
            _fsync_directory(directory)
        self.last = positions[-1] if positions else None


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse(raw):
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} tail state")
    chain = body.get("chain")
    if not isinstance(chain, list):
        raise ValueError("no chain list")
    orphans = body.get("orphans", [])
    if not isinstance(orphans, list):
        raise ValueError("orphans is not a list")
    return _positions(chain, "chain", linked=True), _positions(orphans, "orphans", linked=False)


def _positions(items, what, linked):
    positions = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"{what} entry is not an object: {item!r:.80}")
        height, hash_, parent = item.get("height"), item.get("hash"), item.get("parent")
        if isinstance(height, bool) or not isinstance(height, int) or height < 0:
            raise ValueError(f"bad height {height!r:.40}")
        if not isinstance(hash_, str) or not _HASH.match(hash_):
            raise ValueError(f"bad hash {hash_!r:.80} at height {height}")
        if parent is not None and (not isinstance(parent, str) or not _HASH.match(parent)):
            raise ValueError(f"bad parent hash {parent!r:.80} at height {height}")
        if linked and positions and height != positions[-1].height + 1:
            raise ValueError(f"chain is not contiguous at height {height}")
        if linked and positions and parent is not None and parent != positions[-1].hash:
            raise ValueError(f"chain is not linked at height {height}: parent {parent} is not "
                             f"the hash of block {height - 1}")
        positions.append(Position(height, hash_, parent))
    return positions
