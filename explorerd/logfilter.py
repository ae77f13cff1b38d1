"""
A C{logs} subscription's filter: the filter object of C{eth_getLogs} and
C{eth_subscribe("logs")}, with geth's semantics.

C{address} is one address or a list of them (any of them matches; none
given, any address; at most 1,000).  C{topics} is positional: each position
is C{null} (any topic), one topic, or a list of alternatives (at most
1,000, as geth allows); a filter with k positions, trailing C{null}s
included, matches only logs with at least k topics.
"""

from explorerd import events

MAX_ADDRESSES = 1000
MAX_TOPICS = 4
MAX_ALTERNATIVES = 1000  # per topic position, as geth (maxSubTopics)


class LogFilter:
    """
    @ivar addresses: a frozenset of lowercase addresses, or C{None} for any.
    @ivar topics: a tuple, one per position: a frozenset of topics, or C{None} for any.
    """

    __slots__ = ("addresses", "topics")

    def __init__(self, addresses=None, topics=()):
        self.addresses = frozenset(addresses) if addresses else None
        self.topics = tuple(topics)

    def __repr__(self):
        return f"<LogFilter addresses={self.addresses} topics={self.topics}>"

    @property
    def everything(self):
        """Whether every log matches (clients that take every log share one frame)."""
        return self.addresses is None and not self.topics

    @property
    def size(self):
        """Addresses and topics held: what checking and indexing the filter costs grows with it."""
        return len(self.addresses or ()) + sum(len(t) for t in self.topics if t is not None)

    @property
    def first(self):
        """The alternatives for the first topic, or C{None}: what the hub indexes after the address."""
        return self.topics[0] if self.topics else None

    def matches(self, log):
        if self.addresses is not None and log["address"] not in self.addresses:
            return False
        topics = log["topics"]
        if len(topics) < len(self.topics):
            return False
        for wanted, topic in zip(self.topics, topics):
            if wanted is not None and topic not in wanted:
                return False
        return True

    def describe(self):
        """What the C{subscribed} answer says of it."""
        described = {}
        if self.addresses is not None:
            described["addresses"] = len(self.addresses)
        if self.topics:
            described["topics"] = len(self.topics)
        return described

    @classmethod
    def parse(cls, obj):
        """A L{LogFilter} from a client's filter object, or C{ValueError} saying what is wrong."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ValueError('"logs" must be a filter object {"address": ..., "topics": [...]}')
        unknown = set(obj) - {"address", "topics"}
        if unknown:
            raise ValueError(f'the logs filter takes "address" and "topics", not {sorted(unknown)[0][:40]!r}')
        raw = obj.get("address")
        if raw is None:
            addresses = None
        else:
            raw = [raw] if isinstance(raw, str) else raw
            if not isinstance(raw, list) or len(raw) > MAX_ADDRESSES:
                raise ValueError(f'"address" must be an address or a list of at most {MAX_ADDRESSES}')
            addresses = {_checked(events.address, a, "address", "a 20-byte 0x-hex address") for a in raw}
        raw = obj.get("topics")
        if raw is None:
            raw = []
        if not isinstance(raw, list) or len(raw) > MAX_TOPICS:
            raise ValueError(f'"topics" must be a list of at most {MAX_TOPICS} positions')
        topics = []
        for position in raw:
            if position is None:
                topics.append(None)
                continue
            alternatives = [position] if isinstance(position, str) else position
            if not isinstance(alternatives, list):
                raise ValueError("each topic position must be null, a topic or a list of topics")
            if len(alternatives) > MAX_ALTERNATIVES:
                raise ValueError(f"a topic position holds at most {MAX_ALTERNATIVES} alternatives, "
                                 f"not {len(alternatives)}")
            if not alternatives:
                topics.append(None)  # geth: an empty list is any topic
                continue
            topics.append(frozenset(_checked(events.topic, t, "topic", "a 32-byte 0x-hex topic")
                                    for t in alternatives))
        return cls(addresses, topics)


def _checked(check, value, what, shape):
    try:
        return check(value)
    except ValueError:
        text = value if isinstance(value, str) else repr(value)
        raise ValueError(f"{what} {text[:70]!r} is not {shape}") from None
