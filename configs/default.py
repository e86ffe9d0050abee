"""Defaults shared by every config; method configs start from ``default.get_config()``."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data: 'digits', 'folder:/path' (<split>/<label>/*.jpg) or a TFDS name.
  c.dataset = 'cifar10'
  c.data_dir = ''            # TFDS data_dir ('' = TFDS default)
  c.image_size = 0           # 0 = the dataset's own (32 for CIFAR, 224 for ImageNet)
  c.augment = 'auto'         # auto | cifar (pad-4 crop + flip) | imagenet (inception crop) | none
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
  c.lr_boundaries = ()       # epochs, for lr_schedule='step'
  c.lr_decay_factor = 0.1
  c.grad_clip_norm = 0.0
  # Loop.
  c.log_every_steps = 50
  c.eval_every_epochs = 1.0  # 0 = only at the end
  c.max_eval_examples = 0    # 0 = the whole eval split
  c.checkpoint_every_steps = 0  # 0 = every epoch
  c.keep_checkpoints = 3
  c.nonfinite = 'stop'       # stop | skip
  c.init_from = ''           # workdir of another run: start from its params and BN statistics
  return c
