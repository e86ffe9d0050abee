"""Adversarial attacks on pure ``logits_fn(x) -> logits`` functions of images in [0, 1].

Attacks are model-agnostic: the caller closes over parameters, BatchNorm domain and train/eval mode,
and guarantees that calling ``logits_fn`` updates no BatchNorm statistics (attacks never see BN
state). Every attack has the signature ``attack(logits_fn, x, y, rng, **hyper_parameters) -> x_adv``
and returns ``stop_gradient``-ed images in the threat ball intersected with [0, 1] (GD: only
[0, 1]).
Call them inside ``jax.jit``; the hyper-parameters that select the program (numbers of steps,
restarts, norm, loss, ...) are static, epsilons and step sizes may be traced.

Attacks (by :func:`get` name):
  'pgd'      projected gradient ascent, L-inf/L2, random start, restarts, CE/margin/KL/DLR, targeted
  'fgsm'     one step of size eps from x
  'ifgsm'    PGD without random start
  'gd'       PGD without projection onto the eps-ball
  'apgd'     APGD (Croce & Hein 2020) with any of its losses
  'apgd_ce'  APGD on cross-entropy
  'apgd_t'   APGD on the targeted DLR loss over the top-k other classes

Report APGD results as APGD-CE / APGD-T, never as "AutoAttack".
"""

from jaxrobust.attacks import losses
from jaxrobust.attacks import parts
from jaxrobust.attacks import presets
from jaxrobust.attacks.autopgd import APGDResult
from jaxrobust.attacks.autopgd import apgd
from jaxrobust.attacks.autopgd import apgd_ce
from jaxrobust.attacks.autopgd import apgd_run
from jaxrobust.attacks.autopgd import apgd_t
from jaxrobust.attacks.autopgd import checkpoints as apgd_checkpoints
from jaxrobust.attacks.metrics import correct
from jaxrobust.attacks.metrics import perturbation_stats
from jaxrobust.attacks.metrics import robust_accuracy
from jaxrobust.attacks.metrics import robust_correct
from jaxrobust.attacks.metrics import worst_case_correct
from jaxrobust.attacks.parts import perturbation_norm
from jaxrobust.attacks.parts import project
from jaxrobust.attacks.pgd_family import fgsm
from jaxrobust.attacks.pgd_family import gd
from jaxrobust.attacks.pgd_family import ifgsm
from jaxrobust.attacks.pgd_family import pgd
from jaxrobust.attacks.pgd_family import pgd_trajectory
from jaxrobust.attacks.registry import NAMES
from jaxrobust.attacks.registry import get
