"""Defaults shared by every config; method configs start from ``default.get_config()``."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data: 'digits', 'folder:/path' (<split>/<label>/*.jpg) or a TFDS name.
  c.dataset = 'cifar10'
  c.data_dir = ''            # TFDS data_dir ('' = TFDS default)
  c.image_size = 0           # 0 = the dataset's own (32 for CIFAR, 224 for ImageNet)
  c.augment = 'auto'         # auto | cifar (pad-4 crop + flip) | crop (no flip: digits) | imagenet | none
  # On device, after the host's augment: none | autoaugment_cifar10 | autoaugment_imagenet.
  c.device_augment = 'none'
  c.cutout_size = 0          # Cutout square side in pixels after device_augment (0 = off)
  c.train_split = ''
  c.eval_split = ''
  # Model.
  c.model = 'resnet18'
  c.stem = 'auto'            # auto | cifar | imagenet
  c.dropout_rate = 0.0
  c.bn_momentum = 0.9        # flax convention (= PyTorch momentum 0.1)
  c.sync_batch_stats = False
  # Method.
  c.method = 'vanilla'
  c.label_smoothing = 0.0
  # Optimisation.
  c.num_epochs = 200.0
  c.batch_size = 128
  c.eval_batch_size = 500
  c.optimizer = 'sgd'        # sgd | adam | adamw
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 5e-4
  c.lr_schedule = 'cosine'   # constant | cosine | step | onecycle
  c.warmup_epochs = 0.0
  c.lr_boundaries = ()       # epochs, read only by lr_schedule='step'
  c.lr_decay_factor = 0.1
  c.grad_clip_norm = 0.0
  # Loop.
  c.log_every_steps = 50
  c.eval_every_epochs = 1.0  # 0 = only at the end
  c.max_eval_examples = 0    # 0 = the whole eval split
  c.checkpoint_every_steps = 0  # 0 = every epoch
  c.keep_checkpoints = 3
  c.max_steps_in_flight = 2  # dispatched but unfinished steps; bounds the lag of a SIGTERM stop
  c.nonfinite = 'stop'       # stop | skip
  c.init_from = ''           # workdir of another run: start from its params and BN statistics
  return c


# ----------------------------------------------------------------------- shared training recipes
# Each paper's backbone schedule, set in one place; the method configs compose one of these with
# their own keys, so two methods compared in a paper train with the same recipe.


def cifar_resnet18_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CIFAR-10 ResNet-18 from scratch: SGD 0.1 (momentum 0.9), cosine over 200 epochs, wd 5e-4."""
  c.dataset = 'cifar10'
  c.model = 'resnet18'
  c.num_epochs = 200.0
  c.batch_size = 128
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'cosine'
  return c


def adversarial_cifar10_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The EWS paper's adversarial-training schedule (supplementary E, after Rice et al. 2020).

  PreAct ResNet-18, SGD (momentum 0.9, weight decay 5e-4), batch 128, learning rate 0.1 divided
  by 10 at epochs 100 and 150 of 200.
  """
  c.dataset = 'cifar10'
  c.model = 'preact_resnet18'
  c.num_epochs = 200.0
  c.batch_size = 128
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'step'
  c.lr_boundaries = (100.0, 150.0)
  c.lr_decay_factor = 0.1
  return c


def mixprop_cifar100_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The MixProp paper's CIFAR-100 schedule (its section 4.1).

  PreAct ResNet-18, SGD (momentum 0.9, weight decay 5e-4), batch 128, learning rate 0.1 divided
  by 10 at epochs 100, 180 and 260 of 320.
  """
  c.dataset = 'cifar100'
  c.model = 'preact_resnet18'
  c.num_epochs = 320.0
  c.batch_size = 128
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'step'
  c.lr_boundaries = (100.0, 180.0, 260.0)
  c.lr_decay_factor = 0.1
  return c


def imagenet_finetuning_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fine-tuning a pretrained ResNet-50 on ImageNet (the noise-training paper's setting).

  The paper's schedule is in an appendix the supplied text lacks; ours: SGD (momentum 0.9,
  weight decay 1e-4, batch 256) at 1/10 of the from-scratch learning rate, cosine over 30
  epochs. ``init_from`` names the pretrained (vanilla) run.
  """
  c.dataset = 'imagenet2012'
  c.image_size = 224
  c.augment = 'imagenet'
  c.model = 'resnet50'
  c.num_epochs = 30.0
  c.batch_size = 256
  c.eval_batch_size = 500
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.lr_schedule = 'cosine'
  c.init_from = ''
  return c


def imagenet_resnet_recipe(c: ml_collections.ConfigDict,
                           model: str = 'resnet50') -> ml_collections.ConfigDict:
  """The standard 90-epoch ImageNet ResNet schedule (torchvision's reference recipe).

  SGD (momentum 0.9, weight decay 1e-4), batch 256, learning rate 0.1 divided by 10 at epochs
  30 and 60 of 90, inception crop + flip. He et al. (2016) use the same optimiser and rate but
  divide it when the error plateaus (about 120 epochs) and augment by scale.
  """
  c.dataset = 'imagenet2012'
  c.image_size = 224
  c.augment = 'imagenet'
  c.model = model
  c.num_epochs = 90.0
  c.batch_size = 256
  c.eval_batch_size = 500
  c.learning_rate = 0.1        # for batch 256; scale linearly with the batch size
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.lr_schedule = 'step'
  c.lr_boundaries = (30.0, 60.0)
  c.lr_decay_factor = 0.1
  return c


def add_augmix_keys(c: ml_collections.ConfigDict, *, enabled: bool = True,
                    severity: int = 5) -> ml_collections.ConfigDict:
  """AugMix's hyper-parameters (its section 4 / reference code; severity 5 as in EWS).

  The configs of the methods that train on AugMix views (vanilla, EWS) carry them switched off
  (``enabled=False``), so ``--config.augmix=True`` works from the command line there.
  """
  c.augmix = enabled
  c.augmix_severity = severity  # op strength U(0.1, severity) / 10 of AutoAugment's ranges
  c.augmix_width = 3            # chains mixed per view
  c.augmix_depth = -1           # ops per chain: -1 = uniform in 1..3
  c.augmix_alpha = 1.0          # Dirichlet (chain weights) and Beta (mix with the original)
  c.augmix_jsd_weight = 12.0    # lambda of the Jensen-Shannon consistency term
  return c
