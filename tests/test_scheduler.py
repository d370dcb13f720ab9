"""The stage scheduler on fake stages and fake GPUs: GPU slots, all-GPU stages, the skip rule,
a failure stopping its dependants only, and stopping the driver (no TensorFlow, seconds).

A fake stage is a tiny `python -c` program that records what it saw (CUDA_VISIBLE_DEVICES,
the thread split, its start and end times) in a JSON file, which is also its output.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rce.pipeline import scheduler
from tests.helpers import REPO_ROOT, describe, wait_until_gone

# argv: the record's path, seconds to sleep, exit code.
FAKE = ('import json, os, sys, time\n'
        'start = time.time()\n'
        'time.sleep(float(sys.argv[2]))\n'
        'seen = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", '
        '"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}\n'
        'with open(sys.argv[1], "w") as f:\n'
        '  json.dump(dict(seen, start=start, end=time.time()), f)\n'
        'sys.exit(int(sys.argv[3]))\n')


def _read(path):
  with open(path) as f:
    return json.load(f)


def fake(tmp_path, name, deps=(), seconds=0.0, rc=0, all_gpus=False, given='v1', output=None):
  """A fake stage writing {tmp_path}/{name}.json; its inputs: its deps' outputs and `given`."""
  path = str(tmp_path / (name + '.json'))
  return scheduler.Stage(
      name, tuple(deps), lambda: [sys.executable, '-c', FAKE, path, str(seconds), str(rc)],
      lambda outputs: dict(outputs, given=given), output or (lambda: _read(path)),
      all_gpus=all_gpus)


def runner(tmp_path, stages, jobs=1, gpus=0):
  return scheduler.Scheduler(stages, str(tmp_path / 'stages.json'), str(tmp_path / 'logs'),
                             str(tmp_path), jobs=jobs, gpus=gpus)


def _overlap(a, b):
  return a['start'] < b['end'] and b['start'] < a['end']


@pytest.mark.parametrize('jobs', [2, 3])
def test_each_stage_has_a_gpu_of_its_own_and_an_all_gpu_stage_has_them_all(
    tmp_path, monkeypatch, jobs):
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1')  # what an all-GPU stage must keep
  names = ['one_%d' % i for i in range(6)]
  stages = [fake(tmp_path, n, seconds=0.4) for n in names[:3]]
  stages.append(fake(tmp_path, 'all', seconds=0.4, all_gpus=True))
  stages += [fake(tmp_path, n, seconds=0.4) for n in names[3:]]
  runner(tmp_path, stages, jobs=jobs, gpus=2).run()
  seen = {s.name: _read(str(tmp_path / (s.name + '.json'))) for s in stages}
  for name in names:
    assert seen[name]['CUDA_VISIBLE_DEVICES'] in ('0', '1'), (name, seen[name])
    assert seen[name]['TF_NUM_INTRAOP_THREADS'] is None  # GPUs: no thread split
  assert seen['all']['CUDA_VISIBLE_DEVICES'] == '0,1'  # untouched
  gpus = {n: set(r['CUDA_VISIBLE_DEVICES'].split(',')) for n, r in seen.items()}
  for a in seen:
    for b in seen:
      if a < b and _overlap(seen[a], seen[b]):
        assert not gpus[a] & gpus[b], ('%s and %s shared a GPU' % (a, b), seen[a], seen[b])
  assert any(_overlap(seen[a], seen[b]) for a in names for b in names if a < b), seen


