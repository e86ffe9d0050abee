"""Reliability: preemption (a real SIGTERM), corrupt checkpoints, non-finite losses, bad input.

Runs that need a real process (signals, exit status) are subprocesses of
``python -m jaxrobust.main`` with 2 simulated CPU devices; the rest run in this process. Every
model is ``resnet_tiny`` on the bundled digits (8x8x1), so a run is a few seconds of compute.

The bad-input table (each row one parametrised test) is written to ``docs/bad_inputs.md`` when
the whole table ran and passed, so the README's table is the tests' own output.
"""

import json
import logging
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust import checkpointing, files, methods, models, parallel, train
from jaxrobust.methods.base import Context
from tests.conftest import ROOT, tiny_config

PY = sys.executable
# A tiny CLI run: resnet_tiny on digits, 16 images per step (89 steps per epoch).
TINY = ['--config=configs/quickstart.py', '--config.model=resnet_tiny', '--config.batch_size=16',
        '--config.eval_batch_size=64', '--config.max_eval_examples=64',
        '--config.eval_every_epochs=0', '--config.lr_schedule=constant',
        '--config.learning_rate=0.05']
STEPS_PER_EPOCH = 1437 // 16


def _env(devices: int = 2) -> dict:
  """Environment of a child run: CPU, ``devices`` simulated devices, the repo importable."""
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]))
  return env


def _main(*args) -> list:
  return [PY, '-m', 'jaxrobust.main', *args]


