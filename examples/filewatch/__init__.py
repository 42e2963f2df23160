"""The filewatch example (see main.py)."""
