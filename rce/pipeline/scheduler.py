"""Runs a graph of command-line stages, several at once, skipping what is already done.

It knows nothing of what the stages compute. A stage is a name, the stages it reads, its
command, the identities of its inputs and a function giving the identity of its output. Each
stage's record in stages.json holds its key (the command line and the identities of its
inputs: data checksums, upstream output identities) and its output's identity; a stage is
skipped only when the key it would run with now equals the recorded one and its output still
has the recorded identity, so a changed input reruns exactly the stages it affects.

With GPUs and several jobs each stage sees one GPU of its own (CUDA_VISIBLE_DEVICES) and an
all-GPU stage holds every GPU, so no two running stages share one; on the CPU each stage gets
its share of the cores. A failed stage stops the stages that depend on it, the others run to
the end; stopping the driver (an exception, a signal turned into one, even SIGKILL on Linux)
stops every running stage.
"""
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from rce.results import io_utils


class StageError(RuntimeError):
  """Stages failed (or the graph cannot run); the message names them."""


# A stage of the graph, called on once every stage of `deps` is done:
#   command() -> the argv of its process; inputs(outputs) -> the JSON-able identities of what
#   it reads (`outputs`: {dep: output identity} of its deps), with the command its key;
#   output() -> the identity of what it wrote, None (or ValueError, KeyError, OSError) when
#   missing or incomplete; prepare() (or None) runs just before the command; all_gpus: it
#   uses the whole machine (every GPU, TensorFlow's default threads), as training does.
Stage = collections.namedtuple(
    'Stage', ['name', 'deps', 'command', 'inputs', 'output', 'prepare', 'all_gpus'],
    defaults=(None, False))


def _die_with_parent():
  """In the child, before exec: get SIGTERM when the driver dies, even by SIGKILL (Linux)."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _stop(proc):
  """Terminates a running stage, and kills it if it does not go within 10 s."""
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _as_json(value):
  """`value` as it reads back from stages.json (tuples become lists), for comparisons."""
  return json.loads(json.dumps(value))


def _display(cmd):
  """The command line as shown and recorded; the interpreter as `python`, wherever it is."""
  shown = ['python'] + list(cmd[1:]) if cmd[0] == sys.executable else list(cmd)
  return ' '.join(shlex.quote(c) for c in shown)


def _identity(output):
  """The stage output's identity, or None when it is missing, incomplete or corrupt."""
  try:
    return _as_json(output())
  except (ValueError, KeyError, OSError):
    return None


