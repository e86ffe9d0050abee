"""Multi-process data parallelism on loopback: 2 processes x 2 CPU devices == 1 process x 4.

``scripts/launch_local.sh 2 ...`` starts two ``python -m jaxrobust.main`` processes coordinated
by ``jax.distributed`` on 127.0.0.1 (gloo collectives between them). Each process feeds its half
of every global batch; with synchronised BatchNorm the 4-device step is the same computation
whichever process owns the devices, so parameters agree with the single-process run to float
tolerance (the reduction order of the cross-process all-reduce may differ).
"""

import json
import os
import re
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from configs import quickstart
from jaxrobust import checkpointing, parallel, train
from tests.conftest import ROOT

LAUNCH = str(ROOT / 'scripts' / 'launch_local.sh')
# resnet_tiny on digits, global batch 16 (4 per device), 4 steps, synchronised BN.
OVERRIDES = {'model': 'resnet_tiny', 'batch_size': 16, 'eval_batch_size': 64,
             'max_eval_examples': 64, 'num_epochs': 0.05, 'sync_batch_stats': True,
             'lr_schedule': 'constant', 'learning_rate': 0.05, 'checkpoint_every_steps': 2,
             'log_every_steps': 1, 'eval_every_epochs': 0.0}
STEPS = int(0.05 * (1437 // 16))


def _env() -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if not f.startswith('--xla_force_host_platform_device_count'))
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', JAXROBUST_CPU_DEVICES='2',
             PYTHONPATH=os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]))
  for key in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(key, None)
  return env


def _launch(num_processes: int, *args, timeout=900) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', LAUNCH, str(num_processes), *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _flags(overrides: dict) -> list:
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
  workdir = tmp_path / 'mp'
  result = _launch(2, '--config=configs/quickstart.py', f'--workdir={workdir}',
                   *_flags(OVERRIDES))
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-4000:]
  for p in (0, 1):  # both processes saw the global 4-device mesh and trained every step
    assert re.search(rf'\[p{p}\] .*JAX \S+, 2 processes, devices: \[CpuDevice\(id=0\), '
                     r'CpuDevice\(id=1\), CpuDevice\(id=\d+\), CpuDevice\(id=\d+\)\]', out), out
    assert re.search(rf'\[p{p}\] .*step {STEPS}/{STEPS} ', out), out[-4000:]
  # orbax wrote the periodic and final checkpoints together (every process called save)
  assert sorted(int(s) for s in os.listdir(workdir / 'checkpoints')) == [2, 4]
  multi, step = checkpointing.load_arrays(str(workdir))
  assert step == STEPS and int(multi['step']) == STEPS

  config = quickstart.get_config()
  for k, v in OVERRIDES.items():
    setattr(config, k, v)
  mesh = parallel.make_mesh(jax.devices()[:4])
  state, _ = train.train_and_evaluate(config, str(tmp_path / 'single'), mesh=mesh)
  single = parallel.to_host({'params': state.params, 'batch_stats': state.batch_stats})
  chex.assert_trees_all_close({'params': multi['params'], 'batch_stats': multi['batch_stats']},
                              single, rtol=1e-5, atol=1e-6)
  # the parameters kept moving: the comparison is not between two barely trained states
  at_2 = checkpointing.load_arrays(str(tmp_path / 'single'), step=2)[0]['params']
  assert not np.allclose(at_2['classifier']['kernel'], single['params']['classifier']['kernel'])

  losses = {}
  for run in ('mp', 'single'):
    lines = [json.loads(l) for l in open(tmp_path / run / 'metrics.jsonl')]
    losses[run] = [l['loss'] for l in lines if l['kind'] == 'train']
  assert len(losses['mp']) == STEPS
  np.testing.assert_allclose(losses['mp'], losses['single'], rtol=1e-5)

  # The same command again: both processes restore the shared checkpoint, agree that the run
  # is finished and evaluated, and stop without touching its results or log.
  results, log = (workdir / 'results.json').read_text(), (workdir / 'metrics.jsonl').read_text()
  again = _launch(2, '--config=configs/quickstart.py', f'--workdir={workdir}',
                  *_flags(OVERRIDES))
  out = again.stdout + again.stderr
  assert again.returncode == 0, out[-4000:]
  for p in (0, 1):
    assert re.search(rf'\[p{p}\] .*already holds this run, trained and evaluated \(step '
                     rf'{STEPS}\); nothing to do\.', out), out
  assert (workdir / 'results.json').read_text() == results
  assert (workdir / 'metrics.jsonl').read_text() == log


