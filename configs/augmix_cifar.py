r"""AugMix on CIFAR-10: the "AugMix, Vanilla" baseline of EWS's Table 1 (EWS's recipe, no EWS).

AugMix (Hendrycks et al. 2020): each image and two AugMix views of it go through the network
together; the loss is CE on the clean image plus 12 times the Jensen-Shannon divergence of the
three predictions. Its own CIFAR defaults are severity 3, width 3, random depth 1-3, alpha 1;
EWS (``001_f126abb63f157b30.txt``, supplementary D) sets "the augmentation severity to 5 and
exploit[s] JSD loss", on ResNet-50 with its 400-epoch schedule, which this config uses so that
``configs/ews_augmix_cifar.py`` differs from it only by EWS.

    python -m jaxrobust.main --config=configs/augmix_cifar.py --workdir=/tmp/augmix_cifar

On the local CIFAR-10 copy with the CPU-sized recipe:

    python -m jaxrobust.main --config=configs/augmix_cifar.py --workdir=/tmp/augmix_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2 \
      --config.nesterov=False
"""

from configs import default, ews_cifar


def get_config():
  c = ews_cifar.recipe(default.get_config())  # ResNet-50, 400 epochs, step schedule
  c.method = 'vanilla'
  return default.add_augmix_keys(c)
