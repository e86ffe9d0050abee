"""Adversarial weight perturbation (AWP, Wu, Xia & Wang 2020) on PGD-AT, CIFAR-10, no EWS.

AT-AWP: PGD-10 adversarial training (eps 8/255) of a PreAct ResNet-18 for 200 epochs (0.1,
divided by 10 at epochs 100 and 150), with one normalised ascent step on the weights per
iteration, layer-wise relative to the weight norm: gamma = 5e-3 (the AWP paper's value; its
official AT-AWP script defaults to 1e-2), no warm-up. ``--config.awp_base=trades`` gives
TRADES-AWP (add ``--config.awp_warmup_epochs=9``: its script perturbs from the 10th epoch).

    python -m jaxrobust.main --config=configs/awp_cifar.py --workdir=/tmp/awp_cifar

AWP-EWS (the paper's Table 4) on PGD-AT: ``--config.method=ews_pgd_at`` with this config (it
holds the EWS keys for that). On TRADES use ``configs/ews_trades_awp_cifar.py``, which also
starts the perturbation at the 10th epoch as TRADES-AWP does.
"""

from configs import pgd_at_cifar, trades_cifar
from configs.ews_cifar import add_ews_keys


def get_config():
  # Both bases' keys, so that --config.awp_base=trades works without more flags.
  c = add_ews_keys(trades_cifar.add_trades_keys(pgd_at_cifar.get_config()))
  c.method = 'awp'
  c.awp_base = 'pgd_at'
  c.awp_gamma = 5e-3
  c.awp_warmup_epochs = 0.0
  return c
