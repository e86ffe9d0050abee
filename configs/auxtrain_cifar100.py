r"""Auxiliary Training on CIFAR-100: ResNet-18, the paper's schedule (as ``auxtrain_cifar10``).

Table 2 (ResNet-18): 79.47% vs 77.09% baseline; Table 4: CE 69.34 vs 92.21. Table 9 (the
ablation study) is on this setting:

    python -m jaxrobust.main --config=configs/auxtrain_cifar100.py --workdir=/tmp/auxtrain_c100
    # w/o Selective BN, w/o Self Distillation, w/o Attention, w/o Weight Merging:
    python -m jaxrobust.main --config=configs/auxtrain_cifar100.py --workdir=/tmp/at_c100_nosbn \
      --config.auxtrain_selective_bn=False   # (or auxtrain_distillation / _attention /
                                             #  _weight_merging =False)
"""

from configs import auxtrain_cifar10


def get_config():
  c = auxtrain_cifar10.get_config()
  c.dataset = 'cifar100'
  return c
