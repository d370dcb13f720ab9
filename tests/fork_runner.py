"""Runs many short script invocations from one process that imported TensorFlow once.

`python -m tests.fork_runner` reads a JSON list of jobs ({'args': [script, flags...], 'cwd',
'timeout'}) on stdin, imports TensorFlow and the project's modules, then forks one child per
job (`workers` at a time): the child changes to the job's folder, sends its stdout and stderr
(file descriptors 1 and 2, so C++ logs too) to files, and runs the script as `python script
args` would (runpy as __main__, the script's folder first on sys.path, the exit code of its
SystemExit, a traceback and exit code 1 for an uncaught exception), and gives a JSON list of
{'returncode', 'stdout', 'stderr'} in job order. What this saves is the TensorFlow import of
every run (seconds each); the tests of error messages (tests/test_cli_errors.py) run dozens
of short invocations. A job that overruns its timeout is killed (returncode -9). The results
go to the JSON file named on the command line. Only for
runs that need no process of their own: signals, children and timing are tested with real
subprocesses (tests/helpers.run_script).
"""
import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback


# What the scripts import that costs seconds: TensorFlow and the project's modules on it.
PRELOADED = ('tensorflow', 'attacks', 'dataset_input', 'resnet_model',
             'rce.attacking.attack_modes', 'rce.detection.detector_modes',
             'rce.flags.definitions', 'rce.reports.detect_report', 'rce.training.training')


def _child(job, out_path, err_path):
  """In the forked child: runs the job's script as __main__; never returns."""
  code = 1
  try:
    for fd, path in ((1, out_path), (2, err_path)):
      handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(handle, fd)
      os.close(handle)
    os.chdir(job['cwd'])
    script = os.path.abspath(job['args'][0])
    sys.argv = [script] + [str(a) for a in job['args'][1:]]
    sys.path[0] = os.path.dirname(script)
    try:
      runpy.run_path(script, run_name='__main__')
      code = 0
    except SystemExit as e:
      if e.code is None:
        code = 0
      elif isinstance(e.code, int):
        code = e.code
      else:
        print(e.code, file=sys.stderr)
        code = 1
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
      code = 1
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)  # pylint: disable=protected-access


def _read(path):
  with open(path, errors='replace') as f:
    return f.read()


def run(jobs, workers=2):
  """[{'returncode', 'stdout', 'stderr'}] of `jobs`, run `workers` at a time in forks."""
  results = [None] * len(jobs)
  tmp = tempfile.mkdtemp(prefix='fork_runner_')
  pending = list(range(len(jobs)))
  running = {}  # pid -> (index, deadline)
  while pending or running:
    while pending and len(running) < workers:
      i = pending.pop(0)
      paths = [os.path.join(tmp, '%d.%s' % (i, s)) for s in ('out', 'err')]
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(jobs[i], *paths)
      running[pid] = (i, time.time() + float(jobs[i].get('timeout', 300)), paths)
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid == 0:
      now = time.time()
      for other, (_, deadline, _) in list(running.items()):
        if now > deadline:
          os.kill(other, signal.SIGKILL)
      time.sleep(0.02)
      continue
    i, _, paths = running.pop(pid)
    code = os.waitstatus_to_exitcode(status)
    results[i] = {'returncode': code, 'stdout': _read(paths[0]), 'stderr': _read(paths[1])}
  return results


def main():
  """python -m tests.fork_runner RESULTS_JSON [WORKERS] < jobs.json"""
  jobs = json.load(sys.stdin)
  out_path = sys.argv[1]
  workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
  for name in PRELOADED:  # the imports every script makes, once here (children inherit them)
    importlib.import_module(name)
  results = run(jobs, workers)
  with open(out_path, 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main()
