"""The library version (also written into every saved run)."""
__version__ = "0.1.0"
