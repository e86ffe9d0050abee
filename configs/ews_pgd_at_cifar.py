"""EWS on Madry PGD adversarial training, CIFAR-10 (paper section 4.2, supplementary E).

EWS + AT (Eq. 3-4 with phi = CE, gamma = 0): PreAct ResNet-18, 200 epochs, SGD (momentum 0.9,
batch 128, weight decay 5e-4), learning rate 0.1 divided by 10 at epochs 100 and 150; PGD-10,
L-inf eps 8/255 (step 2/255); lambda = 1, 10% of the data for the search, which evaluates the
subnets on PGD examples (section 3.4.1). The paper also early-stops (Rice et al. 2020); pick
the best checkpoint by robust accuracy from the periodic evaluations.

    python -m jaxrobust.main --config=configs/ews_pgd_at_cifar.py --workdir=/tmp/ews_pgd_at

Without EWS (the baseline): ``--config.method=pgd_at``; AWP on top: ``--config.awp_gamma=5e-3``.
"""

from configs import pgd_at_cifar
from configs.ews_cifar import add_ews_keys


def get_config():
  c = add_ews_keys(pgd_at_cifar.get_config())
  c.method = 'ews_pgd_at'
  return c