def _cli(*args, timeout=900) -> subprocess.CompletedProcess:
  return subprocess.run(_main(*args), cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def _assert_trees_equal(a, b):
  """Bit-for-bit equality of two nested dict/list trees of arrays."""
  leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


def _all_finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


# ----------------------------------------------------------------------------- preemption


def _kill_after_checkpoint(proc: subprocess.Popen, checkpoint_dir: pathlib.Path) -> None:
  """SIGKILLs ``proc`` as soon as ``checkpoint_dir`` (a committed orbax step) exists."""
  while proc.poll() is None:
    if checkpoint_dir.is_dir():
      proc.send_signal(signal.SIGKILL)
      return
    time.sleep(0.01)


def test_sigterm_then_sigkill_then_resume_is_bit_identical(tmp_path):
  """One command, run uninterrupted and, in another workdir, (1) SIGTERM-ed mid-epoch at a step
  k >= 4: it saves step k and exits 0; (2) restarted, resumes at k and is SIGKILL-ed right after
  its epoch-1 checkpoint (step 89); (3) restarted, resumes at 89 and finishes. The final state
  equals the uninterrupted run's bit for bit: the data pipeline resumes at the exact batch."""
  args = TINY + ['--config.num_epochs=2', '--config.log_every_steps=1',
                 '--config.checkpoint_every_steps=0']  # periodic saves only at epoch ends
  total = 2 * STEPS_PER_EPOCH
  full_dir, split_dir = tmp_path / 'full', tmp_path / 'split'

  def start(workdir, **kwargs):
    return subprocess.Popen(_main(*args, f'--workdir={workdir}'), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, **kwargs)
  with open(tmp_path / 'full.log', 'w') as full_log:
    full = start(full_dir, stderr=full_log)
    term = start(split_dir, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in term.stderr:  # absl logs go to stderr; signal once training is under way
      seen.append(line)
      m = re.search(rf'step (\d+)/{total} ', line)
      if m and int(m.group(1)) >= 3:
        term.send_signal(signal.SIGTERM)
        break
    _, rest = term.communicate(timeout=900)
    stderr = ''.join(seen) + rest
    assert term.returncode == 0, stderr[-3000:]

    stopped = json.loads((split_dir / 'results.json').read_text())
    k = stopped['step']
    assert stopped['stopped_by'] == 'SIGTERM'
    assert 3 <= k < STEPS_PER_EPOCH, 'the stop must be mid-epoch (before the first epoch ends)'
    assert re.search(rf'Stopped by SIGTERM at step {k}\b.*Run the same command again', stderr)
    assert sorted(int(s) for s in os.listdir(split_dir / 'checkpoints')) == [k]
    (split_dir / 'results.json').unlink()

    kill = start(split_dir, stderr=subprocess.PIPE, text=True)
    killer = threading.Thread(target=_kill_after_checkpoint,
                              args=(kill, split_dir / 'checkpoints' / str(STEPS_PER_EPOCH)))
    killer.start()
    log = kill.communicate(timeout=900)[1]
    killer.join()
    assert kill.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    assert f'Resumed from the checkpoint at step {k}.' in log
    # a SIGKILL loses the steps since the last periodic save, nothing before it
    assert str(STEPS_PER_EPOCH) in os.listdir(split_dir / 'checkpoints')
    assert not (split_dir / 'results.json').exists()

    last = start(split_dir, stderr=subprocess.PIPE, text=True)
    log = last.communicate(timeout=900)[1]
    assert last.returncode == 0, log[-3000:]
    assert f'Resumed from the checkpoint at step {STEPS_PER_EPOCH}.' in log
    assert 'changed config' not in log  # the same command: nothing to warn about
    assert full.wait(timeout=900) == 0, (tmp_path / 'full.log').read_text()[-3000:]

  reference, step = checkpointing.load_arrays(str(full_dir))
  arrays, step_split = checkpointing.load_arrays(str(split_dir))
  assert step == step_split == total
  _assert_trees_equal(reference, arrays)  # params, BN stats, optimizer state, rng: bit for bit
  res_full = json.loads((full_dir / 'results.json').read_text())
  res = json.loads((split_dir / 'results.json').read_text())
  assert (res['eval_loss'], res['eval_top1']) == (res_full['eval_loss'], res_full['eval_top1'])


def test_resumed_run_carries_on_the_totals_of_the_run_it_resumes(tmp_path):
  # ``results.json`` of a stopped run: its time and skipped updates count only for a resume
  # from its very step.
  def totals(step):
    t = train._totals_before(train._saved_results(str(tmp_path)), step)
    return t['wall_time_s'], t['skipped_updates']
  assert totals(40) == (0.0, 0)   # nothing stopped here
  (tmp_path / 'results.json').write_text(json.dumps(
      {'step': 40, 'stopped_by': 'SIGTERM', 'wall_time_s': 125.0, 'skipped_updates': 3}))
  assert totals(40) == (125.0, 3)
  assert totals(0) == (0.0, 0)    # a fresh start
  assert totals(60) == (0.0, 0)   # a later checkpoint: chain broken
  (tmp_path / 'results.json').write_text(json.dumps(
      {'step': 40, 'stopped_by': None, 'wall_time_s': 125.0, 'skipped_updates': 3}))
  assert totals(40) == (125.0, 3)  # a finished run rerun (to log its missing evaluation)
  assert totals(60) == (0.0, 0)
  (tmp_path / 'results.json').write_text('{"step": 40, "stopped_by": "SIGT')
  assert totals(40) == (0.0, 0)   # cut short by a kill: the resume goes on, counting from 0


def test_preemption_handler_second_signal_aborts_and_handlers_are_restored():
  before = signal.getsignal(signal.SIGINT)
  handler = checkpointing.PreemptionHandler()
  try:
    assert not handler.should_stop()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs signal handlers between bytecodes of the main thread
    assert handler.should_stop() and handler.signal_name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before
  finally:
    handler.restore_handlers()
  assert signal.getsignal(signal.SIGINT) is before


def test_a_failing_final_commit_still_restores_the_signal_handlers(tmp_path, monkeypatch):
  # A background save that fails surfaces when the checkpointer closes; the cleanup after it
  # (signal handlers, the metrics log) used to be skipped, leaving a notebook's Ctrl-C only
  # logging "will save a checkpoint".
  before = signal.getsignal(signal.SIGINT)
  real_close = checkpointing.Checkpointer.close

  def failing_close(self):
    real_close(self)
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(checkpointing.Checkpointer, 'close', failing_close)
  with pytest.raises(OSError, match='No space left'):
    train.train_and_evaluate(tiny_config(num_epochs=0.25, eval_every_epochs=0.25), str(tmp_path))
  assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize('stop_at_call', [3, None])
def test_checkpoints_are_committed_before_a_stop_is_announced_or_the_final_eval(
    tmp_path, monkeypatch, stop_at_call):
  # Saves run in the background: "saved the checkpoint; exiting" came while the commit could
  # still fail, and the final evaluation ran (long, past a preemption's grace period) before
  # the final checkpoint had landed.
  events = []
  real_wait = checkpointing.Checkpointer.wait
  real_should_stop = checkpointing.PreemptionHandler.should_stop
  real_evaluate = train.clean.evaluate

  def wait(self):
    real_wait(self)
    events.append(('committed', self.all_steps()[-1] if self.all_steps() else None))

  def should_stop(self):
    stop = real_should_stop(self)
    if self._calls == stop_at_call:
      self.request_stop()
      stop = True
    return stop

  class Said(logging.Handler):
    def emit(self, record):
      if 'saved the checkpoint at step' in record.getMessage():
        events.append(('said', None))

  monkeypatch.setattr(checkpointing.Checkpointer, 'wait', wait)
  monkeypatch.setattr(checkpointing.PreemptionHandler, 'should_stop', should_stop)
  monkeypatch.setattr(train.clean, 'evaluate',
                      lambda *a, **k: events.append(('eval', None)) or real_evaluate(*a, **k))
  said = Said()
  logging.getLogger('absl').addHandler(said)
  try:
    _, results = train.train_and_evaluate(
        tiny_config(num_epochs=0.25, eval_every_epochs=0.25, checkpoint_every_steps=100),
        str(tmp_path))
  finally:
    logging.getLogger('absl').removeHandler(said)
  if stop_at_call:
    assert results['stopped_by'] == 'stop request'
    assert events[:2] == [('committed', 3), ('said', None)], events
  else:
    final = results['step']
    assert events[:2] == [('committed', final), ('eval', None)], events


def test_sighup_saves_and_stops_unless_nohup_ignores_it():
  # A run in the foreground of a dropped SSH session gets SIGHUP: it used to die without a
  # checkpoint. Under nohup (SIGHUP ignored) the run must go on, so the handler leaves it alone.
  before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
  try:
    handler = checkpointing.PreemptionHandler()
    try:
      os.kill(os.getpid(), signal.SIGHUP)
      time.sleep(0.05)
      assert handler.should_stop() and handler.signal_name == 'SIGHUP'
    finally:
      handler.restore_handlers()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    handler = checkpointing.PreemptionHandler()
    try:
      assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGHUP)
      time.sleep(0.05)
      assert not handler.should_stop()
    finally:
      handler.restore_handlers()
  finally:
    signal.signal(signal.SIGHUP, before)


class _FakeStepOutput:
  """Stands in for a step's output; records when the bound waits for it."""

  def __init__(self, step, waited):
    self.step, self._waited = step, waited

  def block_until_ready(self):
    self._waited.append(self.step)
    return self


@pytest.mark.parametrize('limit', [1, 2, 3])
def test_steps_in_flight_waits_for_the_step_limit_back(limit):
  waited, in_flight = [], parallel.StepsInFlight(limit)
  for step in range(6):
    in_flight.add(_FakeStepOutput(step, waited))
    assert waited == list(range(step + 1 - limit)), 'after step k, steps <= k - limit finished'
    assert len(in_flight) == min(step + 1, limit)


def test_steps_in_flight_leaves_older_arrays_finished():
  step = jax.jit(lambda x: (x @ x) / x.shape[0], donate_argnums=0)
  x, outputs, in_flight = jnp.ones((512, 512)) / 512, [], parallel.StepsInFlight(limit=2)
  for _ in range(6):
    x = step(x)
    outputs.append(x.sum())
    in_flight.add(outputs[-1])
    assert all(out.is_ready() for out in outputs[:-2])
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match=rf'max_steps_in_flight={bad!r} is out of range.*>= 1'):
      parallel.StepsInFlight(limit=bad)


