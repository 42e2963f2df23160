"""What the ``melody`` command and its worker processes share: finding the hub to serve
(:func:`load_hub`), the TLS context of ``--certfile``/``--keyfile`` (:func:`ssl_context`) and
the settings of ``--config`` (:func:`apply_config`)."""

from __future__ import annotations

import importlib
import os
import ssl as _ssl
import sys
from typing import Any

__all__ = ["load_hub", "ssl_context", "apply_config"]


def load_hub(spec: str, *, factory: bool = False) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted) and return the hub it names.

    With ``factory`` the attribute is called with no arguments and must return the hub.
    Raises ``SystemExit`` with a clear message when the module or attribute is missing.
    """
    from melody.hub import Melody

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"melody: expected MODULE:ATTRIBUTE, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"melody: cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"melody: {module_name!r} has no attribute {attr!r}") from None
    if factory:
        obj = obj()
    if not isinstance(obj, Melody):
        raise SystemExit(f"melody: {spec} is {type(obj).__name__}, not a melody.Melody"
                         " (use --factory if it is a function returning one)")
    return obj


def ssl_context(certfile: str | None, keyfile: str | None) -> _ssl.SSLContext | None:
    """The server TLS context of ``--certfile``/``--keyfile``, or None without a certificate.

    Raises ``SystemExit`` for a key without a certificate.
    """
    if not certfile:
        if keyfile:
            raise SystemExit("melody: --keyfile needs --certfile")
        return None
    context = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def apply_config(hub: Any, spec: str) -> None:
    """Apply ``--config`` (a ``.toml`` file or ``MODULE:FUNCTION``) to ``hub`` and make it the
    source SIGHUP reloads. Raises ``SystemExit`` saying why when it is refused."""
    from melody.errors import ConfigError
    from melody.reload import load_source

    try:
        hub.reload(load_source(spec))
    except ConfigError as exc:
        raise SystemExit(f"melody: --config {spec}: {exc}") from None
