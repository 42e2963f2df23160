"""melody's examples: Python versions of Go melody's chat, multichat, filewatch and gophers.

This file makes ``examples`` importable from the repository root, so that a hub can also be
served with ``melody serve examples.chat.main:hub``. Each example runs on its own as well:
``python examples/chat/main.py`` (see ``examples/README.md``).
"""
