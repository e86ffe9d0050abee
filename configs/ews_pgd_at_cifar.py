"""EWS on Madry PGD adversarial training, CIFAR-10 (paper section 4.2, supplementary E).

EWS + AT (Eq. 3-4 with phi = CE, gamma = 0): PreAct ResNet-18, 200 epochs, SGD (momentum 0.9,
batch 128, weight decay 5e-4), learning rate 0.1 divided by 10 at epochs 100 and 150; PGD-10,
L-inf eps 8/255 (step 2/255); lambda = 1, 10% of the data for the search, which evaluates the
subnets on PGD examples (section 3.4.1). The paper also early-stops (Rice et al. 2020); pick
the best checkpoint by robust accuracy from the periodic evaluations.

    python -m jaxrobust.main --config=configs/ews_pgd_at_cifar.py --workdir=/tmp/ews_pgd_at

Without EWS (the baseline): ``--config.method=pgd_at``; AWP on top: ``--config.awp_gamma=5e-3``.
"""

from configs import default
from configs.ews_cifar import add_ews_keys


def add_adversarial_recipe(c):
  """Supplementary E's adversarial-training recipe (PreAct ResNet-18, 200 epochs)."""
  c.dataset = 'cifar10'
  c.model = 'preact_resnet18'
  c.num_epochs = 200.0
  c.batch_size = 128
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'step'
  c.lr_boundaries = (100.0, 150.0)
  c.lr_decay_factor = 0.1
  # Base methods' keys (jaxrobust.methods.adversarial_training).
  c.pgd_at_attack = 'madry_pgd10'    # PGD-10, eps 8/255, step 2/255, random start
  c.pgd_at_gamma = 0.0               # gamma of Eq. 3 for AT
  c.pgd_at_craft_bn = 'batch'
  c.trades_attack = 'trades'         # PGD-10 on the KL, eps 8/255, start x + 0.001 N(0, I)
  c.trades_beta = 6.0                # = 1 / gamma, gamma = 1/6 (section 3.4.2)
  c.trades_craft_bn = 'running'
  return c


def get_config():
  c = add_ews_keys(add_adversarial_recipe(default.get_config()))
  c.method = 'ews_pgd_at'
  return c
