"""Plugins: modules that extend fairal (a strategy, a metric, a network), loaded in every process that runs its work.

A plugin is a Python module that registers what it adds when it is imported (``fairal.acquisition.register``,
``fairal.metrics.register_metric``, ``fairal.run.network.register_network``). It is loaded by

- ``fairal --plugin FILE_OR_MODULE COMMAND ...`` (repeatable) or the environment variable ``FAIRAL_PLUGINS``
  (names separated by the path separator, ``:`` on Linux);
- a study file's ``plugins = ["margin.py"]`` (relative to the study file);
- an installed package's entry point in the group ``fairal.plugins`` (loaded by every ``fairal`` command).

A grid's worker processes start afresh (spawn, or a Ray worker on another machine): :func:`for_workers` wraps the
function that does one task so that each worker first loads the driver's plugins and then adds what the driver
registered at run time (in a script or a notebook: statistics, base scores, metrics, networks), sent with
cloudpickle, which also carries lambdas and functions defined in ``__main__``. So whatever the driver can run, its
workers can.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from fairal import acquisition, metrics
from fairal.errors import FairalError
from fairal.run import network

ENTRY_POINT_GROUP = "fairal.plugins"
ENV_VAR = "FAIRAL_PLUGINS"

#: The plugins loaded in this process, by their spec (an absolute file path or a module name), in load order.
_LOADED: dict[str, ModuleType] = {}
_ENTRY_POINTS_LOADED = False


def _spec_of(spec: str | Path) -> tuple[str, Path | None]:
    """(the key of a plugin, its file): a path (``.py``, or any name with a path separator) or a module name."""
    text = str(spec).strip()
    if not text:
        raise FairalError("a plugin needs a file or a module name, got an empty one")
    if text.endswith(".py") or os.sep in text or (os.altsep and os.altsep in text):
        path = Path(text).expanduser().resolve()
        return str(path), path
    return text, None


def _file_of(module: ModuleType | None) -> str | None:
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve()) if path else None


def _already(key: str, path: Path | None) -> ModuleType | None:
    """The module of this plugin if its source was executed already under another name: a file also imported as
    a module (``--plugin margin`` and ``--plugin margin.py``, an entry point and its file), so that no plugin's
    registrations run twice."""
    if path is None:
        module = sys.modules.get(key)
        if module is not None:
            return module
        try:
            found = importlib.util.find_spec(key)
        except (ImportError, ValueError):
            return None
        origin = str(Path(found.origin).resolve()) if found is not None and found.origin else None
        return _LOADED.get(origin) if origin else None
    target = str(path)
    for module in list(_LOADED.values()) + list(sys.modules.values()):
        if _file_of(module) == target:
            return module
    return None


def load(spec: str | Path) -> ModuleType:
    """Import the plugin ``spec`` (a ``.py`` file or an importable module name) once in this process; a file
    and a module of the same source are one plugin."""
    key, path = _spec_of(spec)
    if key in _LOADED:
        return _LOADED[key]
    if path is not None and not path.is_file():
        raise FairalError(f"plugin {spec}: no such file")
    if (path is not None and path.suffix != ".py") or (path is None and Path(str(spec)).is_file()):
        raise FairalError(f"plugin {spec}: a plugin is a .py file or a module name, and {spec} is a file without "
                          "the .py suffix")
    module = _already(key, path)
    if module is None:
        module = _execute(spec, key, path)
    _LOADED[key] = module
    return module


def _execute(spec, key: str, path: Path | None) -> ModuleType:
    try:
        if path is None:
            return importlib.import_module(key)
        # A stable module name per file: a worker that loads the same file gets the same name, so that
        # cloudpickle's references to the plugin's functions resolve there too.
        name = f"fairal_plugin_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    except ModuleNotFoundError as err:
        if path is None and err.name is not None and (key == err.name or key.startswith(f"{err.name}.")):
            raise FairalError(f"plugin {spec}: {err} (give a .py file, or a module installed in this "
                              "environment)") from None
        raise FairalError(f"plugin {spec} failed to load: ModuleNotFoundError: {err}") from err
    except Exception as err:  # the plugin's own error (a FairalError of a registration too), named as such
        raise FairalError(f"plugin {spec} failed to load: {type(err).__name__}: {err}") from err


def load_all(specs: Iterable[str | Path]) -> list[str]:
    """Load each plugin of ``specs`` (in order); their keys."""
    keys = []
    for spec in specs:
        load(spec)
        keys.append(_spec_of(spec)[0])
    return keys


def from_environment() -> list[str]:
    """The plugins named by ``FAIRAL_PLUGINS``."""
    return [s for s in os.environ.get(ENV_VAR, "").split(os.pathsep) if s.strip()]


def load_entry_points() -> list[str]:
    """Load the installed packages' plugins (entry points of the group ``fairal.plugins``), once per process."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return []
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()  # imports the module (and checks the attribute of a ``module:attr`` entry point)
        except Exception as err:
            raise FairalError(f"the plugin {ep.name!r} of the installed package {ep.value!r} (entry point group "
                              f"{ENTRY_POINT_GROUP}) failed to load: {type(err).__name__}: {err}") from err
        key = ep.module  # what a worker imports: the module, whatever attribute the entry point names
        _LOADED.setdefault(key, sys.modules[key])
        names.append(key)
    return names


