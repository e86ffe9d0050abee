r"""The MixProp paper's Mixup baseline: mixup on half of each batch, one set of BNs.

MixProp (``004_e0581a0ceb74a177.txt``) section 4.2: "we apply mixup to half of the clean samples in
each batch under a single set of BN layers"; training as its section 4.1 (CIFAR-100, PreAct
ResNet-18, SGD momentum 0.9, weight decay 5e-4, batch 128, learning rate 0.1 / 10 at epochs 100,
180, 260 of 320, lambda ~ Beta(1, 1) per batch). Table 1: 77.54% for PreAct-18.
``--config.mixup_fraction=1.0`` is standard mixup (Zhang et al. 2018).

    python -m jaxrobust.main --config=configs/mixup_cifar.py --workdir=/tmp/mixup_c100

The CPU-sized comparison on the local CIFAR-10 copy:

    python -m jaxrobust.main --config=configs/mixup_cifar.py --workdir=/tmp/mixup_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2
"""

from configs import default


def get_config():
  c = default.mixprop_cifar100_recipe(default.get_config())
  c.method = 'mixup'
  c.mixup_alpha = 1.0
  c.mixup_fraction = 0.5
  return c