def test_on_the_cpu_each_stage_gets_its_share_of_the_cores_but_all_gpu_ones(
    tmp_path, monkeypatch):
  monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
  monkeypatch.delenv('TF_NUM_INTRAOP_THREADS', raising=False)
  stages = [fake(tmp_path, 'train', all_gpus=True), fake(tmp_path, 'attack')]
  runner(tmp_path, stages, jobs=2, gpus=0).run()
  train, attack = (_read(str(tmp_path / (n + '.json'))) for n in ('train', 'attack'))
  assert train['CUDA_VISIBLE_DEVICES'] is None and train['TF_NUM_INTRAOP_THREADS'] is None
  assert attack['CUDA_VISIBLE_DEVICES'] is None
  assert attack['TF_NUM_INTRAOP_THREADS'] == str(max(1, (os.cpu_count() or 1) // 2))
  assert attack['TF_NUM_INTEROP_THREADS'] == '1'


@pytest.mark.parametrize('jobs', [1, 2])
def test_a_failed_stage_stops_its_dependants_only(tmp_path, capsys, jobs):
  stages = [fake(tmp_path, 'bad', rc=3),
            fake(tmp_path, 'needs_bad', deps=['bad']),
            fake(tmp_path, 'hollow', output=lambda: None),  # exit 0, but no output
            fake(tmp_path, 'independent', seconds=0.5),
            fake(tmp_path, 'needs_needs_bad', deps=['needs_bad', 'independent']),
            fake(tmp_path, 'after_independent', deps=['independent'])]
  sched = runner(tmp_path, stages, jobs=jobs)
  with pytest.raises(scheduler.StageError) as raised:
    sched.run()
  message = str(raised.value)
  assert 'stage bad failed (exit 3)' in message, message
  assert 'stage hollow failed (exit 0, output incomplete)' in message, message
  assert message.endswith('not run, as they need a failed stage: needs_bad, needs_needs_bad')
  for name in ('independent', 'after_independent'):  # ran to completion and recorded
    assert os.path.exists(tmp_path / (name + '.json')), name
    assert name in sched.records
  assert not os.path.exists(tmp_path / 'needs_bad.json')
  assert not os.path.exists(tmp_path / 'needs_needs_bad.json')
  with open(tmp_path / 'stages.json') as f:
    assert sorted(json.load(f)) == ['after_independent', 'independent']
  stdout = capsys.readouterr().out
  assert '[fail] bad (exit 3), log %s; not run, as they need it: needs_bad, needs_needs_bad' % (
      tmp_path / 'logs' / 'bad.log') in stdout, stdout
  assert '[run ] needs_bad' not in stdout and '[done] after_independent in' in stdout


def test_an_unchanged_stage_is_skipped_and_a_changed_key_or_output_reruns(tmp_path, capsys):
  def graph(given='v1'):
    return [fake(tmp_path, 'a', given=given), fake(tmp_path, 'b', deps=['a'])]

  runner(tmp_path, graph()).run()
  assert capsys.readouterr().out.count('[run ]') == 2
  first = _read(str(tmp_path / 'stages.json'))
  assert first['b']['key']['inputs'] == {'a': first['a']['output'], 'given': 'v1'}
  assert first['a']['command'].startswith('python -c ')

  again = runner(tmp_path, graph())
  again.run()
  stdout = capsys.readouterr().out
  assert '[skip] a (complete, inputs unchanged)' in stdout and '[skip] b' in stdout, stdout
  assert '[run ]' not in stdout
  assert again.records['a']['skipped'] and again.records['b']['output'] == first['b']['output']

  runner(tmp_path, graph(given='v2')).run()  # a's key changed; b reads a's new output
  stdout = capsys.readouterr().out
  assert '[redo] a: its inputs changed since it last ran' in stdout, stdout
  assert '[redo] b: its inputs changed since it last ran' in stdout, stdout

  os.remove(tmp_path / 'b.json')
  runner(tmp_path, graph(given='v2')).run()
  stdout = capsys.readouterr().out
  assert '[skip] a' in stdout and '[redo] b: its output is gone or changed' in stdout, stdout


def test_a_graph_that_cannot_run_is_refused(tmp_path):
  """An undeclared dependency before anything runs; a cycle once the rest has run."""
  stages = [fake(tmp_path, 'a'), fake(tmp_path, 'b', deps=['nowhere'])]
  with pytest.raises(scheduler.StageError, match='stages b wait on stages that are not'):
    runner(tmp_path, stages).run()
  assert not os.path.exists(tmp_path / 'a.json')
  with pytest.raises(scheduler.StageError, match='stages b cannot start: .* a cycle'):
    runner(tmp_path, [fake(tmp_path, 'a'), fake(tmp_path, 'b', deps=['b'])]).run()
  assert os.path.exists(tmp_path / 'a.json')  # what could run did


# A driver in its own process: one long stage that writes its pid, SIGTERM as SystemExit.
DRIVER = '''
import signal, sys
from rce.pipeline import scheduler
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
# Ctrl-C raises KeyboardInterrupt even when the test was started in the background, where
# the shell hands its children SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
out, pid_file = sys.argv[1], sys.argv[2]
code = 'import os, sys, time; open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(120)'
stage = scheduler.Stage('long', (), lambda: [sys.executable, '-c', code, pid_file],
                        lambda outputs: {}, lambda: None)
scheduler.Scheduler([stage], out + '/stages.json', out + '/logs', out).run()
'''




@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc; PDEATHSIG')
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_driver_stops_its_running_stage(tmp_path, signum):
  """SIGTERM (SystemExit), Ctrl-C (KeyboardInterrupt) and SIGKILL (PR_SET_PDEATHSIG)."""
  pid_file = tmp_path / 'stage.pid'
  driver = subprocess.Popen([sys.executable, '-c', DRIVER, str(tmp_path), str(pid_file)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  try:
    deadline = time.time() + 60
    while time.time() < deadline and driver.poll() is None and not (
        pid_file.exists() and pid_file.read_text()):
      time.sleep(0.05)
    assert driver.poll() is None, describe(driver)
    stage_pid = int(pid_file.read_text())
    driver.send_signal(signum)  # the driver alone, not its process group
    driver.communicate(timeout=30)
  finally:
    if driver.poll() is None:
      driver.kill()
      driver.communicate()
  assert driver.returncode != 0
  assert not wait_until_gone([stage_pid], 15), 'the running stage outlived the driver'
