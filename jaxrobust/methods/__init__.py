"""Training methods, registered by name.

A method is one module in this package that defines a :class:`~jaxrobust.methods.base.Method`
subclass decorated with ``@register('<name>')``. Every module here is imported on first lookup,
so adding a method means adding one file (and a config) — the training loop never changes.
README.md's "Adding a method" lists the rest (tests, benchmark, comparison script).
"""

import importlib
import pkgutil

from jaxrobust.methods.base import Method  # noqa: F401

_REGISTRY: dict[str, type] = {}
_loaded = False


def register(name: str):
  """Class decorator: makes a Method subclass available as ``config.method = name``."""
  def wrap(cls):
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f'Method {name!r} registered twice ({_REGISTRY[name]} and {cls}).')
    cls.name = name
    _REGISTRY[name] = cls
    return cls
  return wrap


def _load_all():
  global _loaded
  if not _loaded:
    for mod in pkgutil.iter_modules(__path__):
      if mod.name not in ('base', 'common'):
        importlib.import_module(f'{__name__}.{mod.name}')
    _loaded = True


def names() -> list[str]:
  _load_all()
  return sorted(_REGISTRY)


def get(name: str) -> type:
  """The Method class registered as ``name``; ValueError listing valid names otherwise."""
  _load_all()
  if name not in _REGISTRY:
    raise ValueError(f'Unknown method {name!r}. Valid methods: {", ".join(names())}.')
  return _REGISTRY[name]
