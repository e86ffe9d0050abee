"""Every top-level config key the library reads, so that a misspelt key fails instead of training
with the default it was meant to replace.

On the command line ml_collections already refuses a key the ``--config`` file lacks; a config
edited in Python (a notebook's ``config.ews_lamda = 0``) has no such guard, so
:func:`jaxrobust.train.validate_config` checks its keys against :data:`KNOWN` and the keys a
registered method declares in its ``defaults`` (:func:`known`).
``tests/test_configs.py`` keeps :func:`known` equal to the keys the shipped configs define and
a superset of those the code reads. A new method's key goes into its ``defaults`` (read with
``Method.option``: nothing to edit here), or, for a key read with ``config.get``, into
:data:`METHODS`; either way also into the method's config file.
"""

import difflib

# The training loop, data, model and optimizer (configs/default.py).
LOOP = (
    'augment', 'batch_size', 'bn_momentum', 'checkpoint_every_steps', 'cutout_size', 'data_dir',
    'dataset', 'device_augment', 'dropout_rate', 'eval_batch_size', 'eval_every_epochs',
    'eval_split', 'grad_clip_norm', 'image_size', 'init_from', 'keep_checkpoints',
    'label_smoothing', 'learning_rate', 'log_every_steps', 'lr_boundaries', 'lr_decay_factor',
    'lr_schedule', 'max_eval_examples', 'max_steps_in_flight', 'method', 'model', 'momentum',
    'nesterov', 'nonfinite', 'num_epochs', 'optimizer', 'seed', 'stem', 'sync_batch_stats',
    'train_split', 'warmup_epochs', 'weight_decay',
)
# Each method's own keys, by the prefix its module reads.
METHODS = (
    # advprop.py
    'advprop_adv_source', 'advprop_attack', 'advprop_augment', 'advprop_augment_magnitude',
    'advprop_augment_ops', 'advprop_craft_bn', 'advprop_eps', 'advprop_eval_aux',
    'advprop_fine_grained', 'advprop_loss', 'advprop_num_steps', 'advprop_step_size',
    'advprop_targeted',
    # mixprop.py
    'mixprop_alpha', 'mixup_alpha', 'mixup_fraction',
    # adversarial_training.py
    'pgd_at_attack', 'pgd_at_craft_bn', 'pgd_at_eps', 'pgd_at_gamma', 'pgd_at_num_steps',
    'pgd_at_step_size',
    'trades_attack', 'trades_beta', 'trades_craft_bn', 'trades_eps', 'trades_num_steps',
    'trades_step_size',
    # gnt.py, ant.py
    'gnt_clean_fraction', 'gnt_noise', 'gnt_sigmas',
    'ant_clean_fraction', 'ant_current_fraction', 'ant_eps', 'ant_gen_features',
    'ant_gen_learning_rate', 'ant_gen_optimizer', 'ant_gen_steps', 'ant_generator',
    'ant_generator_bn', 'ant_replay_every', 'ant_replay_fraction', 'ant_replay_size',
    'ant_restart_chunk', 'ant_restart_every', 'ant_restart_steps',
    # auxtrain.py
    'auxtrain_adversarial', 'auxtrain_alpha_aux', 'auxtrain_alpha_primary', 'auxtrain_attack',
    'auxtrain_attention', 'auxtrain_bottleneck_ratio', 'auxtrain_corruptions',
    'auxtrain_distillation', 'auxtrain_eps', 'auxtrain_gamma', 'auxtrain_lambda',
    'auxtrain_merge_epoch', 'auxtrain_merge_fraction', 'auxtrain_num_steps',
    'auxtrain_selective_bn', 'auxtrain_severities', 'auxtrain_step_size', 'auxtrain_temperature',
    'auxtrain_weight_merging',
    # ews.py (EWS and AWP)
    'ews_baseline_decay', 'ews_compare_batches', 'ews_controller_hidden', 'ews_controller_lr',
    'ews_controller_restart', 'ews_entropy_weight', 'ews_kl_reduction', 'ews_lambda', 'ews_rho',
    'ews_search', 'ews_search_attack', 'ews_search_craft_bn', 'ews_search_eps',
    'ews_search_every_epochs', 'ews_search_fraction', 'ews_search_num_steps',
    'ews_search_num_subnets', 'ews_search_on', 'ews_search_step_size',
    'awp_base', 'awp_gamma', 'awp_warmup_epochs',
    # augmentations.py (vanilla and EWS)
    'augmix', 'augmix_alpha', 'augmix_depth', 'augmix_jsd_weight', 'augmix_severity',
    'augmix_width',
)
KNOWN = frozenset(LOOP + METHODS)


def known() -> frozenset:
  """:data:`KNOWN` plus the keys each registered method declares in its ``defaults``: a method
  registered from a notebook (``methods.register``) brings its own keys, without an edit here."""
  from jaxrobust import methods  # pylint: disable=g-import-not-at-top
  declared = {key for name in methods.names() for key in methods.get(name).defaults}
  return KNOWN | declared


def unknown(config) -> list[str]:
  """The top-level keys of ``config`` that no part of the library reads, sorted."""
  valid = known()
  return sorted(k for k in config.keys() if k not in valid)


def check(config) -> None:
  """ValueError naming every key of ``config`` outside :data:`KNOWN`, with the closest known one."""
  bad = unknown(config)
  if not bad:
    return
  hints, valid = [], known()
  for key in bad:
    close = difflib.get_close_matches(key, valid, n=1)
    hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
  raise ValueError(f'Unknown config key(s): {", ".join(hints)}. Nothing reads them, so the run '
                   f'would use the defaults they were meant to change; the valid keys are '
                   f'configs/default.py\'s and the method config\'s (all in '
                   f'jaxrobust/config_keys.py, or a registered method\'s `defaults`).')
