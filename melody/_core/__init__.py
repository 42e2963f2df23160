"""The compiled engine: frame codec, masking, UTF-8 validation, deflate, connection, fan-out.

It knows nothing of the public API (``melody.Melody``, ``melody.Session``); those are built
over it in ``melody/``. There is no silent fallback: if the extension modules are missing the
import fails loudly, with the command that builds them.
"""

try:
    from melody._core import connection as _connection
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "melody's compiled core is not built: run `pip install .` (or "
        "`python setup.py build_ext --inplace` in a source tree)"
    ) from exc

#: The extension modules were imported (a pure-Python core, if one is added, sets False).
COMPILED = _connection.__file__.endswith((".so", ".pyd"))