def test_launcher_propagates_a_failure_and_checks_its_arguments(tmp_path):
  usage = subprocess.run(['bash', LAUNCH], cwd=ROOT, env=_env(), capture_output=True, text=True)
  assert usage.returncode == 2 and 'usage:' in usage.stderr
  bad = _launch(2, '--config=configs/quickstart.py', f'--workdir={tmp_path}',
                '--config.model=nonexistent', timeout=600)
  assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-2000:]
  for p in (0, 1):
    assert re.search(rf"\[p{p}\] error: Unknown model 'nonexistent'\. Valid models:", bad.stdout)


FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python in launch_local.sh: reports its arguments, then idles until signalled.
id=; for a in "$@"; do case $a in --process_id=*) id=${a#*=};; esac; done
# The trap comes before "start": the test signals as soon as it reads "start" (a loaded machine
# could otherwise deliver SIGTERM before the trap exists, and the default action kills us).
if [[ "$id" == "${FAKE_IGNORE_TERM:-}" ]]; then trap '' TERM; else trap 'echo "TERM $id"; exit 0' TERM; fi
echo "start $id bind=$JAX_COORDINATOR_BIND_ADDRESS xla=$XLA_FLAGS args=$*"
if [[ "$id" == "${FAKE_FAIL:-}" ]]; then sleep 0.3; echo "fail $id"; exit 3; fi
for _ in $(seq 3000); do sleep 0.1; done
"""


# Stands in for python where SIGINT matters: like jaxrobust.main's PreemptionHandler it installs
# its own handler (a bash trap cannot undo the SIGINT-ignore of a background process).
FAKE_PYTHON_SIGINT = r"""#!/usr/bin/env python3
import signal, sys, time
i = [a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1]
def on_int(*_):
  print(f'INT {i}', flush=True)
  time.sleep(1)  # checkpointing; a second SIGINT now would print INT again
  print(f'saved {i}', flush=True)
  sys.exit(0)
signal.signal(signal.SIGINT, on_int)
print(f'start {i}', flush=True)
while True:
  time.sleep(0.1)
"""


# Runs the launcher as a terminal runs a foreground job: SIGINT at its default action (a test
# worker may ignore it, and bash cannot trap a signal ignored on entry), in a process group of
# its own (start_new_session), so that os.killpg plays Ctrl-C.
AS_A_TERMINAL_JOB = [sys.executable, '-c', 'import os, signal, sys; '
                     'signal.signal(signal.SIGINT, signal.SIG_DFL); '
                     'os.execvp(sys.argv[1], sys.argv[1:])']


def _fake_launch(tmp_path, *, wait_for_start=True, fake_python=FAKE_PYTHON,
                 terminal_job=False, **env):
  fake = tmp_path / 'fake_python'
  fake.write_text(fake_python)
  fake.chmod(0o755)
  full_env = {**_env(), 'PYTHON': str(fake), 'JAXROBUST_PORT': '12345', **env}
  proc = subprocess.Popen((AS_A_TERMINAL_JOB if terminal_job else []) +
                          ['bash', LAUNCH, '2', '--workdir=/w'], cwd=ROOT, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=terminal_job)
  lines = []
  while wait_for_start and sum(l.startswith(('[p0] start', '[p1] start')) for l in lines) < 2:
    lines.append(proc.stdout.readline())
  return proc, lines


def test_launcher_starts_loopback_processes_and_forwards_sigterm(tmp_path):
  proc, lines = _fake_launch(tmp_path)
  proc.send_signal(signal.SIGTERM)  # preemption of the whole job
  out = ''.join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  for p in (0, 1):
    assert re.search(rf'\[p{p}\] start {p} bind=127\.0\.0\.1:12345 xla=.*'
                     r'--xla_force_host_platform_device_count=2 args=-m jaxrobust\.main '
                     rf'--workdir=/w --coordinator_address=127\.0\.0\.1:12345 '
                     rf'--num_processes=2 --process_id={p}$', out, re.M), out
    assert f'[p{p}] TERM {p}' in out


def test_ctrl_c_reaches_every_process_once_and_their_output_to_the_end(tmp_path):
  # Ctrl-C signals the terminal's whole foreground process group. The processes must get one
  # SIGINT (a second one stops them without a checkpoint), and the prefixing seds must live on.
  proc, lines = _fake_launch(tmp_path, fake_python=FAKE_PYTHON_SIGINT, terminal_job=True)
  os.killpg(proc.pid, signal.SIGINT)
  out = ''.join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  for p in (0, 1):
    assert out.count(f'[p{p}] INT {p}') == 1 and f'[p{p}] saved {p}' in out, out


def test_launcher_returns_when_every_process_dies_at_once(tmp_path):
  # Both processes killed by the forwarded SIGTERM in the same instant: the second one is reaped
  # while the first is handled, and the launcher used to re-wait for it for ever at full CPU.
  dies_on_term = '#!/usr/bin/env bash\necho start\nexec sleep 300\n'
  proc, lines = _fake_launch(tmp_path, fake_python=dies_on_term)
  try:
    proc.send_signal(signal.SIGTERM)
    out = ''.join(lines) + proc.communicate(timeout=60)[0]
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out  # returned at all, with the status


def test_launcher_stops_the_others_when_one_fails(tmp_path):
  proc, _ = _fake_launch(tmp_path, wait_for_start=False, FAKE_FAIL='1')
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 3, out
  assert '[p1] fail 1' in out and '[p0] TERM 0' in out and 'exited with status 3' in out
  # A process that ignores SIGTERM (e.g. stuck in a collective) is killed after the grace period:
  # left alone it would run 300 s, and with the default grace (30 s) the launcher would still be
  # waiting when the 25 s deadline expires (a hang guard, not a speed target).
  proc, _ = _fake_launch(tmp_path, wait_for_start=False, FAKE_FAIL='1', FAKE_IGNORE_TERM='0',
                         JAXROBUST_KILL_GRACE='1')
  try:
    out = proc.communicate(timeout=25)[0]
  finally:
    proc.kill()
  assert proc.returncode == 3, out
  assert 'TERM 0' not in out


def test_distributed_arguments_from_flags_and_environment(monkeypatch):
  for key in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
              'JAX_COORDINATOR_BIND_ADDRESS', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(key, raising=False)
  assert parallel.distributed_kwargs() is None                      # a single process
  assert parallel.distributed_kwargs(num_processes=1) is None
  # loopback coordinators bind to loopback only (JAX would bind every interface)
  assert parallel.distributed_kwargs('127.0.0.1:5000', 2, 1) == {
      'coordinator_address': '127.0.0.1:5000', 'num_processes': 2, 'process_id': 1,
      'coordinator_bind_address': '127.0.0.1:5000'}
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.2:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('JAX_PROCESS_ID', '3')
  assert parallel.distributed_kwargs() == {'coordinator_address': '10.0.0.2:1234',
                                           'num_processes': 4, 'process_id': 3}
  assert parallel.distributed_kwargs(process_id=0)['process_id'] == 0  # flags win
  monkeypatch.setenv('JAX_PROCESS_ID', 'three')
  with pytest.raises(ValueError, match=r"process_id='three' must be an integer"):
    parallel.distributed_kwargs()
  monkeypatch.setenv('JAX_PROCESS_ID', '3')
  with pytest.raises(ValueError, match=r"coordinator_address='nohost' must be host:port"):
    parallel.distributed_kwargs(coordinator_address='nohost')
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS')
  monkeypatch.delenv('JAX_NUM_PROCESSES')
  monkeypatch.delenv('JAX_PROCESS_ID')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'host-0,host-1')  # a pod: JAX finds the rest
  assert parallel.distributed_kwargs() == {}
  monkeypatch.delenv('TPU_WORKER_HOSTNAMES')
  assert not parallel._on_cloud_tpu_vm()  # this CPU machine
  # a Cloud TPU VM launched with gcloud --worker=all: no variable names the hosts
  monkeypatch.setattr(parallel, '_on_cloud_tpu_vm', lambda: True)
  assert parallel.distributed_kwargs() == {}
