"""``python -m melody.bench URL ...`` is ``melody bench URL ...``."""

from melody.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
