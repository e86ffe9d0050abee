r"""GNT sigma_0.5 on ImageNet: fine-tuning a pretrained ResNet-50 (paper ``003``, section 4).

The paper fine-tunes a pretrained ResNet-50 on batches that are half clean and half
``clip(x + 0.5 z)``; sigma = 0.5 was the best single sigma (Fig. 2) and gives 75.9% clean /
49.4% ImageNet-C top-1 (Table 3). ``--config.gnt_sigmas='(0.08,0.12,0.18,0.26,0.38)'`` is its
``GNT_mult`` (76.1% / 49.2%); ``--config.gnt_noise=speckle
--config.gnt_sigmas='(0.15,0.2,0.35,0.45,0.6)'`` its Speckle model (ImageNet-C's held-out speckle
severities; 75.8% / 46.4%).

The paper's fine-tuning schedule is in its appendix, which the supplied text does not contain:
SGD (momentum 0.9, weight decay 1e-4, batch 256) at 1/10 of the from-scratch learning rate,
cosine over 30 epochs, is our choice. Start from a vanilla ResNet-50 run (params and BN
statistics; a fresh optimizer), e.g. ``configs/vanilla_imagenet.py``'s:

    python -m jaxrobust.main --config=configs/gnt_imagenet.py --workdir=/tmp/gnt_r50 \
      --config.init_from=/tmp/vanilla_r50
"""

from configs import default


def get_config():
  c = default.imagenet_finetuning_recipe(default.get_config())
  c.method = 'gnt'
  c.gnt_noise = 'gaussian'
  c.gnt_sigmas = (0.5,)        # GNT sigma_0.5, the paper's best single sigma (Fig. 2, Table 3)
  c.gnt_clean_fraction = 0.5   # section 3.1
  return c
