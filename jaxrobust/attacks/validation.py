"""Eager argument checks shared by the attacks (ValueError naming the bad value and allowed ones).

Numeric hyper-parameters such as ``eps`` may be traced (so one compiled program serves a sweep over
eps); they are checked only when their value is known at trace time.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np


def concrete_value(v):
  """Returns ``v`` as a numpy array if it is known at trace time, else None (a tracer)."""
  if isinstance(v, jax.core.Tracer):
    return None
  try:
    return np.asarray(v)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_range(name: str, v, *, low: float, high: float = np.inf, low_inclusive: bool = True,
                high_inclusive: bool = True) -> None:
  """Raises ValueError if a concrete ``v`` lies outside [low, high] (bounds open where asked)."""
  arr = concrete_value(v)
  if arr is None:
    return
  if not np.issubdtype(arr.dtype, np.number) or arr.ndim != 0:
    raise ValueError(f'{name} must be a real scalar, got {v!r}.')
  val = float(arr)
  ok_low = val >= low if low_inclusive else val > low
  ok_high = val <= high if high_inclusive else val < high
  if not (ok_low and ok_high and np.isfinite(val)):
    lo = '[' if low_inclusive else '('
    hi = ']' if high_inclusive else ')'
    raise ValueError(f'{name}={val} is out of range; allowed: {lo}{low}, {high}{hi}.')


def check_int(name: str, v, *, low: int) -> int:
  """Returns ``v`` if it is a Python/numpy integer >= low (it must be static), else ValueError."""
  if isinstance(v, bool) or not isinstance(v, numbers.Integral):
    raise ValueError(f'{name} must be a static Python int >= {low}, got {v!r}.')
  if v < low:
    raise ValueError(f'{name}={v} is out of range; allowed: integers >= {low}.')
  return int(v)


def check_bool(name: str, v) -> bool:
  """Returns ``v`` if it is True or False (not a truthy string such as 'False'), else ValueError."""
  if not isinstance(v, (bool, np.bool_)):
    raise ValueError(f'{name} must be True or False, got {v!r}.')
  return bool(v)


def check_choice(name: str, v, allowed) -> None:
  """Raises ValueError if ``v`` is not one of ``allowed``."""
  if v not in allowed:
    raise ValueError(f'Unknown {name} {v!r}; allowed values: {tuple(allowed)}.')
