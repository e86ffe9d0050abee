r"""Vanilla training with EWS's CIFAR-10 recipe: the "Standard, Vanilla" row of EWS's Table 1.

EWS (``001_f126abb63f157b30.txt``, Table 1: 5.32% clean / 26.46% corrupted test error) compares
against vanilla training on its own schedule (supplementary D: ResNet-50, 400 epochs, SGD with
Nesterov momentum, learning rate 0.1 divided by 10 at 1/3 and 2/3 of training, random crop +
flip), which ``configs/vanilla_cifar.py`` (ResNet-18, 200 epochs, cosine) is not. This config
differs from ``configs/ews_cifar.py`` only by EWS.

    python -m jaxrobust.main --config=configs/vanilla_ews_cifar.py --workdir=/tmp/vanilla_ews
"""

from configs import default, ews_cifar


def get_config():
  c = ews_cifar.recipe(default.get_config())
  c.method = 'vanilla'
  return default.add_augmix_keys(c, enabled=False)