def test_a_stop_request_finds_at_most_max_steps_in_flight_unfinished(tmp_path, monkeypatch):
  """The loop bounds its run-ahead: whenever it checks for a stop, at most
  ``max_steps_in_flight`` dispatched steps are unfinished, so a stop's checkpoint is written
  after that many steps, not after a whole logging interval of queued ones. (Without the bound
  this fails whenever dispatch gets ahead, which is timing-dependent; the fake-output test
  above pins the rule down exactly.)"""
  outputs, unfinished = [], []
  make_step = train.make_train_step

  def recording_make_step(*args):
    step = make_step(*args)

    def recorded(state, batch):
      state, metrics = step(state, batch)
      outputs.append(metrics['finite'])  # the output the loop's bound waits for
      return state, metrics
    return recorded

  should_stop = checkpointing.PreemptionHandler.should_stop

  def checking_should_stop(handler):
    unfinished.append(sum(not out.is_ready() for out in outputs))
    if len(unfinished) == 6:
      handler.request_stop()
    return should_stop(handler)

  monkeypatch.setattr(train, 'make_train_step', recording_make_step)
  monkeypatch.setattr(checkpointing.PreemptionHandler, 'should_stop', checking_should_stop)
  config = tiny_config(max_steps_in_flight=1, log_every_steps=100, checkpoint_every_steps=100)
  _, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['stopped_by'] == 'stop request' and results['step'] == 6
  assert len(unfinished) == 6 and max(unfinished) <= 1, unfinished
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['6']
  with pytest.raises(ValueError, match=r'max_steps_in_flight=0 is out of range'):
    train.validate_config(tiny_config(max_steps_in_flight=0))


def test_an_evaluation_cut_by_a_stop_is_run_on_resume(tmp_path, monkeypatch):
  """A stop at an evaluation step saves and exits before evaluating; the resumed run owes it."""
  should_stop = checkpointing.PreemptionHandler.should_stop
  calls = []

  def stop_at_the_eval_step(handler):
    calls.append(1)
    if len(calls) == 11:  # eval_every_epochs=0.5 of 22 steps: step 11 is an evaluation step
      handler.request_stop()
    return should_stop(handler)

  config = tiny_config(eval_every_epochs=0.5, max_eval_examples=64)
  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.PreemptionHandler, 'should_stop', stop_at_the_eval_step)
    _, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['stopped_by'] == 'stop request' and results['step'] == 11

  def evals():
    rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    return [r['step'] for r in rows if r['kind'] == 'eval']
  assert evals() == []
  _, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 22 and evals() == [11, 22]
  # a finished run owes nothing: run again, it neither trains nor evaluates
  train.train_and_evaluate(config, str(tmp_path))
  assert evals() == [11, 22]


# ----------------------------------------------------------------------------- checkpoints


def _state(value: float, *, domains=('main',), width: int = 4):
  return {'params': {'w': jnp.full((width,), value), 'b': jnp.full((2,), value)},
          'batch_stats': {d: {'mean': jnp.full((3,), value)} for d in domains},
          'step': jnp.array(int(value), jnp.int32)}


