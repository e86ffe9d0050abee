r"""AdvProp on CIFAR: PreAct ResNet-18, PGD-1 (eps = 1/255) through an auxiliary BatchNorm.

The AdvProp paper (``002_3c885072544f102e.txt``) trains only on ImageNet; its CIFAR setting is the
MixProp paper's (``004_e0581a0ceb74a177.txt``, section 4.1 and Table 1, CIFAR-100): PreAct
ResNet-18 does best with PGD-1 (eps = 1, one step of alpha = 1, in 0-255 units: eps = 1/255 here),
PreAct ResNet-50 with PGD-4 (eps = 3); SGD (momentum 0.9, weight decay 5e-4), batch 128, learning
rate 0.1 divided by 10 at epochs 100, 180 and 260 of 320, random crop + flip. Smaller networks
favour weaker attackers (AdvProp, Table 2), hence PGD-1 for this and smaller nets.

    python -m jaxrobust.main --config=configs/advprop_cifar.py --workdir=/tmp/advprop_cifar100

CIFAR-10 (``--config.dataset=cifar10``) uses the same recipe. The CPU-sized comparison on the local
CIFAR-10 copy:

    python -m jaxrobust.main --config=configs/advprop_cifar.py --workdir=/tmp/advprop_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2
"""

import ml_collections

from configs import default


def get_config():
  # MixProp Table 1's AdvProp column: CIFAR-100, PreAct ResNet-18, MixProp's section 4.1 schedule.
  c = default.mixprop_cifar100_recipe(default.get_config())
  c.method = 'advprop'
  # Attacker: PGD-1, eps = 1 (0-255 units) = 1/255, step 1/255, random start, untargeted.
  c.advprop_attack = 'advprop_pgd1'
  c.advprop_eps = ml_collections.FieldReference(None, field_type=float)        # None = preset
  c.advprop_step_size = ml_collections.FieldReference(None, field_type=float)  # None = preset
  c.advprop_num_steps = ml_collections.FieldReference(None, field_type=int)    # None = preset
  c.advprop_targeted = False
  c.advprop_craft_bn = 'batch'    # batch statistics of the aux BN, running statistics frozen
  c.advprop_loss = 'sum'          # Algorithm 1: L_c + L_a
  c.advprop_fine_grained = False  # True: main / aux_augment / aux_adv (Table 5)
  c.advprop_augment = 'autoaugment_cifar10'  # aux_augment's (AutoAugment's learned policy)
  c.advprop_augment_ops = 2         # RandAugment's N and M (advprop_augment='randaugment')
  c.advprop_augment_magnitude = 9.0
  c.advprop_adv_source = 'augmented'
  c.advprop_eval_aux = True       # also report the aux BN (AdvProp Table 3); main is the headline
  return c