class Scheduler(object):
  """Runs `stages` (a list of Stage, in report order) with their records in `state_path`.

  Each stage runs in `cwd` with its output in `{log_dir}/{name}.log`; up to `jobs` at once;
  `gpus`: the number of GPUs to share out (0: the CPU).
  """

  def __init__(self, stages, state_path, log_dir, cwd, jobs=1, gpus=0):
    self.stages = list(stages)
    self.state_path, self.log_dir, self.cwd = state_path, log_dir, cwd
    self.jobs, self.gpus = jobs, gpus
    io_utils.makedirs(log_dir)
    self.state = {}
    if os.path.exists(state_path):
      with open(state_path) as f:
        self.state = json.load(f)
    self.earlier_wall = {n: r['wall_s'] for n, r in self.state.items() if 'wall_s' in r}

  @property
  def records(self):
    """{stage: record} of stages.json: command, key, output, wall_s (skipped: not rerun)."""
    return self.state

  def _check(self):
    """StageError for a name declared twice or a dependency on no declared stage."""
    names = [s.name for s in self.stages]
    if len(set(names)) != len(names):
      raise StageError('stages declared twice: %s' % ', '.join(
          sorted({n for n in names if names.count(n) > 1})))
    undeclared = [s.name for s in self.stages if not set(s.deps) <= set(names)]
    if undeclared:
      raise StageError('stages %s wait on stages that are not declared' % ', '.join(undeclared))

  def _gpus_for(self, stage, free):
    """The GPUs `stage` would hold now ([] when they are not shared out), or None if busy."""
    if self.jobs == 1 or not self.gpus:
      return []
    if stage.all_gpus:
      return list(free) if len(free) == self.gpus else None
    return free[:1] or None

  def _env(self, stage, gpus):
    """The environment of a stage: with several jobs, its share of the machine.

    On GPUs each stage but the all-GPU ones sees its GPU (CUDA_VISIBLE_DEVICES; an all-GPU
    stage sees them all); on the CPU each gets cores / jobs TensorFlow threads but the
    all-GPU ones, which keep TensorFlow's default: training's float reductions are split by
    thread, and over thousands of steps another split gives other weights, so --jobs would
    change the models and every table.
    """
    env = dict(os.environ)
    if self.jobs > 1 and not stage.all_gpus:
      if self.gpus:
        env['CUDA_VISIBLE_DEVICES'] = str(gpus[0])
      else:
        env['TF_NUM_INTRAOP_THREADS'] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        env['TF_NUM_INTEROP_THREADS'] = '1'
    return env

  def _start(self, stage, outputs, gpus):
    """Starts a stage's command, or returns None when it can be skipped."""
    cmd = stage.command()
    display = _display(cmd)
    key = _as_json({'command': display, 'inputs': stage.inputs(outputs)})
    name = stage.name
    record = self.state.get(name)
    if record and record.get('key') == key and _identity(stage.output) == record['output']:
      print('[skip] %s (complete, inputs unchanged)' % name, flush=True)
      record['skipped'] = True
      return None
    if record:
      why = 'its inputs changed' if record.get('key') != key else 'its output is gone or changed'
      print('[redo] %s: %s since it last ran' % (name, why), flush=True)
    if stage.prepare:
      stage.prepare()
    print('[run ] %s: %s' % (name, display), flush=True)
    self.state.pop(name, None)
    io_utils.atomic_write_json(self.state_path, self.state)
    log_path = os.path.join(self.log_dir, name + '.log')
    log = open(log_path, 'w')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                            env=self._env(stage, gpus), preexec_fn=_die_with_parent)
    return dict(proc=proc, log=log, log_path=log_path, start=time.time(), display=display,
                key=key, output=stage.output, gpus=gpus)

  def _finish(self, name, run):
    """Records a finished stage; returns the failure's text if it failed or is incomplete."""
    run['log'].close()
    rc, wall = run['proc'].returncode, time.time() - run['start']
    identity = _identity(run['output']) if rc == 0 else None
    with open(run['log_path']) as f:
      text = f.read()
    if identity is None:
      return 'stage %s failed (exit %d%s); log %s:\n%s' % (
          name, rc, ', output incomplete' if rc == 0 else '', run['log_path'],
          ''.join(text.splitlines(True)[-15:]))
    self.state[name] = {'command': run['display'], 'key': run['key'], 'output': identity,
                        'wall_s': round(wall, 1), 'output_tail': text[-2000:]}
    io_utils.atomic_write_json(self.state_path, self.state)
    print('[done] %s in %.1f s' % (name, wall), flush=True)
    return None

  def _progress(self, done, running, pending):
    """One line: stages done, running and left, and an ETA from earlier runs' stage times."""
    left = [s.name for s in pending] + list(running)
    known = [self.earlier_wall[n] for n in left if n in self.earlier_wall]
    if not left:
      eta = ''
    elif len(known) == len(left):
      eta = '; ETA about %.0f s (from earlier runs\' stage times)' % (sum(known) / self.jobs)
    else:
      eta = '; ETA unknown'
    print('[....] %d of %d stages done, running: %s%s' % (
        len(done), len(self.stages), ', '.join(running) or '-', eta), flush=True)

  @staticmethod
  def _drop_dependants(name, pending):
    """Removes from `pending` every stage that reads `name`, directly or not; their names."""
    gone, dropped = {name}, []
    while any(gone.intersection(s.deps) for s in pending):
      for stage in [s for s in pending if gone.intersection(s.deps)]:
        pending.remove(stage)
        gone.add(stage.name)
        dropped.append(stage.name)
    return dropped

  def run(self):
    """Runs the stages, up to `jobs` at once, each when its dependencies are done.

    A failed stage stops only the stages that depend on it; once the others are done,
    StageError names every failed stage (with its log's end) and the stages not run because
    of them. Any other exception (Ctrl-C, a signal turned into SystemExit) stops every
    running stage and propagates.
    """
    self._check()
    pending, running, done = list(self.stages), {}, set()
    failures, blocked = [], []
    free = list(range(self.gpus))
    report = False
    try:
      while pending or running:
        started = True
        while started:  # start (or skip) every stage that is ready, up to `jobs` running
          started = False
          for stage in list(pending):
            if len(running) >= self.jobs:
              break
            if not all(d in done for d in stage.deps):
              continue
            gpus = self._gpus_for(stage, free)
            if gpus is None:  # it waits for its GPUs, and the stages after it wait behind it
              break
            pending.remove(stage)
            run = self._start(stage, {d: self.state[d]['output'] for d in stage.deps}, gpus)
            started = True
            if run is None:
              done.add(stage.name)
            else:
              running[stage.name] = run
              free = [g for g in free if g not in gpus]
        if report:  # after a stage finished and its successors started
          self._progress(done, running, pending)
          report = False
        if not running:
          if pending:
            raise StageError('stages %s cannot start: their dependencies form a cycle'
                             % ', '.join(s.name for s in pending))
          break
        finished = [n for n, r in running.items() if r['proc'].poll() is not None]
        if not finished:
          time.sleep(0.1)
          continue
        for name in finished:
          run = running.pop(name)
          free = sorted(free + run['gpus'])
          failure = self._finish(name, run)
          if failure is None:
            done.add(name)
            continue
          failures.append(failure)
          dropped = self._drop_dependants(name, pending)
          blocked += dropped
          print('[fail] %s (exit %d%s), log %s%s' % (
              name, run['proc'].returncode,
              ', output incomplete' if run['proc'].returncode == 0 else '', run['log_path'],
              '; not run, as they need it: %s' % ', '.join(dropped) if dropped else ''),
                flush=True)
        report = True
      if report:
        self._progress(done, running, pending)
    except BaseException:  # Ctrl-C, SIGTERM or an error of the driver: stop every stage
      for run in running.values():
        _stop(run['proc'])
        run['log'].close()
      raise
    if failures:
      raise StageError('\n'.join(failures) + (
          '\nnot run, as they need a failed stage: %s' % ', '.join(blocked) if blocked
          else ''))