def _truncate_files(directory: pathlib.Path) -> dict:
  """Cuts every file under ``directory`` to half its size; returns {relative path: new size}."""
  sizes = {}
  for f in sorted(directory.rglob('*')):
    if f.is_file():
      with open(f, 'r+b') as fh:
        fh.truncate(f.stat().st_size // 2)
      sizes[str(f.relative_to(directory))] = f.stat().st_size
  return sizes


def _saved(tmp_path, steps=(1, 2, 3)):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  for s in steps:
    ckpt.save(s, _state(float(s)))
  ckpt.close()
  return tmp_path / 'checkpoints'


def test_truncated_newest_checkpoint_falls_back_and_is_kept(tmp_path, caplog):
  directory = _saved(tmp_path)
  sizes = _truncate_files(directory / '3')
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  with caplog.at_level('WARNING'):
    state, step = ckpt.restore(_state(0.0))
  ckpt.close()
  assert step == 2 and float(state['params']['w'][0]) == 2.0
  assert re.search(r'Checkpoint at step 3 is unreadable .*Moved it to .*checkpoints_unreadable/3 '
                   r'\(kept, not deleted\)', caplog.text)
  kept = tmp_path / checkpointing.UNREADABLE_DIR / '3'
  assert {str(f.relative_to(kept)): f.stat().st_size
          for f in sorted(kept.rglob('*')) if f.is_file()} == sizes  # the same files, untouched
  assert sorted(os.listdir(directory)) == ['1', '2']


@pytest.mark.parametrize('error', [
    RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB.'),
    ValueError('UNAVAILABLE: Error reading "params/w" from gs://bucket/run: 503'),
    PermissionError(13, 'Permission denied'),
    OSError(5, 'Input/output error'),
    TypeError("restore() got an unexpected keyword argument 'partial'")])
def test_a_machine_or_storage_failure_leaves_every_checkpoint_in_place(tmp_path, error):
  # Out of memory, unreachable storage, an I/O error or a library change says nothing about the
  # files: setting the good steps aside would silently restart training from step 0.
  directory = _saved(tmp_path)
  ckpt = checkpointing.Checkpointer(str(tmp_path))

  def failing(*args, **kwargs):
    raise error

  ckpt.manager.restore = failing
  with pytest.raises(RuntimeError, match=r'Could not read checkpoint .*checkpoints/3: .*left in '
                                         r'place'):
    ckpt.restore(_state(0.0))
  ckpt.close()
  assert sorted(os.listdir(directory)) == ['1', '2', '3']
  assert not (tmp_path / checkpointing.UNREADABLE_DIR).exists()


@pytest.mark.parametrize('damage', ['garbled_array_data', 'missing_array_data',
                                    'missing_files'])
def test_damaged_array_files_are_recognised_and_set_aside(tmp_path, damage):
  # Damage past the JSON metadata reaches us as tensorstore's DATA_LOSS / NOT_FOUND (or a
  # FileNotFoundError): those steps are set aside like a truncated one, not kept as "trouble".
  directory = _saved(tmp_path)
  for f in [f for f in (directory / '3').rglob('*') if f.is_file()]:
    if damage == 'missing_files' or (f.parent.name == 'd' and damage == 'missing_array_data'):
      f.unlink()
    elif f.parent.name == 'd':
      f.write_bytes(b'\x07' * f.stat().st_size)
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  state, step = ckpt.restore(_state(0.0))
  ckpt.close()
  assert step == 2 and float(state['params']['w'][0]) == 2.0
  assert sorted(os.listdir(tmp_path / checkpointing.UNREADABLE_DIR)) == ['3']


def test_partial_tmp_directory_is_ignored_and_empty_step_directory_skipped(tmp_path, caplog):
  directory = _saved(tmp_path, steps=(1, 2))
  # a save cut short by a crash: orbax's temporary name, never renamed to "3"
  os.makedirs(directory / '3.orbax-checkpoint-tmp-1234' / 'default')
  os.makedirs(directory / '4')  # a step directory with nothing in it
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  assert ckpt.all_steps() == [1, 2, 4]
  with caplog.at_level('WARNING'):
    state, step = ckpt.restore(_state(0.0))
  ckpt.close()
  assert step == 2 and float(state['params']['b'][1]) == 2.0
  assert 'step 4 is unreadable' in caplog.text and 'step 3' not in caplog.text
  assert os.path.isdir(directory / '3.orbax-checkpoint-tmp-1234')


def test_no_readable_checkpoint_starts_from_scratch_and_keeps_everything(tmp_path, caplog):
  directory = _saved(tmp_path, steps=(1, 2))
  for s in ('1', '2'):
    _truncate_files(directory / s)
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  with caplog.at_level('WARNING'):
    assert ckpt.restore(_state(0.0)) == (None, None)
  assert ckpt.all_steps() == []
  ckpt.save(1, _state(5.0))  # the step can be written again
  ckpt.close()
  assert 'No readable checkpoint' in caplog.text
  assert sorted(os.listdir(tmp_path / checkpointing.UNREADABLE_DIR)) == ['1', '2']
  arrays, step = checkpointing.load_arrays(str(tmp_path))
  assert step == 1 and float(arrays['params']['w'][0]) == 5.0


def test_load_arrays_reads_a_relative_workdir(tmp_path, monkeypatch):
  # e.g. ``--workdirs=results/cpu_budget/runs/vanilla``: orbax itself wants absolute paths
  _saved(tmp_path / 'run', steps=(3,))
  monkeypatch.chdir(tmp_path)
  arrays, step = checkpointing.load_arrays('run')
  assert step == 3 and set(arrays) >= {'params', 'batch_stats'}


@pytest.mark.parametrize('target, expected', [
    (_state(0.0, domains=('main', 'aux')),
     r"this run needs batch_stats/aux, which the checkpoint lacks"),
    (_state(0.0, width=8),
     r"params/w is \(4,\) float32 in the checkpoint, \(8,\) float32 here"),
    ({**_state(0.0), 'extras': {'head': jnp.zeros(2)}}, r'this run needs extras'),
])
def test_checkpoint_of_another_model_or_method_is_a_named_mismatch(tmp_path, target, expected):
  _saved(tmp_path, steps=(1, 2))
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  with pytest.raises(checkpointing.CheckpointMismatchError, match=expected):
    ckpt.restore(target)
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']  # nothing moved or deleted
  assert not os.path.exists(tmp_path / checkpointing.UNREADABLE_DIR)


def test_train_states_differing_in_aux_statistics_are_a_mismatch(tmp_path):
  """A real TrainState (attributes, optax namedtuples) against orbax's metadata (dicts, lists)."""
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  params = {'stem_conv': {'kernel': jnp.ones((3, 3, 3, 4))}, 'stem_bn': {'scale': jnp.ones(4)}}

  def state(domains):
    stats = {d: {'stem_bn': {'mean': jnp.zeros(4), 'var': jnp.ones(4)}} for d in domains}
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params), batch_stats=stats,
                            rng=jax.random.PRNGKey(1), extras={})
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(1, state(('main',)))
  ckpt.wait()
  restored, step = ckpt.restore(state(('main',)))  # same structure: restores
  assert step == 1 and isinstance(restored, train.TrainState)
  chex.assert_trees_all_equal(restored.opt_state, tx.init(params))
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r'needs batch_stats/aux \(2 arrays\), which the checkpoint lacks'):
    ckpt.restore(state(('main', 'aux')))
  ckpt.close()


def test_run_resumes_from_the_previous_checkpoint_when_the_newest_is_truncated(tmp_path, caplog):
  mesh = parallel.make_mesh(jax.devices()[:2])
  config = tiny_config(checkpoint_every_steps=5, keep_checkpoints=3)  # 22 steps: 15, 20, 22 kept
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, mesh=mesh)
  final, step = checkpointing.load_arrays(workdir)
  assert step == 22 and sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['15', '20', '22']
  sizes = _truncate_files(tmp_path / 'run' / 'checkpoints' / '22')

  config.log_every_steps = 7            # a changed config: warned about, key by key
  config.eval_batch_size = 64
  with caplog.at_level(logging.INFO, logger='absl'):
    _, results = train.train_and_evaluate(config, workdir, mesh=mesh)
  assert 'Checkpoint at step 22 is unreadable' in caplog.text
  assert 'Resumed from the checkpoint at step 20.' in caplog.text and results['step'] == 22
  changed = re.findall(r'Resuming with a changed config: (\S+) was', caplog.text)
  assert changed == ['eval_batch_size', 'log_every_steps']
  resumed, step = checkpointing.load_arrays(workdir)
  assert step == 22
  _assert_trees_equal(final, resumed)  # 20 -> 22 again gives exactly the lost checkpoint
  kept = tmp_path / 'run' / checkpointing.UNREADABLE_DIR / '22'
  assert {str(f.relative_to(kept)): f.stat().st_size
          for f in kept.rglob('*') if f.is_file()} == sizes
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['log_every_steps'] == 7


def _dump_config(config, workdir: str) -> list:
  """What the loop does with a config: warn about every changed key, write config.json."""
  current, changes = train.config_changes(config, workdir)
  train._warn_config_changes(changes)
  train._write_config(current, workdir)
  return changes


