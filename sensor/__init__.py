"""etw-sensor: a lightweight Windows endpoint sensor with a compiled Sigma matcher."""
__version__ = "0.1.0"
