r"""Madry PGD adversarial training on CIFAR-10: PreAct ResNet-18, PGD-10 (eps 8/255, step 2/255).

Madry et al. (2018) inner maximisation as the EWS paper and Rice et al. (2020) run it: L-inf PGD,
eps = 8/255, step 2/255, 10 steps (Madry's own CIFAR runs used 7), uniform random start,
cross-entropy; loss CE(f(x'), y) + gamma CE(f(x), y) with gamma = 0. Schedule of the
EWS paper's adversarial-training experiments (``001_f126abb63f157b30.txt``, supplementary "Detailed
Experimental Settings", after Rice et al. 2020): PreAct ResNet-18, SGD (momentum 0.9, weight
decay 5e-4), batch 128, learning rate 0.1 divided by 10 at epochs 100 and 150 of 200.
Early stopping on PGD accuracy (Rice et al.) is up to the evaluation harness.

    python -m jaxrobust.main --config=configs/pgd_at_cifar.py --workdir=/tmp/pgd_at_cifar

The CPU-sized comparison on the local CIFAR-10 copy. PGD-10 makes a step cost 4.8 vanilla steps
on a 2-core CPU (about 2.3 hours for the 5 epochs; 11 passes in theory, but an attack step needs
no weight gradients), so this run trains with ONE attack step of
size 10/255 from a uniform random start (FGSM-RS, Wong et al. 2020 "Fast is better than free":
step 1.25 eps with the cyclic schedule used here); it is still evaluated with PGD-10/PGD-20:

    python -m jaxrobust.main --config=configs/pgd_at_cifar.py --workdir=/tmp/pgd_at_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2 \
      --config.pgd_at_num_steps=1 --config.pgd_at_step_size=0.0392156862745098
"""

import ml_collections

from configs import default


def add_pgd_at_keys(c):
  """Madry et al.'s inner maximisation and loss (keys of jaxrobust.methods.adversarial_training)."""
  c.pgd_at_attack = 'madry_pgd10'   # eps 8/255, step 2/255, 10 steps, random start
  c.pgd_at_eps = ml_collections.FieldReference(None, field_type=float)        # None = preset
  c.pgd_at_step_size = ml_collections.FieldReference(None, field_type=float)  # None = preset
  c.pgd_at_num_steps = ml_collections.FieldReference(None, field_type=int)    # None = preset
  c.pgd_at_gamma = 0.0              # weight of the clean loss (EWS Eq. 3; 0 = Madry)
  c.pgd_at_craft_bn = 'batch'       # batch statistics, running statistics untouched
  return c


def get_config():
  c = add_pgd_at_keys(default.adversarial_cifar10_recipe(default.get_config()))
  c.method = 'pgd_at'
  return c
