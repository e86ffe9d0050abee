"""Auxiliary Training on ImageNet: ResNet-18, 90 epochs, learning rate / 10 at epochs 30 and 60
(section 4.1). Table 5 (ResNet-18): top-1 69.94% vs 69.21%; Table 7: mCE 78.86 vs 84.11.

    python -m jaxrobust.main --config=configs/auxtrain_imagenet.py --workdir=/tmp/auxtrain_in

Batch size, learning rate and weight decay are not given in the paper; these are the standard
ImageNet ResNet recipe (256, 0.1, 1e-4). The training corruptions keep the absolute strengths of
the CIFAR setting, read from the ImageNet severity table (used automatically for images larger
than 64 px): Gaussian noise std 0.08 and blur sigma 1 are severity 1 there; rotation (30 deg)
and ColorJitter (0.5) are severity 5 in both tables. Weight merging starts at epoch 60 (the
second drop, 2/3 of the run, as for CIFAR).
"""

from configs import auxtrain_cifar10
from configs import default


def get_config():
  c = default.imagenet_resnet_recipe(default.get_config(), model='resnet18')
  c = auxtrain_cifar10.add_auxtrain(c)
  c.auxtrain_severities = (1, 1, 5, 5)  # ImageNet table: noise 0.08, blur sigma 1, 30 deg, 0.5
  c.auxtrain_merge_fraction = 60 / 90
  return c
