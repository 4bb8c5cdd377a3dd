"""flowpolicy: online reinforcement learning of flow-matching policies."""

__version__ = "0.1.0"