def test_config_changes_warns_about_every_changed_key(tmp_path, caplog):
  first = tiny_config()
  first.ews = {'rho': 0.5, 'search': 'controller'}
  assert _dump_config(first, str(tmp_path)) == []
  second = tiny_config(learning_rate=0.3, model='resnet8')
  second.ews = {'rho': 0.25, 'search': 'controller'}
  second.new_key = 1
  with caplog.at_level('WARNING'):
    changes = _dump_config(second, str(tmp_path))
  assert [k for k, _, _ in changes] == ['ews.rho', 'learning_rate', 'model', 'new_key']
  for key, old, new in [('ews.rho', 0.5, 0.25), ('learning_rate', 0.05, 0.3),
                        ('model', 'resnet_tiny', 'resnet8'), ('new_key', '<unset>', 1)]:
    assert f'changed config: {key} was {old!r}, now {new!r}' in caplog.text
  assert json.loads((tmp_path / 'config.json').read_text())['ews']['rho'] == 0.25


# ----------------------------------------------------------------------------- non-finite


def test_nan_stops_cleanly_naming_the_step_and_the_previous_checkpoint_is_intact(tmp_path):
  # The learning rate jumps by 1e30 at step 7 (lr_boundaries is in epochs: 0.08 * 89 = 7).
  # Checks run only where a checkpoint is due (log_every_steps=1000), i.e. right before a save:
  # the NaN state after step 7 must be caught before the save at step 10.
  workdir = tmp_path / 'nan'
  result = _cli(*TINY, f'--workdir={workdir}', '--config.num_epochs=0.2',
                '--config.checkpoint_every_steps=5', '--config.log_every_steps=1000',
                '--config.lr_schedule=step', '--config.lr_boundaries=(0.08,)',
                '--config.lr_decay_factor=1e30')
  assert result.returncode == 3, result.stderr[-3000:]
  m = re.search(r'error: Non-finite (.+) at step (\d+) \(update \d+\); stopping\. The last good '
                r'checkpoint in \S+ \(steps \[5\]\) is intact', result.stderr)
  assert m, result.stderr[-3000:]
  assert 'loss' in m.group(1) or 'parameters' in m.group(1)
  assert 8 <= int(m.group(2)) <= 10
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['5']
  arrays, step = checkpointing.load_arrays(str(workdir))
  assert step == 5 and int(arrays['step']) == 5 and _all_finite(arrays)


