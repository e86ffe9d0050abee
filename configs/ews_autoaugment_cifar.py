r"""EWS on top of AutoAugment on CIFAR-10 (EWS ``001_f126abb63f157b30.txt``, Table 1).

``configs/ews_cifar.py``'s recipe and EWS settings (lambda = 1, rho = 0.5, controller search
every 10 epochs) on AutoAugment's CIFAR-10 policy and Cutout, applied on device to every
training batch before EWS's step (both the full network and the subnet see the augmented
images). Its baseline without EWS is ``configs/autoaugment_cifar.py``.

    python -m jaxrobust.main --config=configs/ews_autoaugment_cifar.py --workdir=/tmp/ews_aa

On the local CIFAR-10 copy with the CPU-sized recipe:

    python -m jaxrobust.main --config=configs/ews_autoaugment_cifar.py --workdir=/tmp/ews_aa_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2 \
      --config.ews_search_every_epochs=1.0 --config.nesterov=False
"""

from configs import autoaugment_cifar, ews_cifar


def get_config():
  return autoaugment_cifar.add_autoaugment_keys(ews_cifar.get_config())
