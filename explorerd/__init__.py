"""explorerd: a real-time block and transaction stream for Ethereum-compatible chains."""

__version__ = "0.1.0"