def loaded() -> list[str]:
    """The plugins loaded in this process (files as absolute paths, modules by name), in load order."""
    return list(_LOADED)


# --- what the driver has: sent to the workers ------------------------------------------------------------------


@dataclass(frozen=True)
class Extensions:
    """What a worker must load before its task: the driver's plugins, and its run-time registrations (cloudpickle
    of the base scores, statistics, metrics and networks that are not built in), from the driver process
    ``origin``."""

    plugins: tuple[str, ...] = ()
    registrations: bytes = b""
    origin: str = ""  # the driver process's token (:data:`_PROCESS`)

    def restore(self) -> None:
        """In a worker: load the plugins, then make the tables' registered entries the driver's (a worker that
        served an earlier grid of the driver drops the entries it no longer has and takes their new versions).
        In the driver itself: nothing to do."""
        global _RESTORED
        if self.origin == _PROCESS:
            return
        load_all(self.plugins)
        digest = hashlib.sha1(self.registrations).hexdigest()
        if _RESTORED == digest:
            return

        entries_of = ([],) * len(_TABLES)
        if self.registrations:
            import cloudpickle

            entries_of = cloudpickle.loads(self.registrations)
        for (_kind, table, built_in), entries in zip(_TABLES, entries_of, strict=True):
            for name in [n for n in table if n not in built_in]:
                del table[name]
            table.update({entry.name: entry for entry in entries})
        _RESTORED = digest


#: The registrations restored last in this worker (their digest): the same ones again are not unpickled again.
_RESTORED: str | None = None
#: This process, among all the machines of a cluster (a process id alone may recur on another host).
_PROCESS = uuid.uuid4().hex


#: The tables a plugin adds to: (what an entry is, the table, its built-in names), in the order they are sent.
_TABLES = (("statistic", acquisition.STATISTICS, acquisition.BUILT_IN_STATISTICS),
           ("base score", acquisition.BASES, acquisition.BUILT_IN_BASES),
           ("metric", metrics.METRICS, metrics.BUILT_IN_METRICS),
           ("network", network.NETWORKS, network.BUILT_IN_NETWORKS))


def _registered() -> tuple[list, ...]:
    """The entries of the tables beyond fairal's own: (statistics, base scores, metrics, networks), in table
    order."""
    return tuple([e for n, e in table.items() if n not in built_in] for _kind, table, built_in in _TABLES)


def snapshot() -> Extensions:
    """The driver's plugins and run-time registrations, ready to send to workers; a registration that cannot be
    sent is refused here, naming it, before any work."""
    entries = _registered()
    payload = b""
    if any(entries):
        import cloudpickle

        try:
            payload = cloudpickle.dumps(entries)
        except Exception:  # find the entry to name
            for (kind, _table, _built_in), table in zip(_TABLES, entries, strict=True):
                for entry in table:
                    try:
                        cloudpickle.dumps(entry)
                    except Exception as err:
                        raise FairalError(f"the {kind} {entry.name!r} registered in this process cannot be sent "
                                          f"to the grid's workers ({type(err).__name__}: {err}); register it in a "
                                          "plugin (fairal --plugin FILE, docs/api.md)") from None
            raise
    return Extensions(tuple(_LOADED), payload, _PROCESS)


def _with_extensions(extensions: Extensions, work: Callable, task):
    extensions.restore()
    return work(task)


def for_workers(work: Callable) -> Callable:
    """``work`` (one task in a worker), first loading this process's plugins and registrations there."""
    extensions = snapshot()
    if not extensions.plugins and not extensions.registrations:
        return work
    return functools.partial(_with_extensions, extensions, work)


def source(function: Callable | None, built_in: bool) -> str:
    """Where an entry of a table comes from: ``built in``, the plugin whose module defines ``function``, or
    ``registered at run time``."""
    if built_in:
        return "built in"
    module = getattr(function, "__module__", None)
    for key, loaded_module in _LOADED.items():
        if loaded_module.__name__ == module:
            return f"plugin {key}"
    return "registered at run time"


def record() -> dict | None:
    """What extends fairal in this process, for a run's records: the plugins loaded and the names registered
    beyond the built-in ones (``None`` when nothing does, so that the records of a plain run keep their form)."""
    added = {kind: sorted(e.name for e in entries)
             for kind, entries in zip(("statistics", "bases", "metrics", "networks"), _registered(), strict=True)
             if entries}
    out = {"plugins": loaded(), **{k: added[k] for k in ("bases", "statistics", "metrics", "networks") if k in added}}
    return out if out["plugins"] or added else None
