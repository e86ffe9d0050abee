r"""ANT 3x3 on CIFAR-10: as configs/ant_cifar.py with the locally correlated generator.

The 3x3 generator replaces one layer's 1x1 kernels by 3x3 kernels (the reference's second layer),
so its noise is correlated over 3x3 pixel patches (paper ``003``, section 3.2, "Learning locally
correlated adversarial noise"; Table 3: better on 'snow' than ANT 1x1). Every other setting,
including eps, is the 1x1 config's.

    python -m jaxrobust.main --config=configs/ant3x3_cifar.py --workdir=/tmp/ant3x3_cifar

The CPU-sized comparison on the local CIFAR-10 copy:

    python -m jaxrobust.main --config=configs/ant3x3_cifar.py --workdir=/tmp/ant3x3_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2
"""

from configs import ant_cifar


def get_config():
  c = ant_cifar.get_config()
  c.ant_generator = '3x3'
  return c