def test_skipped_updates_leave_the_logged_means_finite(tmp_path, monkeypatch):
  """'skip': a window with one NaN step logs the means of its applied updates, not NaN."""
  real = train.data.train_iterator

  def poisoned(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      if i == 2:
        batch = dict(batch, image=np.full_like(batch['image'], np.nan))
      yield batch
  monkeypatch.setattr(train.data, 'train_iterator', poisoned)
  config = tiny_config(nonfinite='skip', num_epochs=0.25, max_eval_examples=128)
  _, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['skipped_updates'] == 1
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_rows = [r for r in rows if r['kind'] == 'train']
  assert train_rows and all(np.isfinite(r['loss']) for r in train_rows)


def test_a_non_finite_state_is_caught_before_it_is_evaluated(tmp_path, monkeypatch):
  """An evaluation step that is no log or checkpoint step checks the steps before it first."""
  real = train.data.train_iterator

  def poisoned(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      yield dict(batch, image=np.full_like(batch['image'], np.nan)) if i == 2 else batch
  monkeypatch.setattr(train.data, 'train_iterator', poisoned)
  config = tiny_config(eval_every_epochs=0.2, log_every_steps=1000, checkpoint_every_steps=1000,
                       max_eval_examples=64)  # evaluation every 4 steps; nothing else before 22
  with pytest.raises(train.NonFiniteError, match='at step 3 '):
    train.train_and_evaluate(config, str(tmp_path))
  log = tmp_path / 'metrics.jsonl'  # written at the first row: none before the error
  rows = [json.loads(line) for line in open(log)] if log.exists() else []
  assert not [r for r in rows if r['kind'] == 'eval']


def test_overflowing_update_with_finite_loss_is_flagged_and_skipped():
  """A finite loss with an overflowing update: 'finite' is 0 and 'skip' keeps the old state."""
  config = tiny_config(nonfinite='skip')
  mesh = parallel.make_mesh(jax.devices()[:2])
  m = methods.get('vanilla')(config)
  model = models.create_model('resnet_tiny', num_classes=10)
  # the update overflows float32 for any gradient entry above ~3e-22
  tx = optax.chain(optax.scale(1e30), optax.scale(-1e30))
  m.setup(Context(config=config, model=model, tx=tx, info=None, mesh=mesh, steps_per_epoch=1,
                  total_steps=1))

  class Info:
    image_shape = (8, 8, 3)
  state = parallel.replicate(
      train.create_train_state(config, m, model, tx, Info, jax.random.PRNGKey(0)), mesh)
  before = parallel.to_host(state.params)
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(size=(8, 8, 8, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  state, metrics = train.make_train_step(m, config, mesh)(state, parallel.shard_batch(batch, mesh))
  metrics = parallel.to_host(metrics)
  assert np.isfinite(metrics['loss'])
  assert metrics['finite'] == 0.0 and metrics['state_finite'] == 0.0
  assert int(state.step) == 1
  chex.assert_trees_all_equal(before, parallel.to_host(state.params))


# ----------------------------------------------------------------------------- bad input

_TABLE: dict = {}


def _make_folder(root: pathlib.Path, splits=('train', 'test'), classes=('a', 'b'), images=4,
                 bad_file=None) -> pathlib.Path:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in splits:
    for c in classes:
      os.makedirs(root / split / c, exist_ok=True)
      for i in range(images):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            root / split / c / f'{i}.jpg')
  if bad_file:
    (root / bad_file).write_bytes(b'this is not a JPEG ' * 8)
  return root


FOLDERS = {'missing': 'a path that does not exist', 'empty': 'an empty directory',
           'no_images': 'split/class directories without images',
           'no_eval_split': 'only a train split', 'unreadable_image': 'a .jpg that is not an image'}


def _build_folder(kind: str, root: pathlib.Path) -> str:
  """Builds a dataset folder of the given kind (see FOLDERS); returns the dataset string."""
  if kind == 'missing':
    return f'folder:{root}/does_not_exist'
  if kind == 'empty':
    os.makedirs(root / 'data')
  elif kind == 'no_images':
    _make_folder(root / 'data', images=0)
  elif kind == 'no_eval_split':
    _make_folder(root / 'data', splits=('train',))
  elif kind == 'unreadable_image':
    _make_folder(root / 'data', bad_file='train/b/2.jpg')
  return f'folder:{root}/data'


def _workdir_is_a_file(root: pathlib.Path) -> None:
  """--workdir naming a file (it raised a raw FileExistsError, exit status 1)."""
  root.write_text('not a directory')


def _other_model_checkpoint(root: pathlib.Path) -> None:
  """A workdir holding a checkpoint (and config.json) written by resnet8, not resnet_tiny."""
  config = tiny_config(model='resnet8')
  os.makedirs(root)
  _dump_config(config, str(root))
  info, method, model, tx, _, _ = train.build(config, parallel.make_mesh(jax.devices()[:1]))
  shapes = jax.eval_shape(lambda: train.create_train_state(config, method, model, tx, info,
                                                           jax.random.PRNGKey(0)))
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # shapes are what matter
  ckpt = checkpointing.Checkpointer(str(root))
  ckpt.save(5, state)
  ckpt.close()


# (id, kind, input, expected message regex). kind: 'cli' = python -m jaxrobust.main with
# configs/vanilla_cifar.py plus the flags; 'config' = tiny_config(**overrides) through
# train.train_and_evaluate (8 devices); 'folder' = a dataset folder built by a function;
# 'distributed' = parallel.distributed_kwargs(**kwargs); 'workdir' = a prepared workdir.
BAD_INPUTS = [
    ('cli_model', 'cli', ['--config.model=nonexistent'],
     r"Unknown model 'nonexistent'\. Valid models: .*resnet18.*resnet_tiny"),
    ('cli_dataset', 'cli', ['--config.dataset=nonexistent'],
     r"Unknown dataset 'nonexistent'\. Valid: digits, folder:.*cifar10"),
    ('cli_method', 'cli', ['--config.method=nonexistent'],
     r"Unknown method 'nonexistent'\. Valid methods: .*vanilla"),
    ('cli_config_key', 'cli', ['--config.modle=resnet18'],
     r"unknown config key 'modle'\. Did you mean \"model\""),
    ('cli_config_key_of_another_config', 'cli', ['--config.mixprop_alpha=0.5'],
     r"config key 'mixprop_alpha' is not in the --config file, and the command line only "
     r"overrides keys the file defines\. Use the config of the method that reads it"),
    ('cli_config_file', 'cli', ['--config=configs/nosuch.py'],
     r"config file 'configs/nosuch\.py' not found \(a relative path starts at the current "
     r"directory\); the configs are in the repository's configs/\."),
    ('optimizer', 'config', {'optimizer': 'rmsprop'},
     r"Unknown optimizer 'rmsprop'; valid: sgd, adam, adamw"),
    ('lr_schedule', 'config', {'lr_schedule': 'linear'},
     r"Unknown lr_schedule 'linear'; valid: constant, cosine, step, onecycle"),
    ('nonfinite', 'config', {'nonfinite': 'ignore'}, r"Unknown nonfinite 'ignore'; valid: stop, skip"),
    ('augment', 'config', {'augment': 'randaugment'},
     r"Unknown augment 'randaugment'; valid: auto, cifar, crop, imagenet, none"),
    ('device_augment', 'config', {'device_augment': 'randaugment'},
     r"Unknown device_augment 'randaugment'; valid: none, autoaugment_cifar10, "
     r"autoaugment_imagenet"),
    ('stem', 'config', {'stem': 'patchify'}, r"Unknown stem 'patchify'; valid: auto, cifar"),
    ('batch_not_divisible', 'config', {'batch_size': 100},
     r'batch_size=100 must be a positive multiple of the number of devices \(8\): try 96'),
    ('eval_batch_zero', 'config', {'eval_batch_size': 0},
     r'eval_batch_size=0 is out of range; allowed: > 0'),
    ('batch_zero', 'config', {'batch_size': 0}, r'batch_size=0 is out of range; allowed: > 0'),
    ('batch_too_large', 'config', {'batch_size': 2048},
     r'batch_size=2048 exceeds the 1437 training examples'),
    ('epochs_zero', 'config', {'num_epochs': 0.0}, r'num_epochs=0.0 is out of range; allowed: > 0'),
    ('epochs_negative', 'config', {'num_epochs': -1.0}, r'num_epochs=-1.0 is out of range'),
    ('epochs_below_one_step', 'config', {'num_epochs': 0.01},
     r'num_epochs=0.01 is less than one step \(22 steps per epoch\); allowed: >= 1/22 \(one '
     r'step\)'),
    ('eval_every_below_one_step', 'config', {'eval_every_epochs': 0.01},
     r'eval_every_epochs=0.01 is less than one step .*allowed: 0 \(only at the end\) or >= '
     r'1/22'),
    ('warmup_past_the_end', 'config', {'warmup_epochs': 1.0},
     r'warmup_epochs=1.0 must be below num_epochs=1.0'),
    ('step_without_boundaries', 'config', {'lr_schedule': 'step'},
     r"lr_schedule='step' needs lr_boundaries .*use 'constant'"),
    ('boundary_inside_warmup', 'config',
     {'lr_schedule': 'step', 'warmup_epochs': 0.5, 'lr_boundaries': (0.25, 0.75)},
     r'lr_boundaries=\(0.25, 0.75\): a boundary at or before the end of the warm-up'),
    ('seed_beyond_32_bits', 'config', {'seed': 2**32},
     r'seed=4294967296 is out of range; allowed: \[0, 4294967296\)'),
    ('lr_negative', 'config', {'learning_rate': -0.1},
     r'learning_rate=-0.1 is out of range; allowed: >= 0'),
    ('momentum', 'config', {'momentum': 1.0}, r'momentum=1.0 is out of range; allowed: \[0, 1\)'),
    ('label_smoothing', 'config', {'label_smoothing': 1.5},
     r'label_smoothing=1.5 is out of range; allowed: \[0, 1\)'),
    ('keep_checkpoints', 'config', {'keep_checkpoints': 0},
     r'keep_checkpoints=0 is out of range; allowed: >= 1'),
    ('seed_negative', 'config', {'seed': -1},
     r'seed=-1 is out of range; allowed: \[0, 4294967296\)'),
    ('advprop_eps', 'config', {'method': 'advprop', 'advprop_eps': -0.1},
     r'advprop_eps=-0\.1 is out of range'),
    ('ews_rho', 'config', {'method': 'ews', 'ews_rho': 1.5}, r'rho.* must be in \(0, 1\]'),
    ('auxtrain_severity', 'config', {'method': 'auxtrain',
                                     'auxtrain_corruptions': ('gaussian_noise',),
                                     'auxtrain_severities': (6,)},
     r'auxtrain_severities: 6 is not a severity; valid: \(1, 2, 3, 4, 5\)'),
    ('config_key_misspelt', 'config', {'method': 'ews', 'ews_lamda': 0.0},
     r"Unknown config key\(s\): 'ews_lamda' \(did you mean 'ews_lambda'\?\)"),
    ('pgd_at_eps_in_255_units', 'config', {'method': 'pgd_at', 'pgd_at_eps': 8.0},
     r'pgd_at_eps=8\.0: an L-inf radius is in \[0, 1\] pixel units .*8\.0/255 = 0\.0314'),
    ('folder_missing', 'folder', 'missing', r"Image folder '.*' does not exist"),
    ('folder_empty', 'folder', 'empty', r"has no split directories"),
    ('folder_no_images', 'folder', 'no_images', r"has no images in split\(s\)"),
    ('folder_no_eval_split', 'folder', 'no_eval_split',
     r"has no evaluation split \(looked for test, validation, val\); it has \['train'\]"),
    ('folder_unreadable_image', 'folder', 'unreadable_image',
     r"unreadable image file '.*train/b/2\.jpg'"),
    ('init_from_missing', 'config', {'init_from': '/nonexistent/run'},
     r"init_from='/nonexistent/run': No checkpoints directory at /nonexistent/run/checkpoints"),
    ('resume_other_model', 'workdir', _other_model_checkpoint,
     r'was written by a different model or method: .*params/.* is .* in the checkpoint, .* here'
     r'.*Its config.json differs from this run in: model \(\'resnet8\' -> \'resnet_tiny\'\)'),
    ('workdir_is_a_file', 'workdir', _workdir_is_a_file,
     r'--workdir=.*/run can not be used as the run directory: .*File exists'),
    ('processes_without_coordinator', 'distributed', {'num_processes': 2, 'process_id': 0},
     r'num_processes=2 needs --coordinator_address=host:port'),
    ('process_id_out_of_range', 'distributed',
     {'num_processes': 2, 'process_id': 2, 'coordinator_address': '127.0.0.1:1234'},
     r'process_id=2 must be in \[0, 2\)'),
]


def _describe(kind, value) -> str:
  if kind == 'cli':
    return 'python -m jaxrobust.main ' + ' '.join(_cli_args(value))
  if kind == 'config':
    return ', '.join(f'{k}={v!r}' for k, v in value.items())
  if kind == 'folder':
    return f'dataset=folder:<{FOLDERS[value]}>'
  if kind == 'workdir' and value is _other_model_checkpoint:
    return 'model=resnet_tiny in a workdir whose checkpoint was written by resnet8'
  if kind == 'workdir':
    return value.__doc__.split(' (')[0]
  return 'multi-process flags: ' + ', '.join(f'--{k}={v}' for k, v in value.items())


def _cli_args(value):
  """A bad command line: ``value`` after vanilla_cifar's config, unless it names its own."""
  return value if value[0].startswith('--config=') else ['--config=configs/vanilla_cifar.py',
                                                         *value]


def _no_compile(*args, **kwargs):
  raise AssertionError('the bad input was not rejected before compiling')


@pytest.fixture(scope='module', autouse=True)
def _write_bad_inputs_table():
  """Writes docs/bad_inputs.md once every row of BAD_INPUTS ran (and passed) in this session."""
  yield
  if set(_TABLE) != {row[0] for row in BAD_INPUTS}:
    return
  lines = ['# Bad input and the message it produces', '',
           'Generated by `tests/test_reliability.py` (each row is a test); 8 simulated devices.',
           'The command line prints the message without a traceback; `--verbosity=1` adds it to '
           'the log.', '', '| Input | Message |', '|---|---|']
  for case_id, *_ in BAD_INPUTS:
    if _TABLE[case_id] is not None:
      tried, message = _TABLE[case_id]
      message = message.replace('|', r'\|')
      lines.append(f'| `{tried}` | {message} |')
  (ROOT / 'docs').mkdir(exist_ok=True)
  (ROOT / 'docs' / 'bad_inputs.md').write_text('\n'.join(lines) + '\n')


def test_a_config_file_loads_when_the_command_runs_outside_the_repository(tmp_path):
  """Config files import their package (``from configs import default``); main makes it
  importable from any directory, so the config loads and its (bad) model is what fails."""
  env = _env()
  env['PYTHONPATH'] = os.pathsep.join(   # without the repository root
      p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
      if p and os.path.realpath(p) != os.path.realpath(ROOT))
  result = subprocess.run(
      _main(f'--config={ROOT / "configs" / "vanilla_cifar.py"}', f'--workdir={tmp_path}/run',
            '--config.model=nonexistent'), cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error: Unknown model 'nonexistent'" in result.stderr


@pytest.mark.parametrize('case_id, kind, value, expected', BAD_INPUTS,
                         ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_fails_early_with_a_message(case_id, kind, value, expected, tmp_path,
                                              monkeypatch):
  tried = _describe(kind, value)
  if kind == 'config' and value.get('method', 'vanilla') not in methods.names():
    _TABLE[case_id] = None
    pytest.skip(f'method {value["method"]} is not implemented (yet)')
  if kind == 'cli':
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = _cli(*_cli_args(value), f'--workdir={tmp_path}/run', timeout=600)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 2, result.stderr[-2000:]
    # "within seconds": CPU seconds of the child (wall time depends on the machine's load)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    assert cpu < 30, f'took {cpu:.0f} CPU seconds to reject'
    errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
    assert errors, result.stderr[-2000:]
    message = errors[-1][len('error: '):] + ' (exit status 2)'
  elif kind == 'distributed':
    with pytest.raises(ValueError) as e:
      parallel.distributed_kwargs(**value)
    message = str(e.value)
  else:
    monkeypatch.setattr(train, 'make_train_step', _no_compile)
    config = tiny_config()
    if kind == 'config':
      config = tiny_config(**value)
    elif kind == 'folder':
      config = tiny_config(dataset=_build_folder(value, tmp_path), batch_size=8,
                           eval_batch_size=8)
    elif kind == 'workdir':
      value(tmp_path / 'run')
    if kind != 'workdir':
      monkeypatch.setattr(train, 'create_train_state', _no_compile)  # nothing compiled at all
    with pytest.raises(ValueError) as e:
      train.train_and_evaluate(config, str(tmp_path / 'run'))
    message = str(e.value)
    if value is _other_model_checkpoint:  # config.json still describes the checkpoint beside it
      assert json.loads((tmp_path / 'run' / 'config.json').read_text())['model'] == 'resnet8'
  assert re.search(expected, message), message
  _TABLE[case_id] = (tried, message.replace(str(tmp_path), '<tmp>').replace(
      str(pathlib.Path(tmp_path).resolve()), '<tmp>'))


def test_a_write_cut_short_leaves_the_previous_file_whole(tmp_path, monkeypatch):
  # config.json / results.json: a kill mid-write used to leave a truncated file, which switched
  # off the config comparison (config.json) or the carried-over totals (results.json).
  path = tmp_path / 'config.json'
  files.write_text_atomic(path, '{"model": "resnet8"}')
  real_write = type(files.as_path(path)).write_text

  def killed_mid_write(self, text, *args, **kwargs):
    real_write(self, text[:5], *args, **kwargs)
    raise OSError(28, 'No space left on device')  # or a kill: the write stops half-way

  monkeypatch.setattr(type(files.as_path(path)), 'write_text', killed_mid_write)
  with pytest.raises(OSError):
    files.write_text_atomic(path, '{"model": "resnet_tiny"}')
  assert json.loads(path.read_text()) == {'model': 'resnet8'}


def test_a_uri_workdir_is_used_as_it_is(tmp_path, monkeypatch):
  # A gs:// workdir must reach the file layer unchanged: os.path.abspath would turn it into the
  # local directory <cwd>/gs:/bucket/run and the run would silently write to the VM's disk.
  # Here gs://bucket/... is served from a local folder, and the working directory is watched.
  assert str(files.as_path('gs://bucket/run')) == 'gs://bucket/run'
  assert str(files.as_path('gs://bucket/run') / 'checkpoints') == 'gs://bucket/run/checkpoints'
  monkeypatch.chdir(tmp_path)
  assert str(files.as_path('rel/run')) == str(tmp_path / 'rel' / 'run')
  bucket, real_as_path = tmp_path / 'bucket', files.as_path

  def served_locally(path):
    path = str(path)
    return real_as_path(bucket / path[len('gs://bucket/'):] if path.startswith('gs://') else path)

  monkeypatch.setattr(files, 'as_path', served_locally)
  (tmp_path / 'cwd').mkdir()
  monkeypatch.chdir(tmp_path / 'cwd')
  config = tiny_config(num_epochs=0.25, eval_every_epochs=0.25)
  _, results = train.train_and_evaluate(config, 'gs://bucket/run')
  run = bucket / 'run'
  assert json.loads((run / 'results.json').read_text())['step'] == results['step'] > 0
  assert (run / 'config.json').exists() and (run / 'metrics.jsonl').exists()
  assert checkpointing.load_arrays('gs://bucket/run')[1] == results['step']
  from jaxrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  loaded = runner.load_run('gs://bucket/run')
  runner.run_suites(loaded, ['clean', 'corruptions'], out_dir='gs://bucket/run/eval',
                    max_examples=32, corruption_names=['contrast'], corruption_severities=(3,))
  assert {p.name for p in (run / 'eval').iterdir()} == {
      'report.json', 'summary.md', 'corruptions.csv', 'corruptions_bar.png',
      'corruptions_severity.png'}
  assert list((tmp_path / 'cwd').iterdir()) == []  # nothing written under gs:/ locally


def test_init_from_a_run_it_cannot_use_is_an_error(tmp_path):
  # A source run whose parameter names match nothing of this model would leave every weight at
  # its random initialisation while the log said "initialised from": an error instead.
  import flax  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class State:
    params: dict
    batch_stats: dict

  _saved(tmp_path / 'src', steps=(1,))  # params {'w', 'b'}, statistics of 'main'
  other_model = State(params={'conv': {'kernel': jnp.zeros((3, 3))}},
                      batch_stats={'main': {'mean': jnp.zeros(3)}})
  with pytest.raises(ValueError, match=r"init_from='.*src': none of its parameters has a name of "
                                       r"this model \(e.g. it has \['b', 'w'\], this model "
                                       r"\['conv'\]\)"):
    train._init_from(str(tmp_path / 'src'), other_model)
  same_model = State(params={'w': jnp.zeros(4), 'b': jnp.zeros(2)},
                     batch_stats={'main': {'mean': jnp.zeros(3)}})
  merged = train._init_from(str(tmp_path / 'src'), same_model)
  assert float(merged.params['w'][0]) == 1.0 and float(merged.batch_stats['main']['mean'][0]) == 1.0
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'aux_only'))
  ckpt.save(1, _state(1.0, domains=('aux',)))
  ckpt.close()
  with pytest.raises(ValueError,
                     match=r"it has no 'main' BatchNorm statistics \(it has \['aux'\]\)"):
    train._init_from(str(tmp_path / 'aux_only'), same_model)


def test_resuming_past_the_configured_steps_is_an_error(tmp_path):
  # Lowering num_epochs below a run's checkpoint must not relabel that state as an earlier step.
  _, results = train.train_and_evaluate(tiny_config(num_epochs=0.5), str(tmp_path))
  config_before = (tmp_path / 'config.json').read_text()
  with pytest.raises(ValueError, match=rf"checkpoint in .* is at step {results['step']}, past the "
                                       r"\d+ steps of this config \(num_epochs=0.25\)"):
    train.train_and_evaluate(tiny_config(num_epochs=0.25), str(tmp_path))
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  assert ckpt.all_steps()[-1] == results['step']
  ckpt.close()
  assert (tmp_path / 'config.json').read_text() == config_before
  _, again = train.train_and_evaluate(tiny_config(num_epochs=0.5), str(tmp_path))  # finished
  assert again['step'] == results['step']
