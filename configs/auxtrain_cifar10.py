r"""Auxiliary Training (Zhang et al., CVPR 2020) on CIFAR-10: ResNet-18 with the paper's schedule.

Section 4.1: SGD with momentum and weight decay, 300 epochs, learning rate divided by 10 at
epochs 100, 200 and 290; alpha_0 = 1, alpha_j = 0.05, lambda = 0.05, gamma in {0, 1}; four
training corruptions (Gaussian noise, Gaussian blur, rotation, contrast and brightness). The
paper gives no batch size, learning rate or weight decay; these are its released code's (128,
0.1, 5e-4). Table 1 (ResNet-18): 96.02% vs 94.75% baseline; Table 3: CE 57.01 vs 85.91.

    python -m jaxrobust.main --config=configs/auxtrain_cifar10.py --workdir=/tmp/auxtrain_cifar10

CPU-sized comparison on the local CIFAR-10 copy (same recipe as vanilla; a step costs ~5
vanilla steps, since every image is also seen under each of the 4 corruptions):

    python -m jaxrobust.main --config=configs/auxtrain_cifar10.py --workdir=/tmp/auxtrain_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2

Table 8 (primary classifier on Madry PGD-10 examples, auxiliary classifiers on the natural
corruptions): add ``--config.auxtrain_adversarial=True``.
Table 9 ablations: ``--config.auxtrain_selective_bn=False`` / ``auxtrain_distillation=False`` /
``auxtrain_attention=False`` / ``auxtrain_weight_merging=False``.
"""

import ml_collections

from configs import default


def add_auxtrain(c):
  """The method's hyper-parameters (paper values; see jaxrobust/methods/auxtrain.py)."""
  c.method = 'auxtrain'
  # Training corruptions and severities (jaxrobust.corruptions, CIFAR table): the strengths of
  # the released code: noise std 0.08 (its GaussianNoise(20) = 20/255), blur sigma 1 (PIL
  # GaussianBlur(1.0)), rotation U(-30, 30) deg, ColorJitter(0.5, 0.5, 0.5).
  c.auxtrain_corruptions = ('gaussian_noise', 'gaussian_blur', 'rotation', 'contrast_brightness')
  c.auxtrain_severities = (3, 5, 5, 5)
  c.auxtrain_alpha_primary = 1.0   # alpha_0 (section 4.1)
  c.auxtrain_alpha_aux = 0.05      # alpha_j, j != 0 (section 4.1)
  c.auxtrain_lambda = 0.05         # lambda (section 4.1, Eq. 7)
  c.auxtrain_gamma = 1.0           # gamma in training period 2 (Algorithm 1; 0 in period 1)
  # Start of period 2 as a fraction of the run. The paper does not say when; epoch 200 of 300
  # (the second learning-rate drop). The released code merges from its last drop (epoch 180 of
  # 210) but with a coefficient of 1 instead of Eq. 7's lambda * gamma = 0.05; with 0.05 the
  # longer period is what lets the FC layers actually converge to each other.
  c.auxtrain_merge_fraction = 200 / 300
  c.auxtrain_merge_epoch = -1.0    # an epoch instead (e.g. 200.0); -1 = the fraction above
  c.auxtrain_temperature = 1.0     # KL of softmax outputs, no temperature (released code)
  c.auxtrain_bottleneck_ratio = 0.5  # head bottleneck C -> C/2 -> C (released code)
  # Table 9 ablations: each True in the full method.
  c.auxtrain_selective_bn = True
  c.auxtrain_distillation = True
  c.auxtrain_attention = True
  c.auxtrain_weight_merging = True
  # Table 8: primary classifier on PGD examples (Madry et al. PGD-10, eps 8/255, step 2/255).
  c.auxtrain_adversarial = False
  c.auxtrain_attack = 'madry_pgd10'
  c.auxtrain_eps = ml_collections.FieldReference(None, field_type=float)        # None = preset
  c.auxtrain_step_size = ml_collections.FieldReference(None, field_type=float)  # None = preset
  c.auxtrain_num_steps = ml_collections.FieldReference(None, field_type=int)    # None = preset
  return c


def get_config():
  c = default.get_config()
  c.dataset = 'cifar10'
  c.model = 'resnet18'
  c.num_epochs = 300.0
  c.batch_size = 128
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'step'
  c.lr_boundaries = (100.0, 200.0, 290.0)
  c.lr_decay_factor = 0.1
  return add_auxtrain(c)
