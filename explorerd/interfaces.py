"""
The contracts between explorerd's parts.

A block travels one way: a source (the live-tail, or an edge fed by a WAMP
router) checks it and builds an L{explorerd.history.Entry}, hands it to an
L{IBlockSink} (the hub), which writes it to its clients and then tells its
L{IPublicationObserver}s (the WAMP broker, the router publisher).
"""

from zope.interface import Attribute, Interface


class IBlockSink(Interface):
    """Where a block source hands what it has checked, in chain order."""

    history = Attribute("The L{explorerd.history.History} of what was published.")

    def publish(entry):
        """
        Send a checked block (an L{explorerd.history.Entry}) to every
        subscriber and add it to the history.  Raises
        L{explorerd.history.BrokenChain} before writing to anyone if it does
        not follow the newest block held.
        """

    def publishReorg(depth, ancestor, removed):
        """
        Announce that C{removed} (C{[{"height", "hash"}, ...]}, ascending)
        are no longer canonical, back to C{ancestor} (C{{"height", "hash"}}),
        and roll the history back; the new branch follows as L{publish}es.
        """

    def remember(entry):
        """Add an entry to the history without sending it: what clients saw before a restart."""

    def announce(header):
        """
        The node has a new head that extends the newest block published:
        C{header} is its header as the node gave it (checked: its height,
        hash and parent), told to L{IHeadObserver}s ahead of the whole
        block, which follows as a L{publish} -- or does not, if the node
        switches branches first (then another block at that height does).
        """


class IPublicationObserver(Interface):
    """Told of everything the hub published, after the hub's own clients were written to."""

    def published(entry):
        """A block and its transactions went out (an L{explorerd.history.Entry})."""

    def reorganized(reorg, removed):
        """
        A reorg went out: C{reorg} is the C{data} of the raw protocol's
        C{reorg} message, C{removed} the entries of the removed blocks the
        history held, newest first (their logs are retracted in that order).
        """


class IHeadObserver(Interface):
    """
    An observer (also an L{IPublicationObserver}) that wants new heads the
    moment the node has them, before their transactions and receipts are
    fetched: C{eth_subscribe("newHeads")}, which carries nothing else.
    """

    def announced(header):
        """A new head, as L{IBlockSink.announce} was given it; its block's L{published} follows."""


class IResumeHint(Interface):
    """
    A hub client's protocol that can tell a client it closes as too slow
    where to resume (its last block), so that it never loses data silently.
    """

    def resumeHint(client):
        """
        Text naming the last block whose messages C{client} (an
        L{explorerd.hub.Client} whose queue is still intact) was sent, for
        the close reason; or C{None}.
        """
