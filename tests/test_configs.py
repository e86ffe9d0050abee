"""Every config file: loads, validates, documents its run command, takes the CPU-budget flags."""

import importlib
import re

import pytest

from configs import default
from jaxrobust import methods, train
from tests.conftest import ROOT

NAMES = sorted(p.stem for p in (ROOT / 'configs').glob('*.py') if p.stem != '__init__')
# The flags of the shared CPU-sized CIFAR-10 comparison (README, "The shared CPU-sized budget").
CPU_BUDGET = dict(dataset='folder:../shared/data/cifar10', model='resnet8_wide', num_epochs=5.0,
                  lr_schedule='onecycle', learning_rate=0.2)


@pytest.mark.parametrize('name', NAMES)
def test_config_validates_and_names_its_command(name):
  module = importlib.import_module(f'configs.{name}')
  c = module.get_config()
  train.validate_config(c)
  methods.get(c.method)(c)  # the method's own checks (attack presets, fractions, ...)
  if name != 'default':     # the base every config starts from
    assert f'--config=configs/{name}.py' in module.__doc__, 'docstring lacks the run command'
  if c.dataset.startswith('cifar'):
    for key, value in CPU_BUDGET.items():
      c[key] = value
    train.validate_config(c)
  if name != 'default' and c.method in ('vanilla', 'ews') and c.get('device_augment',
                                                                  'none') == 'none':
    # The README's "augmix=True for vanilla and EWS" on the command line, where ml_collections
    # refuses a key the config file lacks (it did for eight of these configs).
    assert {'augmix', 'augmix_severity', 'augmix_jsd_weight'} <= set(c), name
    c.augmix = True
    train.validate_config(c)


def test_recipes_set_what_the_papers_state():
  c = default.adversarial_cifar10_recipe(default.get_config())
  assert (c.model, c.lr_schedule, tuple(c.lr_boundaries), c.num_epochs) == (
      'preact_resnet18', 'step', (100.0, 150.0), 200.0)
  c = default.mixprop_cifar100_recipe(default.get_config())
  assert (c.dataset, c.num_epochs, tuple(c.lr_boundaries)) == ('cifar100', 320.0,
                                                               (100.0, 180.0, 260.0))
  c = default.imagenet_resnet_recipe(default.get_config(), model='resnet18')
  assert (c.model, c.batch_size, c.weight_decay, tuple(c.lr_boundaries)) == (
      'resnet18', 256, 1e-4, (30.0, 60.0))
  # Compared methods share the recipe: only method keys differ from their baseline.
  from configs import ews_pgd_at_cifar, pgd_at_cifar  # pylint: disable=g-import-not-at-top
  base, ews = pgd_at_cifar.get_config().to_dict(), ews_pgd_at_cifar.get_config().to_dict()
  differing = {k for k in ews if base.get(k, object()) != ews[k]}
  assert all(k == 'method' or k.startswith(('ews_', 'awp_')) for k in differing), differing


def test_known_keys_are_exactly_the_shipped_configs_keys_and_cover_what_the_code_reads():
  import re  # pylint: disable=g-import-not-at-top
  from jaxrobust import config_keys  # pylint: disable=g-import-not-at-top
  defined = set()
  for name in NAMES:
    defined |= set(importlib.import_module(f'configs.{name}').get_config().keys())
  known = config_keys.known()
  assert not defined - known, ('keys set in shipped configs that neither config_keys.METHODS nor '
                               f'a method\'s defaults declare: {sorted(defined - known)}')
  assert not known - defined, ('keys config_keys or a method\'s defaults declare that no shipped '
                               f'config sets: {sorted(known - defined)}')
  assert set(config_keys.LOOP) == set(default.get_config().keys())
  read = set()
  for path in (ROOT / 'jaxrobust').rglob('*.py'):
    if path.name == 'config_keys.py':  # its docstring's misspelt example
      continue
    source = path.read_text()
    read |= set(re.findall(r"(?:config|cfg|\bc)\.get\(\s*'([a-z0-9_]+)'", source))
    read |= set(re.findall(r"self\.option\('([a-z0-9_]+)'\)", source))
    read |= set(re.findall(r"\bconfig\.([a-z][a-z0-9_]*)\b(?!\()", source)) - {
        'get', 'keys', 'items', 'values', 'to_dict', 'copy_and_resolve_references', 'lock',
        'unlock', 'json'}  # methods, and the saved 'config.json'
  # the attack keys read through at.attack_settings(config, prefix, ...)
  for prefix in ('advprop', 'pgd_at', 'trades', 'ews_search', 'auxtrain'):
    read |= {f'{prefix}_{k}' for k in ('attack', 'eps', 'step_size', 'num_steps')}
  assert read and read <= known, f'keys the code reads that are not known: {sorted(read - known)}'


def test_a_misspelt_key_set_in_python_is_refused_with_the_closest_known_one():
  from configs import ews_cifar  # pylint: disable=g-import-not-at-top
  c = ews_cifar.get_config()
  c.ews_lamda = 0.0  # unlocked ConfigDict: ml_collections accepts it
  with pytest.raises(ValueError, match=r"Unknown config key\(s\): 'ews_lamda' \(did you mean "
                                       r"'ews_lambda'\?\)"):
    train.validate_config(c)


def test_a_method_registered_from_a_notebook_brings_its_own_keys(monkeypatch):
  # Its keys were refused (config_keys.py is a fixed list), so a new method could take none
  # without an edit to the library; a misspelling of them is still refused.
  from jaxrobust.methods import vanilla  # pylint: disable=g-import-not-at-top
  methods.names()  # every module registered first, so the restored registry keeps them
  monkeypatch.setattr(methods, '_REGISTRY', dict(methods._REGISTRY))  # unregistered afterwards

  @methods.register('scaled_vanilla')
  class ScaledVanilla(vanilla.Vanilla):  # pylint: disable=unused-variable
    defaults = {'scaled_vanilla_alpha': 0.5}

  c = default.get_config()
  c.method, c.scaled_vanilla_alpha = 'scaled_vanilla', 2.0
  assert train.validate_config(c).option('scaled_vanilla_alpha') == 2.0
  c.scaled_vanila_alpha = 1.0
  with pytest.raises(ValueError, match=r"'scaled_vanila_alpha' \(did you mean "
                                       r"'scaled_vanilla_alpha'\?\)"):
    train.validate_config(c)


def test_the_tpu_guide_installs_the_tested_jax():
  # An unpinned ``pip install -U "jax[tpu]"`` after requirements.txt moved JAX past the version
  # flax and orbax are pinned against; every TPU install line pins requirements.txt's jax.
  pinned = re.search(r'^jax==(\S+)$', (ROOT / 'requirements.txt').read_text(), re.M).group(1)
  guide = (ROOT / 'colabs' / 'tpu_pod.md').read_text()
  installs = re.findall(r'pip install[^\n]*jax\[tpu\][^\n]*', guide)
  assert installs and all(f'"jax[tpu]=={pinned}"' in line for line in installs), installs
