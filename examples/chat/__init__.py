"""The chat example (see main.py)."""
