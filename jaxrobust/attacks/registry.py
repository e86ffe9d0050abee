"""Attacks by name: ``get('pgd')`` etc. (names are used in configs and reports)."""

from __future__ import annotations

from typing import Callable

from jaxrobust.attacks import autopgd as apgd_lib
from jaxrobust.attacks import pgd_family as pgd_lib

_REGISTRY = {
    'pgd': pgd_lib.pgd,
    'fgsm': pgd_lib.fgsm,
    'ifgsm': pgd_lib.ifgsm,
    'gd': pgd_lib.gd,
    'apgd': apgd_lib.apgd,
    'apgd_ce': apgd_lib.apgd_ce,
    'apgd_t': apgd_lib.apgd_t,
}

NAMES = tuple(_REGISTRY)

# Names under which results are reported (APGD runs are never "AutoAttack").
DISPLAY_NAMES = {
    'pgd': 'PGD', 'fgsm': 'FGSM', 'ifgsm': 'I-FGSM', 'gd': 'GD', 'apgd': 'APGD',
    'apgd_ce': 'APGD-CE', 'apgd_t': 'APGD-T',
}


def get(name: str) -> Callable:
  """Returns the attack function registered as ``name``.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(f'Unknown attack {name!r}; valid names: {NAMES}.') from None
