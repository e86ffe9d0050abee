r"""EWS on top of AugMix on CIFAR-10 (EWS ``001_f126abb63f157b30.txt``, Table 1, "AugMix" rows).

``configs/ews_cifar.py``'s recipe and EWS settings (lambda = 1, rho = 0.5, controller search
every 10 epochs) with AugMix at severity 5 and its JSD loss (supplementary D); the full network
trains on the clean images and two AugMix views, and the subnet distils from it on all three.
Its baseline without EWS is ``configs/augmix_cifar.py``.

    python -m jaxrobust.main --config=configs/ews_augmix_cifar.py --workdir=/tmp/ews_augmix

On the local CIFAR-10 copy with the CPU-sized recipe:

    python -m jaxrobust.main --config=configs/ews_augmix_cifar.py --workdir=/tmp/ews_augmix_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2 \
      --config.ews_search_every_epochs=1.0 --config.nesterov=False
"""

from configs import default, ews_cifar


def get_config():
  return default.add_augmix_keys(ews_cifar.get_config())
