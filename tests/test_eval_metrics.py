"""Tests for jaxrobust.evaluation.metrics and jaxrobust.evaluation.plots."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.evaluation import metrics as M
from jaxrobust.evaluation import plots as P


def _alexnet_table():
  return {c: dict(zip(M.SEVERITIES, v)) for c, v in M.ALEXNET_ERRORS_PER_SEVERITY.items()}


def _constant_table(value_of):
  return {c: {s: value_of(c, s) for s in M.SEVERITIES} for c in M.STANDARD_CORRUPTIONS}


# ---------------------------------------------------------------- constants


def test_corruption_name_sets():
  assert len(M.STANDARD_CORRUPTIONS) == 15 and len(set(M.STANDARD_CORRUPTIONS)) == 15
  assert len(M.EXTRA_CORRUPTIONS) == 4
  assert set(M.ALEXNET_ERRORS) == set(M.ALL_CORRUPTIONS)
  assert set(M.ALEXNET_ERRORS_PER_SEVERITY) == set(M.STANDARD_CORRUPTIONS)
  assert set(M.STANDARD_CORRUPTIONS) - set(M.STANDARD_CORRUPTIONS_WITHOUT_NOISE) == {
      'gaussian_noise', 'shot_noise', 'impulse_noise'}
  assert len(M.STANDARD_CORRUPTIONS_WITHOUT_NOISE) == 12


def test_alexnet_averages_match_per_severity_values():
  for c, per in M.ALEXNET_ERRORS_PER_SEVERITY.items():
    assert np.mean(per) == pytest.approx(M.ALEXNET_ERRORS[c], abs=2e-6), c
  # fractions, not percents
  assert all(0.5 < v < 1.0 for v in M.ALEXNET_ERRORS.values())


# ---------------------------------------------------------------- per example


def test_topk_correct_toy_case():
  logits = jnp.array([[0.1, 0.5, 0.3, 0.0],    # order 1,2,0,3
                      [2.0, 1.0, 0.0, -1.0],   # order 0,1,2,3
                      [0.0, 0.0, 1.0, 3.0]])   # order 3,2,(0,1)
  labels = jnp.array([2, 0, 1])
  out = jax.jit(lambda l, y: M.topk_correct(l, y, ks=(1, 2, 3)))(logits, labels)
  np.testing.assert_array_equal(out[1], [False, True, False])
  np.testing.assert_array_equal(out[2], [True, True, False])
  # label 1 ties with class 0 for third place; top_k ranks the lower index first
  np.testing.assert_array_equal(out[3], [True, True, False])


def test_topk_correct_rejects_bad_k():
  with pytest.raises(ValueError, match='k=\\[5\\]'):
    M.topk_correct(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), ks=(1, 5))


def test_cross_entropy_matches_manual():
  logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  ce = M.cross_entropy(logits, labels)
  expected0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3)))
  np.testing.assert_allclose(ce, [expected0, math.log(3)], rtol=1e-6)


# ---------------------------------------------------------------- tables


def test_error_counter_weights_by_counts():
  counter = M.ErrorCounter()
  counter.add('fog', 1, np.array([True, True, False, True]))
  counter.add('fog', 1, np.array([False]))  # uneven last batch
  counter.add('fog', '2', np.array([1, 1]))
  errs = counter.errors()
  assert errs == {'fog': {1: pytest.approx(2 / 5), 2: 0.0}}
  assert counter.counts()['fog'][1] == (3, 5)


def test_validation_rejects_percents_and_bad_severities():
  with pytest.raises(ValueError, match='fractions'):
    M.corruption_errors({'fog': {1: 45.0}})
  with pytest.raises(ValueError, match='severity 6'):
    M.corruption_errors({'fog': {6: 0.4}})
  with pytest.raises(ValueError, match='severity 0'):
    M.ErrorCounter().add('fog', 0, [True])


def test_unnormalized_aggregates_hand_computed():
  errors = {'fog': {1: 0.1, 2: 0.3}, 'snow': {1: 0.5, 2: 0.7}}
  assert M.corruption_errors(errors) == {'fog': pytest.approx(0.2), 'snow': pytest.approx(0.6)}
  assert M.unnormalized_mce(errors, ['fog', 'snow']) == pytest.approx(0.4)
  assert M.mean_accuracy(errors, ['fog', 'snow']) == pytest.approx(0.6)
  assert M.mean_accuracy_at_severity(errors, 2, ['fog', 'snow']) == pytest.approx(0.5)
  with pytest.raises(ValueError, match='gaussian_noise'):
    M.unnormalized_mce(errors)  # default set needs the 15 standard corruptions


def test_without_noise_excludes_exactly_the_three_noises():
  noises = {'gaussian_noise', 'shot_noise', 'impulse_noise'}
  table = _constant_table(lambda c, s: 1.0 if c in noises else 0.2)
  table['speckle_noise'] = {s: 1.0 for s in M.SEVERITIES}  # extra: never in the average
  assert M.mean_accuracy_without_noise(table) == pytest.approx(0.8)
  assert M.unnormalized_mce_without_noise(table) == pytest.approx(0.2)
  assert M.unnormalized_mce(table) == pytest.approx((3 * 1.0 + 12 * 0.2) / 15)
  # a change in any one non-noise corruption moves the w/o-noise mean
  for c in M.STANDARD_CORRUPTIONS_WITHOUT_NOISE:
    t2 = {k: dict(v) for k, v in table.items()}
    t2[c] = {s: 0.8 for s in M.SEVERITIES}
    assert M.mean_accuracy_without_noise(t2) == pytest.approx(0.8 - 0.6 / 12)


# ---------------------------------------------------------------- mCE


def test_mce_of_alexnet_itself_is_one():
  table = _alexnet_table()
  assert M.mce(table, 'alexnet') == pytest.approx(1.0, abs=1e-5)
  assert all(v == pytest.approx(1.0, abs=1e-5) for v in M.normalized_ce(table).values())
  assert M.mce_without_noise(table) == pytest.approx(1.0, abs=1e-5)
  assert M.relative_mce(table, M.ALEXNET_CLEAN_ERROR) == pytest.approx(1.0, abs=1e-4)


def test_mce_scales_linearly_and_hand_computed_ce():
  half = {c: {s: 0.5 * e for s, e in per.items()} for c, per in _alexnet_table().items()}
  assert M.mce(half) == pytest.approx(0.5, abs=1e-5)
  # sum_s E / sum_s E_base on a toy pair
  errors = {'fog': {1: 0.2, 2: 0.4}}
  base = {'fog': {1: 0.4, 2: 0.4, 3: 0.9}}
  assert M.normalized_ce(errors, base, ['fog']) == {'fog': pytest.approx(0.75)}
  # relative: sum_s (E - E_clean) / sum_s (E_base - E_base_clean) = (0.1 + 0.3) / (0.2 + 0.2)
  assert M.relative_mce(errors, 0.1, base, 0.2, corruptions=['fog']) == pytest.approx(1.0)
  # the model's own clean error counts: (0.2 + 0.4) / (0.2 + 0.2)
  assert M.relative_mce(errors, 0.0, base, 0.2, corruptions=['fog']) == pytest.approx(1.5)
  # the mean of per-corruption ratios (1.0 and (0.2 + 0.2) / (0.1 + 0.1) = 2.0), not a pooled one
  errors['snow'], base['snow'] = {1: 0.3, 2: 0.3}, {1: 0.3, 2: 0.3}
  assert M.relative_mce(errors, 0.1, base, 0.2, corruptions=['fog', 'snow']) == pytest.approx(1.5)


def test_mce_with_baseline_json_file(tmp_path):
  baseline_table = _constant_table(lambda c, s: 0.1 * s)
  path = M.save_errors_json(tmp_path / 'base' / 'errors.json', baseline_table, clean_error=0.05)
  loaded = json.loads(open(path).read())
  assert loaded['clean_error'] == 0.05 and loaded['errors']['fog']['3'] == pytest.approx(0.3)
  # identical model -> exactly 1.0; model twice as bad -> 2.0
  assert M.mce(baseline_table, path) == pytest.approx(1.0)
  doubled = _constant_table(lambda c, s: min(1.0, 0.2 * s))
  expected = (0.2 + 0.4 + 0.6 + 0.8 + 1.0) / 1.5
  assert M.mce(doubled, path) == pytest.approx(expected)
  # baseline clean error is read from the file for the relative mCE
  assert M.relative_mce(baseline_table, 0.05, path) == pytest.approx(1.0)


def test_missing_corruptions_and_severities_raise_clear_errors(tmp_path):
  table = _alexnet_table()
  partial_base = {c: v for c, v in M.ALEXNET_ERRORS.items() if c != 'fog'}
  with pytest.raises(ValueError, match="baseline lacks corruption\\(s\\) \\['fog'\\]"):
    M.mce(table, partial_base)
  partial_model = {c: v for c, v in table.items() if c != 'snow'}
  with pytest.raises(ValueError, match="errors lacks corruption\\(s\\) \\['snow'\\]"):
    M.mce(partial_model)
  # averages over severities 1..5 cannot normalise a 3-severity table
  three = {c: {s: per[s] for s in (1, 2, 3)} for c, per in table.items()}
  with pytest.raises(ValueError, match='evaluate all five'):
    M.mce(three, dict(M.ALEXNET_ERRORS))
  # ... but per-severity errors can, on the same severities: 'alexnet' gives them (an ImageNet
  # evaluation at severity 3 only is normalised by AlexNet's severity-3 errors)
  assert M.mce(three, table) == pytest.approx(1.0)
  assert M.mce(three) == pytest.approx(1.0)
  only3 = {c: {3: 0.5} for c in M.STANDARD_CORRUPTIONS}
  assert M.mce(only3) == pytest.approx(np.mean(
      [0.5 / per[2] for per in M.ALEXNET_ERRORS_PER_SEVERITY.values()]))
  assert 'mce_normalized' in M.corruption_summary(only3, clean_error=0.3)
  with pytest.raises(ValueError, match='invalid'):
    M.mce(table, str(tmp_path / 'no_such_file.json'))
  with pytest.raises(ValueError, match='baseline_clean_error is required'):
    M.relative_mce(table, 0.2, dict(M.ALEXNET_ERRORS))


def test_corruption_summary_names_normalisation():
  table = _alexnet_table()
  s = M.corruption_summary(table, clean_error=M.ALEXNET_CLEAN_ERROR)
  assert s['mce_normalized'] == pytest.approx(1.0, abs=1e-5)
  assert s['relative_mce_normalized'] == pytest.approx(1.0, abs=1e-4)
  assert s['unnormalized_mce'] == pytest.approx(np.mean(
      [M.ALEXNET_ERRORS[c] for c in M.STANDARD_CORRUPTIONS]), abs=1e-6)
  assert s['mean_accuracy_wo_noise'] == pytest.approx(1 - np.mean(
      [M.ALEXNET_ERRORS[c] for c in M.STANDARD_CORRUPTIONS_WITHOUT_NOISE]), abs=1e-6)
  assert 'unnormalized_ce/fog' in s and 'normalized_ce/fog' in s
  for key in s:
    assert ('normalized' in key or 'accuracy' in key), key
  no_base = M.corruption_summary(table, baseline=None)
  assert not any(k.startswith(('mce', 'normalized')) for k in no_base)


# ---------------------------------------------------------------- plots


def _is_png(path):
  with open(path, 'rb') as f:
    head = f.read(8)
  return head == b'\x89PNG\r\n\x1a\n'


def test_plots_write_non_empty_pngs(tmp_path):
  table = {c: {s: 0.1 * s for s in M.SEVERITIES} for c in M.STANDARD_CORRUPTIONS[:4]}
  paths = [
      P.plot_corruption_errors(M.corruption_errors(table), tmp_path / 'a' / 'bars.png'),
      P.plot_corruption_errors({'vanilla': M.corruption_errors(table),
                                'gnt': {c: 0.1 for c in table}}, tmp_path / 'grouped.png'),
      P.plot_error_vs_severity(table, tmp_path / 'sev.png'),
      P.plot_error_vs_severity(table, tmp_path / 'sev_mean.png', show_each=False),
      P.plot_frequency_heat_map(np.random.RandomState(0).rand(8, 8), tmp_path / 'heat.png'),
      P.plot_accuracy_vs_eps({'pgd': ([0, 2, 4, 8], [0.9, 0.6, 0.3, 0.1])},
                             tmp_path / 'acc.png', xlabel='L-inf eps (x 1/255)'),
      P.plot_boxplots({'full': [0.9, 0.8, 0.95], 'subnet': [0.5, 0.6, 0.4, 0.7]},
                      tmp_path / 'box.png', ylabel='confidence'),
  ]
  for p in paths:
    assert p.endswith('.png')
    assert _is_png(p)
    import os
    assert os.path.getsize(p) > 1000


def test_plots_reject_bad_input(tmp_path):
  with pytest.raises(ValueError, match='empty'):
    P.plot_boxplots({}, tmp_path / 'x.png')
  with pytest.raises(ValueError, match='png'):
    P.plot_corruption_errors({'fog': 0.1}, tmp_path / 'x.jpg')
  with pytest.raises(ValueError, match='lacks'):
    P.plot_corruption_errors({'a': {'fog': 0.1}, 'b': {'snow': 0.2}}, tmp_path / 'x.png')
