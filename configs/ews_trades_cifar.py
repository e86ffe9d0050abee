"""EWS on TRADES, CIFAR-10 (paper section 4.2, supplementary E).

EWS + TRADES (Eq. 3-4 with phi = KL(M(x) || M(x')), gamma = 1/6; implemented as Eq. 3-4 times
beta = 6 so that lambda = 0 is the published TRADES loss): PreAct ResNet-18, 200 epochs, SGD
0.1 divided by 10 at epochs 100 and 150, weight decay 5e-4, batch 128; TRADES' PGD-10 on the KL
at eps 8/255; lambda = 1; the search judges subnets on the TRADES adversarial examples.

    python -m jaxrobust.main --config=configs/ews_trades_cifar.py --workdir=/tmp/ews_trades

Without EWS: ``--config.method=trades``.
"""

from configs import trades_cifar
from configs.ews_cifar import add_ews_keys


def get_config():
  c = add_ews_keys(trades_cifar.get_config())
  c.method = 'ews_trades'
  return c
