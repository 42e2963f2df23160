"""The gophers example (see main.py)."""
