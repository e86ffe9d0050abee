"""EWS on ImageNet (paper section 4.1.2 and supplementary D).

ResNet-50, 180 epochs with 5 warm-up epochs, learning rate 0.1 divided by 10 at 1/3 and 2/3 of
training (the CIFAR schedule), lambda = 0.7 (supplementary D: slightly better than 1 on
ImageNet), every other EWS setting as on CIFAR (rho = 0.5, K = 10, 10% of the data, C = 8).

    python -m jaxrobust.main --config=configs/ews_imagenet.py --workdir=/tmp/ews_imagenet
"""

from configs import default
from configs.ews_cifar import add_ews_keys


def get_config():
  c = default.get_config()
  c.method = 'ews'
  c.dataset = 'imagenet2012'
  c.model = 'resnet50'
  c.num_epochs = 180.0
  c.warmup_epochs = 5.0
  c.batch_size = 256                  # batch size and weight decay: the standard ResNet-50
  c.eval_batch_size = 500
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 1e-4               # ImageNet recipe (the paper does not state them)
  c.lr_schedule = 'step'
  c.lr_boundaries = (60.0, 120.0)
  c.lr_decay_factor = 0.1
  return default.add_augmix_keys(add_ews_keys(c, lam=0.7), enabled=False)
