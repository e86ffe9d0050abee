r"""Vanilla ResNet-18 on CIFAR-10 with the standard schedule (SGD 0.1, momentum 0.9, wd 5e-4,
cosine over 200 epochs, batch 128, pad-4 crop + flip).

    python -m jaxrobust.main --config=configs/vanilla_cifar.py --workdir=/tmp/vanilla_cifar

On the local CIFAR-10 copy, with the CPU-sized recipe that every method is compared under:

    python -m jaxrobust.main --config=configs/vanilla_cifar.py --workdir=/tmp/vanilla_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2
"""

from configs import default


def get_config():
  c = default.cifar_resnet18_recipe(default.get_config())
  c.method = 'vanilla'
  return default.add_augmix_keys(c, enabled=False)
