r"""MixProp on CIFAR-100 with PreAct ResNet-18 (the paper's Table 1 setting).

MixProp (``004_e0581a0ceb74a177.txt``) section 4.1: SGD (momentum 0.9, weight decay 5e-4), batch
128, 320 epochs, learning rate 0.1 divided by 10 at epochs 100, 180 and 260, random crop + flip;
lambda ~ Beta(1, 1) once per batch. Table 1: PreAct-18 75.68 vanilla, 77.54 Mixup, 75.06 AdvProp,
78.05 MixProp. Evaluation reports the main BN (clean accuracy) and the aux BN (Table 3).

    python -m jaxrobust.main --config=configs/mixprop_cifar100.py --workdir=/tmp/mixprop_c100

The CPU-sized comparison on the local CIFAR-10 copy:

    python -m jaxrobust.main --config=configs/mixprop_cifar100.py --workdir=/tmp/mixprop_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2
"""

from configs import default


def get_config():
  c = default.mixprop_cifar100_recipe(default.get_config())
  c.method = 'mixprop'
  c.mixprop_alpha = 1.0   # lambda ~ Beta(1, 1) per batch (section 4.1)
  return c
