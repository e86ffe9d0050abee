r"""Vanilla training with MixProp's CIFAR-100 recipe: the "Vanilla" column of its Table 1.

MixProp (``004_e0581a0ceb74a177.txt``) section 4.1: PreAct ResNet-18, SGD (momentum 0.9, weight
decay 5e-4), batch 128, learning rate 0.1 divided by 10 at epochs 100, 180 and 260 of 320.
Table 1: 75.68% top-1 for PreAct-18 (Mixup 77.54%, AdvProp 75.06%, MixProp 78.05%). This config
differs from ``configs/mixprop_cifar100.py`` and ``configs/mixup_cifar.py`` only by the method.

    python -m jaxrobust.main --config=configs/vanilla_cifar100.py --workdir=/tmp/vanilla_c100
"""

from configs import default


def get_config():
  c = default.mixprop_cifar100_recipe(default.get_config())
  c.method = 'vanilla'
  return default.add_augmix_keys(c, enabled=False)
