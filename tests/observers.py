"""What a test sees of the hub's publications, through the observer interface the WAMP side uses."""

from zope.interface import implementer
from zope.interface.verify import verifyObject

from explorerd.interfaces import IPublicationObserver
from explorerd.wamp import publications, retractions


@implementer(IPublicationObserver)
class WampRecorder:
    """Every event the hub publishes, as WAMP C{(topic, data)} pairs, in order."""

    def __init__(self):
        self.seen = []

    def published(self, entry):
        for topic, items in publications(entry):
            self.seen.extend((topic, item) for item in items)

    def reorganized(self, reorg, removed):
        for topic, items in retractions(reorg, removed):
            self.seen.extend((topic, item) for item in items)


def recorder(hub):
    """Attach a L{WampRecorder} to C{hub}; returns its list of what it sees."""
    observer = WampRecorder()
    verifyObject(IPublicationObserver, observer)
    hub.addObserver(observer)
    return observer.seen
