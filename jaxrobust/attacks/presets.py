"""Named attacker settings from the papers, as plain dicts of keyword arguments.

``get(name)`` returns a fresh dict whose ``'attack'`` entry names the attack (see
:func:`jaxrobust.attacks.get`) and whose other entries are that attack's keyword arguments, so a
config can store just the preset name::

    kwargs = presets.attack_kwargs('advprop_pgd5')
    x_adv = attacks.get(presets.get('advprop_pgd5')['attack'])(logits_fn, x, y, rng, **kwargs)
    # or, equivalently
    x_adv = presets.build('advprop_pgd5')(logits_fn, x, y, rng)

Epsilons and step sizes are in [0, 1] pixel units; the comments give the papers' 0-255 units.

AdvProp (Xie et al. 2020, ``002_3c885072544f102e.txt``), section 4 "Adversarial Attackers": PGD
under L-inf, eps in {1, 2, 3, 4} (of 255), n = eps + 1 iterations except n = 1 for eps = 1, step
size alpha = 1; "PGD5 (eps=4)" is the default attacker, and section 5.3 uses "PGD7 (eps=6)" for the
largest model. Table 7 replaces PGD (eps=4, n=5, alpha=1) by I-FGSM (no random start) and GD (no
projection onto the eps-ball). The paper leaves targeted vs untargeted open; these presets are
untargeted (see the AdvProp method's docstring).

Adversarial training baselines: Madry et al. (2018) PGD with the 10 steps of the EWS paper and
Rice et al. 2020 (Madry's CIFAR runs used 7; eps 8, step 2, random start) and
TRADES (Zhang et al. 2019): eps 8, step 2 (0.007 in the TRADES code, ~1.8/255), 10 steps, KL inner
loss, start ``x + 0.001 * N(0, I)``.

Evaluation: PGD-20 / FGSM / I-FGSM-10 at eps 8 and APGD-CE / APGD-T with the 100 iterations of the
APGD paper.
"""

from __future__ import annotations

import copy
import functools
from typing import Callable

_PRESETS = {
    # --- AdvProp, section 4 (eps / step in 0-255 units: eps, alpha = 1). ---
    'advprop_pgd1': dict(attack='pgd', eps=1 / 255, step_size=1 / 255, num_steps=1, norm='linf',
                         random_start=True),  # PGD1 (eps=1)
    'advprop_pgd3': dict(attack='pgd', eps=2 / 255, step_size=1 / 255, num_steps=3, norm='linf',
                         random_start=True),  # PGD3 (eps=2)
    'advprop_pgd4': dict(attack='pgd', eps=3 / 255, step_size=1 / 255, num_steps=4, norm='linf',
                         random_start=True),  # PGD4 (eps=3)
    'advprop_pgd5': dict(attack='pgd', eps=4 / 255, step_size=1 / 255, num_steps=5, norm='linf',
                         random_start=True),  # PGD5 (eps=4), the paper's default
    'advprop_pgd7': dict(attack='pgd', eps=6 / 255, step_size=1 / 255, num_steps=7, norm='linf',
                         random_start=True),  # PGD7 (eps=6), section 5.3 (EfficientNet-B7)
    # --- AdvProp, Table 7 attacker variants (eps=4, n=5, alpha=1). ---
    'advprop_ifgsm5': dict(attack='ifgsm', eps=4 / 255, step_size=1 / 255, num_steps=5,
                           norm='linf'),
    'advprop_gd5': dict(attack='gd', eps=4 / 255, step_size=1 / 255, num_steps=5, norm='linf',
                        random_start=True),
    # --- Adversarial-training baselines. ---
    'madry_pgd10': dict(attack='pgd', eps=8 / 255, step_size=2 / 255, num_steps=10, norm='linf',
                        random_start=True, loss='ce'),
    'trades': dict(attack='pgd', eps=8 / 255, step_size=2 / 255, num_steps=10, norm='linf',
                   random_start='normal', init_std=0.001, loss='kl'),
    # --- Evaluation attacks (CIFAR, L-inf eps = 8/255). ---
    'pgd20': dict(attack='pgd', eps=8 / 255, step_size=2 / 255, num_steps=20, norm='linf',
                  random_start=True),
    'ifgsm10': dict(attack='ifgsm', eps=8 / 255, step_size=2 / 255, num_steps=10, norm='linf'),
    'fgsm': dict(attack='fgsm', eps=8 / 255, norm='linf'),
    'apgd_ce': dict(attack='apgd_ce', eps=8 / 255, num_steps=100, norm='linf'),
    'apgd_t': dict(attack='apgd_t', eps=8 / 255, num_steps=100, norm='linf',
                   num_target_classes=9),
    # L2 eps = 0.5 (CIFAR's usual L2 threat model), step 2.5 * eps / n (Madry et al.'s rule).
    'pgd20_l2': dict(attack='pgd', eps=0.5, step_size=2.5 * 0.5 / 20, num_steps=20, norm='l2',
                     random_start=True),
}

NAMES = tuple(_PRESETS)


def get(name: str) -> dict:
  """Returns a fresh copy of preset ``name``: ``{'attack': <attack name>, **kwargs}``.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  if not isinstance(name, str) or name not in _PRESETS:
    raise ValueError(f'Unknown attack preset {name!r}; valid names: {NAMES}.')
  return copy.deepcopy(_PRESETS[name])


def attack_kwargs(name: str) -> dict:
  """Preset ``name`` without its ``'attack'`` entry: the keyword arguments of the attack."""
  kwargs = get(name)
  del kwargs['attack']
  return kwargs


def build(name: str, **overrides) -> Callable:
  """Attack ``f(logits_fn, x, y, rng)`` with the preset kwargs, updated by ``overrides``, bound."""
  from jaxrobust.attacks import registry  # pylint: disable=g-import-not-at-top
  kwargs = get(name)
  attack = registry.get(kwargs.pop('attack'))
  kwargs.update(overrides)
  return functools.partial(attack, **kwargs)
