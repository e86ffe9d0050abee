r"""EWS (enhancing weak subnets) on CIFAR-10, the paper's corruption-robustness setting.

Guo, Stutz & Schiele 2022 (``001_f126abb63f157b30.txt``), section 4.1.1 and supplementary D:
ResNet-50, 400 epochs, SGD with Nesterov momentum, learning rate 0.1 divided by 10 at 1/3 and
2/3 of training, random crop + flip; EWS with lambda = 1, rho = 0.5, a controller search every
K = 10 epochs on 10% of the training data with C = 8 subnets per controller step.

    python -m jaxrobust.main --config=configs/ews_cifar.py --workdir=/tmp/ews_cifar

On the local CIFAR-10 copy with the CPU-sized recipe (searching every epoch, so that the
5-epoch run searches after each of its first 4 epochs; plain momentum like the vanilla baseline
of that recipe):

    python -m jaxrobust.main --config=configs/ews_cifar.py --workdir=/tmp/ews_small \
      --config.dataset=folder:../shared/data/cifar10 --config.model=resnet8_wide \
      --config.num_epochs=5 --config.lr_schedule=onecycle --config.learning_rate=0.2 \
      --config.ews_search_every_epochs=1.0 --config.nesterov=False

Search baselines of Table 5: ``--config.ews_search=random`` / ``--config.ews_search=l1``.
"""

import ml_collections

from configs import default


def add_ews_keys(c, *, lam: float = 1.0):
  """The EWS hyper-parameters (paper section 4.1 / supplementary D, unless noted)."""
  c.ews_lambda = lam                 # lambda of Eq. 2: 1 on CIFAR, 0.7 on ImageNet (supp. D)
  # The KL's reduction: 'mean' over the B*K elements, as the authors' nn.KLDivLoss(), so lambda
  # has the paper's scale ('batchmean', the per-example KL, is K times stronger).
  c.ews_kl_reduction = 'mean'
  c.ews_rho = 0.5                    # subnet width rho (section 4.1, Figure 6 right)
  c.ews_search = 'controller'        # controller | random | l1 (Table 5)
  c.ews_search_every_epochs = 10.0   # K (section 4.1, Figure 5)
  c.ews_search_fraction = 0.1        # |D_s| / |D| (supplementary B)
  c.ews_search_num_subnets = 8       # C subnets per controller step (supplementary D)
  c.ews_search_on = 'auto'           # auto (= adversarial for AT bases) | clean | adversarial
  c.ews_search_attack = 'madry_pgd10'  # adversarial search of the natural base (section 3.4.1)
  c.ews_search_eps = ml_collections.FieldReference(None, field_type=float)        # None = preset
  c.ews_search_step_size = ml_collections.FieldReference(None, field_type=float)  # None = preset
  c.ews_search_num_steps = ml_collections.FieldReference(None, field_type=int)    # None = preset
  c.ews_search_craft_bn = 'batch'
  # Controller: 100-d embeddings (supplementary A); LSTM hidden size 100 as ENAS (the paper does
  # not state it). The paper gives no optimiser settings; Adam, an entropy bonus and a
  # moving-average baseline as in ENAS.
  # lr 1e-2 (ENAS: 3.5e-4 over many more steps): on digits/ResNet-8, 44-66 controller steps
  # (2-3 searches) make its subnets clearly weaker than random ones; 1e-3 barely moves it.
  c.ews_controller_hidden = 100
  c.ews_controller_lr = 1e-2
  c.ews_entropy_weight = 1e-4
  c.ews_baseline_decay = 0.95
  # Every search starts from a fresh controller: between searches the network trains on the
  # controller's subnets and makes them strong, and a carried-on controller cannot leave them
  # within one search (measured: 42% vs 18% for random subnets; fresh: 13%). See ews.py.
  c.ews_controller_restart = True
  c.ews_compare_batches = 4          # batches for the controller-vs-random check after a search
  c.awp_gamma = 0.0                  # > 0: adversarial weight perturbation on top
  c.awp_warmup_epochs = 0.0
  return c


def recipe(c):
  """EWS's CIFAR-10 schedule (supplementary D), shared with its baselines without EWS."""
  c.dataset = 'cifar10'
  c.model = 'resnet50'
  c.num_epochs = 400.0
  c.batch_size = 128
  c.learning_rate = 0.1
  c.nesterov = True
  c.weight_decay = 5e-4
  c.lr_schedule = 'step'
  c.lr_boundaries = (400.0 / 3, 800.0 / 3)  # 0.1 -> 0.01 -> 0.001 at 1/3 and 2/3 (supp. D)
  c.lr_decay_factor = 0.1
  return c


def get_config():
  c = recipe(default.get_config())
  c.method = 'ews'
  return default.add_augmix_keys(add_ews_keys(c), enabled=False)
