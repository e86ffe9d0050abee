r"""Gaussian noise training (GNT) on CIFAR-10 (paper ``003``, section 3.1; method ``gnt``).

Half of every batch stays clean, the other half gets ``clip(x + sigma z)`` with sigma drawn per
image from ``gnt_sigmas``; one BatchNorm trained on the mixed batch (see jaxrobust/methods/gnt.py).

The paper only trains on ImageNet (and MNIST); its ``GNT_mult`` draws sigma from the set matching
ImageNet-C's Gaussian-noise severities, {0.08, 0.12, 0.18, 0.26, 0.38}. The CIFAR counterpart
used here is the set of CIFAR-10-C's Gaussian-noise severities, (0.04, 0.06, 0.08, 0.09, 0.10)
(Hendrycks & Dietterich's make_cifar_c.py): 32x32 images tolerate less noise, and the benchmark
scales its severities down accordingly (on average by 0.36). Like the paper's bracketed numbers,
gaussian_noise results of this model are then on a corruption seen in training. Other variants:
``--config.gnt_sigmas='(0.18,)'`` (one sigma, the CIFAR analogue of the paper's best
``GNT sigma_0.5``: 0.5 x 0.36), ``--config.gnt_sigmas='(0.08,0.12,0.18,0.26,0.38)'`` (the
paper's ImageNet set), ``--config.gnt_noise=speckle --config.gnt_sigmas='(0.06,0.1,0.12,0.16,0.2)'``
(Speckle noise, CIFAR-10-C's held-out speckle severities).

Backbone recipe as configs/vanilla_cifar.py (trained from scratch):

    python -m jaxrobust.main --config=configs/gnt_cifar.py --workdir=/tmp/gnt_cifar

The CPU-sized comparison on the local CIFAR-10 copy (same recipe as the vanilla baseline):

    python -m jaxrobust.main --config=configs/gnt_cifar.py --workdir=/tmp/gnt_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2
"""

from configs import default


def get_config():
  c = default.cifar_resnet18_recipe(default.get_config())
  c.method = 'gnt'
  c.gnt_noise = 'gaussian'                         # gaussian | speckle
  c.gnt_sigmas = (0.04, 0.06, 0.08, 0.09, 0.10)    # CIFAR-10-C Gaussian severities (see above)
  c.gnt_clean_fraction = 0.5                       # section 3.1: 50% of each batch stays clean
  return c
