r"""Vanilla ResNet-50 on ImageNet with the standard 90-epoch schedule: the pretrained run that
GNT and ANT fine-tune (``configs/gnt_imagenet.py``, ``configs/ant_imagenet.py``) and the baseline
of AdvProp's ResNet table (Table 8: 76.7% top-1).

SGD (momentum 0.9, weight decay 1e-4), batch 256, learning rate 0.1 divided by 10 at epochs 30
and 60 of 90, random-resized crop + flip (torchvision's form of He et al.'s recipe); evaluated on
the validation split.

    python -m jaxrobust.main --config=configs/vanilla_imagenet.py --workdir=/tmp/vanilla_r50
    python -m jaxrobust.main --config=configs/gnt_imagenet.py --workdir=/tmp/gnt_r50 \
      --config.init_from=/tmp/vanilla_r50
"""

from configs import default


def get_config():
  c = default.imagenet_resnet_recipe(default.get_config(), model='resnet50')
  c.method = 'vanilla'
  return default.add_augmix_keys(c, enabled=False)
