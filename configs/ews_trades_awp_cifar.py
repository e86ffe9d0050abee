"""EWS on TRADES with adversarial weight perturbation (AWP-EWS of the paper's Table 4).

TRADES-AWP (Wu et al. 2020) with its published defaults: weight perturbation gamma = 5e-3,
layer-wise relative to the weight norm, one ascent step per iteration, applied from the 10th
epoch on (the official TRADES-AWP script's ``--awp-warmup 10`` with epochs counted from 1, i.e.
``awp_warmup_epochs = 9`` epochs without it); plus EWS with lambda = 1 (paper section 4.2).

    python -m jaxrobust.main --config=configs/ews_trades_awp_cifar.py --workdir=/tmp/ews_trades_awp

TRADES-AWP without EWS: ``--config.method=awp --config.awp_base=trades``.
"""

from configs import trades_cifar
from configs.ews_cifar import add_ews_keys


def get_config():
  c = add_ews_keys(trades_cifar.get_config())
  c.method = 'ews_trades'
  c.awp_base = 'trades'  # read by method 'awp' only: the docstring's TRADES-AWP without EWS
  c.awp_gamma = 5e-3
  c.awp_warmup_epochs = 9.0  # AWP from the 10th epoch, as the official script
  return c
