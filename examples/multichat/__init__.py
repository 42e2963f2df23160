"""The multichat example (see main.py)."""
