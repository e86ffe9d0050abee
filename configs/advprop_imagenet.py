"""AdvProp on ImageNet with ResNet-50 (the paper's Table 8 ResNet setting).

AdvProp (``002_3c885072544f102e.txt``) section 5.4 "ResNet Results": "We apply PGD5 (eps=4) to
generate adversarial examples, and follow the settings in [6] to train all networks" ([6] is He
et al. 2016). We use the standard 90-epoch form of that recipe (torchvision's reference; He et al.
divide the rate when the error plateaus, over about 120 epochs, with scale augmentation): SGD with
momentum 0.9, weight decay 1e-4, batch 256, learning rate 0.1 divided by 10 at epochs 30 and 60
of 90, random-resized crop + flip. Table 8: ResNet-50 76.7% vanilla, +0.4 with
AdvProp. PGD5 (eps=4): L-inf eps = 4/255, 5 steps of 1/255, random start.

    python -m jaxrobust.main --config=configs/advprop_imagenet.py --workdir=/tmp/advprop_r50
"""

import ml_collections

from configs import default


def get_config():
  c = default.imagenet_resnet_recipe(default.get_config(), model='resnet50')
  c.method = 'advprop'
  c.sync_batch_stats = False   # per-device BN as in the reference TPU/GPU setups
  c.advprop_attack = 'advprop_pgd5'   # PGD5 (eps=4), Table 8
  c.advprop_eps = ml_collections.FieldReference(None, field_type=float)
  c.advprop_step_size = ml_collections.FieldReference(None, field_type=float)
  c.advprop_num_steps = ml_collections.FieldReference(None, field_type=int)
  c.advprop_targeted = False
  c.advprop_craft_bn = 'batch'
  c.advprop_loss = 'sum'
  c.advprop_fine_grained = False
  c.advprop_augment = 'autoaugment_imagenet'  # aux_augment's (AutoAugment's learned policy)
  c.advprop_augment_ops = 2         # RandAugment's N and M (advprop_augment='randaugment')
  c.advprop_augment_magnitude = 9.0
  c.advprop_adv_source = 'augmented'
  c.advprop_eval_aux = False
  return c
