"""Live reconfiguration: the part of a hub's settings that changes without a restart.

``melody serve app:hub --config settings.toml`` (or ``--config module:function``) applies the
settings at start; ``SIGHUP`` (or ``hub.reload()``) reads the same source again and applies
what changed, dropping no connection. The reloadable settings, and their TOML keys:

===========================  ===============================================================
``log_level``                the level of the ``melody`` loggers (``"debug"`` ... ``"critical"``)
``allowed_origins``          ``Config.allowed_origins`` and the entries of the hub's
                             :class:`~melody.middleware.OriginAllowList`, if it has one
``[rate_limit]``             ``Config.rate_limit``: the fields of :class:`melody.RateLimit`
                             (``rate_limit = false`` turns it off)
``[connection_limit]``       ``max_total``, ``max_per_ip``, ``retry_after`` of the hub's
                             :class:`~melody.middleware.ConnectionLimit`
``[handshake_rate_limit]``   ``per_ip``, ``burst``, ``total``, ``total_burst`` of the hub's
                             :class:`~melody.middleware.HandshakeRateLimit`
``[jwt]``                    ``keys`` (secrets or PEM text) and ``key_files`` (PEM files,
                             relative to the TOML file), tried in order, ``algorithms``,
                             ``audience`` (a string or a list), ``issuer`` and ``leeway``
                             (seconds), of the hub's :class:`~melody.middleware.JWTAuth`
===========================  ===============================================================

A key the source leaves out keeps the value the application gave it (the value it had when
the source was first applied), so removing a line and reloading undoes it.

Everything is validated before anything changes: an unknown key, a wrong type, a value out of
range, a ``[connection_limit]`` or ``[jwt]`` for a hub that registered no such middleware, a
file that cannot be read or parsed: :class:`~melody.errors.ConfigError`, an ERROR log line on
the ``melody.reload`` logger, and the hub as it was. A reload that applies logs one INFO line
listing what changed (JWT keys by fingerprint, never their text).

Where each change takes effect:

* origins, connection and handshake-rate limits and the JWT settings: on the next upgrade;
  the ``refresh`` of a session already open checks its fresh token against the new keys,
  audience, issuer and leeway;
* the rate limit: at once, for every session (the buckets are the hub's, read per message);
* nothing closes a connection: a session that a lower limit would now refuse stays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melody._hubstate import state_of
from melody.config import RateLimit
from melody.errors import ConfigError
from melody.middleware import ConnectionLimit, HandshakeRateLimit, JWTAuth, OriginAllowList

if TYPE_CHECKING:
    import asyncio

    from melody.hub import Melody

__all__ = ["Source", "Reloader", "load_source", "install_sighup", "reload_logged",
           "LOG_LEVELS"]

logger = logging.getLogger("melody.reload")

#: Where settings come from: a TOML file's path, or a function returning the mapping.
Source = str | os.PathLike[str] | Callable[[], Mapping[str, Any]]

#: The values ``log_level`` takes.
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}

_TOP_KEYS = ("log_level", "allowed_origins", "rate_limit", "connection_limit",
             "handshake_rate_limit", "jwt")
_RATE_KEYS = tuple(f.name for f in dataclasses.fields(RateLimit))
_CONNECTION_KEYS = ("max_total", "max_per_ip", "retry_after")
_HANDSHAKE_RATE_KEYS = ("per_ip", "burst", "total", "total_burst")
_JWT_KEYS = ("keys", "key_files", "algorithms", "audience", "issuer", "leeway")


def load_source(spec: str) -> Source:
    """The source ``melody serve --config`` names: a path ending in ``.toml``, or
    ``module:function`` (imported now, called at each reload). Raises ConfigError."""
    if spec.endswith(".toml"):
        return os.path.abspath(spec)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--config takes a .toml file or MODULE:FUNCTION, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--config {spec}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"--config {spec} is {type(obj).__name__}, not a function")
    function: Callable[[], Mapping[str, Any]] = obj
    return function


def describe(source: Source) -> str:
    """How log lines name ``source``."""
    if callable(source):
        return f"{getattr(source, '__module__', '?')}:{getattr(source, '__qualname__', '?')}"
    return os.fspath(source)


def _read(source: Source) -> tuple[Mapping[str, Any], Path | None]:
    # The mapping and the folder that key_files are relative to.
    if callable(source):
        try:
            settings = source()
        except Exception as exc:
            raise ConfigError(f"{describe(source)} raised {type(exc).__name__}: {exc}") from None
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{describe(source)} returned {type(settings).__name__}, "
                              "not a mapping")
        return settings, None
    import tomllib

    path = Path(os.fspath(source))
    try:
        with path.open("rb") as file:
            return tomllib.load(file), path.parent
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _table(settings: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = settings[name]
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] is a table, not {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]} (known: {', '.join(allowed)})")
    return dict(value)


def _strings(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} is a list of strings")
    return list(value)


def fingerprint(key: Any) -> str:
    """A short, safe name for a JWT key in logs: the first 12 hex digits of its SHA-256
    (keys that are not text or bytes, such as key objects, are named by their type)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    if isinstance(key, bytes):
        return "sha256:" + hashlib.sha256(key).hexdigest()[:12]
    return f"<{type(key).__name__}>"


