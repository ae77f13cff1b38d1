"""
Reading a metric the way a scraper would: by its exported name and labels
from the registry, never from a metric object's private state.
"""

_SUFFIXES = ("", "_total", "_created", "_count", "_sum", "_bucket")


def sample(registry, name, **labels):
    """
    The value of sample C{name} with C{labels} in C{registry}.

    A labelled counter that has not counted yet exports no sample for its
    labels: that reads 0, as Prometheus's C{rate()} would take it.  A name
    that no metric in the registry exports is a mistake in the test and
    fails it, rather than reading 0.
    """
    value = registry.get_sample_value(name, labels)
    if value is not None:
        return value
    if not any(name == family.name + suffix for family in registry.collect() for suffix in _SUFFIXES):
        raise AssertionError(f"no metric exports a sample named {name!r}")
    return 0.0
