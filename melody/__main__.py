"""``python -m melody ...`` is the ``melody`` command."""

from melody.cli import main

if __name__ == "__main__":
    main()