def _key_names(key: Any) -> list[str] | str:
    if callable(key):
        return "<function>"
    keys = key if isinstance(key, (list, tuple)) else [key]
    return [fingerprint(k) for k in keys]


def _level_name(level: int) -> str:
    return logging.getLevelName(level).lower() if level else "notset"


class Reloader:
    """The reloadable settings of one hub and where they come from (``hub.reload``).

    Holds the application's own values (taken when the first settings are applied: what a
    key left out returns to) and applies a validated mapping all at once.
    """

    def __init__(self, hub: Melody) -> None:
        self.hub = hub
        self._state = state_of(hub)
        #: The source ``reload()`` reads (None until one is given).
        self.source: Source | None = None
        middleware = self._state.middleware
        self._jwt = [m for m in middleware if isinstance(m, JWTAuth)]
        self._limits = [m for m in middleware if isinstance(m, ConnectionLimit)]
        self._rates = [m for m in middleware if isinstance(m, HandshakeRateLimit)]
        self._origins = [m for m in middleware if isinstance(m, OriginAllowList)]
        melody_logger = logging.getLogger("melody")
        config = hub.config
        # The application's values: what a setting the source leaves out comes back to.
        self._base: dict[str, Any] = {
            "log_level": melody_logger.level,
            "allowed_origins": config.allowed_origins,
            "origin_lists": [list(m.origins) for m in self._origins],
            "rate_limit": config.rate_limit,
            "connection_limit": [(m.max_total, m.max_per_ip, m.retry_after)
                                 for m in self._limits],
            "handshake_rate_limit": [tuple(getattr(m, k) for k in _HANDSHAKE_RATE_KEYS)
                                     for m in self._rates],
            "jwt": [(m.key, list(m.algorithms), m.audience, m.issuer, m.leeway)
                    for m in self._jwt],
        }

    # -- validation: everything is built before anything changes -----------------------------

    def _plan(self, settings: Mapping[str, Any], folder: Path | None) -> dict[str, Any]:
        if not isinstance(settings, Mapping):
            raise ConfigError(f"settings are a mapping, not {type(settings).__name__}")
        unknown = sorted(str(k) for k in set(settings) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} (known: {', '.join(_TOP_KEYS)})")
        base = self._base
        plan: dict[str, Any] = {
            "log_level": base["log_level"], "allowed_origins": base["allowed_origins"],
            "origin_lists": base["origin_lists"], "rate_limit": base["rate_limit"],
            "connection_limit": base["connection_limit"],
            "handshake_rate_limit": base["handshake_rate_limit"], "jwt": base["jwt"]}
        if "log_level" in settings:
            level = settings["log_level"]
            if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
                raise ConfigError(f"log_level is one of {', '.join(LOG_LEVELS)}, "
                                  f"not {level!r}")
            plan["log_level"] = LOG_LEVELS[level.lower()]
        if "allowed_origins" in settings:
            origins = _strings("allowed_origins", settings["allowed_origins"])
            self._check_origins(origins)
            plan["allowed_origins"] = tuple(origins)
            plan["origin_lists"] = [list(origins) for _ in self._origins]
        if "rate_limit" in settings:
            plan["rate_limit"] = self._rate_limit(settings)
        if "connection_limit" in settings:
            plan["connection_limit"] = self._connection_limit(settings)
        if "handshake_rate_limit" in settings:
            plan["handshake_rate_limit"] = self._handshake_rate(settings)
        if "jwt" in settings:
            plan["jwt"] = self._jwt_keys(settings, folder)
        try:
            plan["config"] = dataclasses.replace(
                self.hub.config, allowed_origins=plan["allowed_origins"],
                rate_limit=plan["rate_limit"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return plan

    def _check_origins(self, origins: list[str]) -> None:
        entries = [o for o in origins if o not in ("*", "same-origin")]
        if entries:
            try:
                OriginAllowList(entries)  # parses every entry, as at construction
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self._origins and not origins:
            raise ConfigError("allowed_origins is empty, and the hub's OriginAllowList needs "
                              "at least one entry")

    def _rate_limit(self, settings: Mapping[str, Any]) -> RateLimit | None:
        value = settings["rate_limit"]
        if value is False:
            return None
        fields = _table(settings, "rate_limit", _RATE_KEYS)
        try:
            return RateLimit(**fields)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"rate_limit: {exc}") from None

    def _connection_limit(self, settings: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        fields = _table(settings, "connection_limit", _CONNECTION_KEYS)
        if not self._limits:
            raise ConfigError("[connection_limit] needs a melody.middleware.ConnectionLimit "
                              "registered with hub.use")
        planned = []
        for (max_total, max_per_ip, retry_after) in self._base["connection_limit"]:
            values = (fields.get("max_total", max_total), fields.get("max_per_ip", max_per_ip),
                      fields.get("retry_after", retry_after))
            try:
                ConnectionLimit(values[0], values[1], retry_after=values[2])
            except ValueError as exc:
                raise ConfigError(f"connection_limit: {exc}") from None
            planned.append(values)
        return planned

    def _handshake_rate(self, settings: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        fields = _table(settings, "handshake_rate_limit", _HANDSHAKE_RATE_KEYS)
        if not self._rates:
            raise ConfigError("[handshake_rate_limit] needs a "
                              "melody.middleware.HandshakeRateLimit registered with hub.use")
        planned = []
        for base in self._base["handshake_rate_limit"]:
            values = tuple(fields.get(k, v) for k, v in zip(_HANDSHAKE_RATE_KEYS, base,
                                                              strict=True))
            if "per_ip" in fields and "burst" not in fields:
                values = (values[0], None, *values[2:])  # one second's worth of the new rate
            if "total" in fields and "total_burst" not in fields:
                values = (*values[:3], None)
            try:
                HandshakeRateLimit(*values[:1], burst=values[1], total=values[2],
                                   total_burst=values[3])
            except ValueError as exc:
                raise ConfigError(f"handshake_rate_limit: {exc}") from None
            planned.append(values)
        return planned

    def _jwt_keys(self, settings: Mapping[str, Any],
                  folder: Path | None) -> list[tuple[Any, ...]]:
        fields = _table(settings, "jwt", _JWT_KEYS)
        if not self._jwt:
            raise ConfigError("[jwt] needs a melody.middleware.JWTAuth registered with hub.use")
        keys: list[Any] = _strings("jwt.keys", fields.get("keys", []))
        for name in _strings("jwt.key_files", fields.get("key_files", [])):
            path = Path(name)
            if folder is not None and not path.is_absolute():
                path = folder / path
            try:
                keys.append(path.read_text())
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"jwt.key_files: cannot read {path}: {exc}") from None
        if ("keys" in fields or "key_files" in fields) and not keys:
            raise ConfigError("jwt: keys and key_files name no key")
        if any(not k for k in keys):
            raise ConfigError("jwt: a key is empty")
        audience = fields.get("audience")
        if "audience" in fields and not (isinstance(audience, str) and audience) and not (
                isinstance(audience, list) and audience
                and all(isinstance(a, str) and a for a in audience)):
            raise ConfigError(f"jwt.audience is a string or a list of strings, not {audience!r}")
        issuer = fields.get("issuer")
        if "issuer" in fields and not (isinstance(issuer, str) and issuer):
            raise ConfigError(f"jwt.issuer is a string, not {issuer!r}")
        leeway = fields.get("leeway", 0.0)
        if isinstance(leeway, bool) or not isinstance(leeway, (int, float)):
            raise ConfigError(f"jwt.leeway is a number of seconds, not {leeway!r}")
        planned = []
        for key, algorithms, base_audience, base_issuer, base_leeway in self._base["jwt"]:
            new = (
                (keys if len(keys) > 1 else keys[0]) if keys else key,
                (_strings("jwt.algorithms", fields["algorithms"])
                 if "algorithms" in fields else algorithms),
                audience if "audience" in fields else base_audience,
                issuer if "issuer" in fields else base_issuer,
                float(leeway) if "leeway" in fields else base_leeway)
            try:
                JWTAuth(new[0], algorithms=new[1], audience=new[2], issuer=new[3],
                        leeway=new[4])
            except ValueError as exc:
                raise ConfigError(f"jwt: {exc}") from None
            planned.append(new)
        return planned

    # -- applying -----------------------------------------------------------------------------

    def apply(self, settings: Mapping[str, Any], folder: Path | None = None,
              origin: str = "settings") -> dict[str, tuple[Any, Any]]:
        """Validate ``settings`` and apply them; what changed, as ``name -> (old, new)``.

        Raises ConfigError (logged at ERROR) and changes nothing when a value is refused.
        """
        try:
            plan = self._plan(settings, folder)
        except ConfigError as exc:
            logger.error("reload of %s refused, nothing changed: %s", origin, exc,
                         extra={"event": "reload", "outcome": "refused"})
            raise
        changes: dict[str, tuple[Any, Any]] = {}
        melody_logger = logging.getLogger("melody")
        if melody_logger.level != plan["log_level"]:
            changes["log_level"] = (_level_name(melody_logger.level),
                                    _level_name(plan["log_level"]))
            melody_logger.setLevel(plan["log_level"])
        config = self.hub.config
        new_config = plan["config"]
        if _origins(config.allowed_origins) != _origins(new_config.allowed_origins):
            changes["allowed_origins"] = (_origins(config.allowed_origins),
                                          _origins(new_config.allowed_origins))
        if config.rate_limit != new_config.rate_limit:
            changes["rate_limit"] = (_rate(config.rate_limit), _rate(new_config.rate_limit))
        if changes.keys() & {"allowed_origins", "rate_limit"}:
            self._state.set_config(new_config)
        for allow, entries in zip(self._origins, plan["origin_lists"], strict=True):
            if allow.origins != entries:
                changes.setdefault("allowed_origins", (allow.origins, entries))
                allow.origins = list(entries)
        for limit, values in zip(self._limits, plan["connection_limit"], strict=True):
            for name, value in zip(_CONNECTION_KEYS, values, strict=True):
                if getattr(limit, name) != value:
                    changes[f"connection_limit.{name}"] = (getattr(limit, name), value)
                    setattr(limit, name, value)
        for rate, values in zip(self._rates, plan["handshake_rate_limit"], strict=True):
            before = tuple(getattr(rate, k) for k in _HANDSHAKE_RATE_KEYS)
            rate.configure(*values)
            after = tuple(getattr(rate, k) for k in _HANDSHAKE_RATE_KEYS)
            for name, old, new in zip(_HANDSHAKE_RATE_KEYS, before, after, strict=True):
                if old != new:
                    changes[f"handshake_rate_limit.{name}"] = (old, new)
        for auth, (key, algorithms, audience, issuer, leeway) in zip(self._jwt, plan["jwt"],
                                                                     strict=True):
            old_names, new_names = _key_names(auth.key), _key_names(key)
            if old_names != new_names:
                changes["jwt.keys"] = (old_names, new_names)
            auth.key = key
            if auth.algorithms != algorithms:
                changes["jwt.algorithms"] = (auth.algorithms, list(algorithms))
                auth.algorithms = list(algorithms)
            for name, value in (("audience", audience), ("issuer", issuer),
                                ("leeway", leeway)):
                if getattr(auth, name) != value:
                    changes[f"jwt.{name}"] = (getattr(auth, name), value)
                    setattr(auth, name, value)
        text = "; ".join(f"{name}: {old} -> {new}" for name, (old, new) in changes.items())
        logger.info("reloaded %s: %s", origin, text or "nothing changed",
                    extra={"event": "reload", "outcome": "applied",
                           "changed": sorted(changes)})
        return changes

    def reload(self, source: Source | None = None) -> dict[str, tuple[Any, Any]]:
        """Read ``source`` (default: the last one given) and apply it (see :meth:`apply`).
        Raises RuntimeError when no source was ever given."""
        if source is None:
            source = self.source
            if source is None:
                raise RuntimeError("this hub has no configuration source: pass one to "
                                   "hub.reload(source) or use melody serve --config")
        try:
            settings, folder = _read(source)
        except ConfigError as exc:
            logger.error("reload of %s refused, nothing changed: %s", describe(source), exc,
                         extra={"event": "reload", "outcome": "refused"})
            raise
        changes = self.apply(settings, folder, describe(source))
        self.source = source
        return changes


def _origins(origins: Any) -> Any:
    return None if origins is None else list(origins)


def _rate(limit: RateLimit | None) -> Any:
    if limit is None:
        return None
    return {f.name: getattr(limit, f.name) for f in dataclasses.fields(limit)
            if getattr(limit, f.name) is not None}


def reload_logged(hub: Melody, source: Source | None = None) -> bool:
    """``hub.reload(source)`` (default: the hub's source), for a signal handler: True when it
    applied; a refusal is logged (by the reload) rather than raised, and changes nothing."""
    try:
        hub.reload(source)
    except ConfigError:
        return False  # logged by the reload, and the hub is as it was
    except Exception:
        logger.exception("reload raised")
        return False
    return True


def install_sighup(hub: Melody, loop: asyncio.AbstractEventLoop,
                   on_reloaded: Callable[[], None] | None = None,
                   source: Source | None = None) -> bool:
    """Reload ``hub`` from ``source`` (default: its own) on SIGHUP (``melody serve`` and its
    workers); a refused reload is logged (ERROR) and changes nothing; ``on_reloaded`` is
    called after one that applied. False, and nothing installed, when there is no source or
    the platform has no SIGHUP."""
    if source is None:
        source = hub.config_source
    if source is None or not hasattr(signal, "SIGHUP"):
        return False

    def reload() -> None:
        if reload_logged(hub, source) and on_reloaded is not None:
            on_reloaded()

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True
