"""bt: the BridgeTower vision-language model at a shell prompt."""

__version__ = "0.1.0"
