r"""AutoAugment on CIFAR-10: the "AutoAugment, Vanilla" baseline of EWS's Table 1 (no EWS).

AutoAugment (Cubuk et al. 2019) applies one of the 25 sub-policies it learned on reduced CIFAR-10 to
every training image, after the standard crop and flip and before Cutout (16 x 16) (its CIFAR
code applies the policy before the crop and flip), with the operations' magnitude ranges as torchvision ships them (e.g. translation up to
150/331 of the size and signed enhancement factors 1 +- 0.9 m/9, where the original CIFAR code
shifts at most 10 pixels and scales 0.1 + 1.8 m/10). Both run on device (``config.device_augment``,
``config.cutout_size``; ``jaxrobust.augmentations.autoaugment``), in front of any method's step. EWS
(``001_f126abb63f157b30.txt``, supplementary D) names AutoAugment without its details, on ResNet-50
with its 400-epoch schedule, which this config uses so that ``configs/ews_autoaugment_cifar.py``
differs from it only by EWS; ``--config.cutout_size=0`` drops Cutout.

    python -m jaxrobust.main --config=configs/autoaugment_cifar.py --workdir=/tmp/autoaugment_cifar

On the local CIFAR-10 copy with the CPU-sized recipe:

    python -m jaxrobust.main --config=configs/autoaugment_cifar.py --workdir=/tmp/aa_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2 \
      --config.nesterov=False
"""

from configs import default, ews_cifar


def add_autoaugment_keys(c):
  """AutoAugment's CIFAR-10 policy, then Cutout with a 16-pixel square."""
  c.device_augment = 'autoaugment_cifar10'
  c.cutout_size = 16
  return c


def get_config():
  c = ews_cifar.recipe(default.get_config())  # ResNet-50, 400 epochs, step schedule
  c.method = 'vanilla'
  return add_autoaugment_keys(c)
