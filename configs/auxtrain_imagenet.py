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
  c = default.get_config()
  c.dataset = 'imagenet2012'
  c.model = 'resnet18'
  c.num_epochs = 90.0
  c.batch_size = 256
  c.eval_batch_size = 500
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.lr_schedule = 'step'
  c.lr_boundaries = (30.0, 60.0)
  c.lr_decay_factor = 0.1
  c = auxtrain_cifar10.add_auxtrain(c)
  c.auxtrain_severities = (1, 1, 5, 5)  # ImageNet table: noise 0.08, blur sigma 1, 30 deg, 0.5
  c.auxtrain_merge_fraction = 60 / 90
  return c
