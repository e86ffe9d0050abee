"""benchmarks/throughput.py: every method's step is timed next to its theoretical pass count."""

import pytest

from benchmarks import throughput


def test_compare_times_each_method_against_vanilla():
  entries = [throughput.parse_entry(e) for e in
             ('advprop:advprop_attack=advprop_pgd1', 'mixprop', 'ews:ews_search_fraction=0.01')]
  results = throughput.compare(entries, model='resnet_tiny', image_size=8, batch_size=16,
                               steps=1, repeats=1, steps_per_epoch=20)
  by_name = {r.method: r for r in results}
  assert [r.method for r in results] == ['vanilla', 'advprop', 'mixprop', 'ews']
  assert by_name['vanilla'].relative == 1.0
  assert all(r.seconds_per_step > 0 and r.relative > 0 for r in results)
  # The theory column comes from each method: PGD-1 AdvProp = 1 + 2, MixProp = 2, EWS = 2.
  assert [r.theoretical_passes for r in results] == [1.0, 3.0, 2.0, 2.0]
  assert by_name['ews'].search_seconds > 0 and by_name['vanilla'].search_seconds is None
  table = throughput.format_table(results, steps_per_epoch=20)
  assert 'advprop_attack=advprop_pgd1' in table and 'controller search' in table


def test_bad_entries_are_rejected():
  with pytest.raises(ValueError, match='Unknown method'):
    throughput.parse_entry('advprob')
  with pytest.raises(ValueError, match='expected key=value'):
    throughput.parse_entry('advprop:advprop_attack')
