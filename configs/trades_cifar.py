r"""TRADES on CIFAR-10: PreAct ResNet-18, KL inner maximisation (PGD-10, eps 8/255), beta = 6.

TRADES (Zhang et al. 2019): loss CE(f(x), y) + beta KL(f(x) || f(x')), beta = 6 for CIFAR-10;
inner maximisation of the KL by L-inf PGD, eps = 8/255, 10 steps of 2/255 (TRADES' own code uses
0.007; 2/255 = 0.0078 is the step of the TRADES-AWP code, whose setting EWS follows), start
x + 0.001 N(0, I), crafted with eval-mode BN. Schedule of the EWS paper's TRADES
experiments (``001_f126abb63f157b30.txt``, supplementary; its gamma = 1/6 is beta = 6 in TRADES'
parameterisation): PreAct ResNet-18, SGD (momentum 0.9, weight decay 5e-4), batch 128, learning
rate 0.1 divided by 10 at epochs 100 and 150 of 200.

    python -m jaxrobust.main --config=configs/trades_cifar.py --workdir=/tmp/trades_cifar

The CPU-sized comparison on the local CIFAR-10 copy. As for PGD-AT (configs/pgd_at_cifar.py), ten
KL steps would make the 5 epochs take hours on a 2-core CPU, so this run crafts with ONE KL sign
step of size eps from TRADES' own start (a single-step TRADES); it is still evaluated with
PGD-10/PGD-20 and APGD:

    python -m jaxrobust.main --config=configs/trades_cifar.py --workdir=/tmp/trades_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2 \
      --config.trades_num_steps=1 --config.trades_step_size=0.03137254901960784
"""

import ml_collections

from configs import default


def add_trades_keys(c):
  """TRADES' inner maximisation and beta (keys of jaxrobust.methods.adversarial_training)."""
  c.trades_attack = 'trades'        # KL loss, eps 8/255, step 2/255, 10 steps, 0.001 N(0, I) start
  c.trades_eps = ml_collections.FieldReference(None, field_type=float)        # None = preset
  c.trades_step_size = ml_collections.FieldReference(None, field_type=float)  # None = preset
  c.trades_num_steps = ml_collections.FieldReference(None, field_type=int)    # None = preset
  c.trades_beta = 6.0               # = 1 / gamma of the EWS paper (gamma = 1/6, section 3.4.2)
  c.trades_craft_bn = 'running'     # eval-mode BN while crafting, as the reference
  return c


def get_config():
  c = add_trades_keys(default.adversarial_cifar10_recipe(default.get_config()))
  c.method = 'trades'
  return c
