"""Helpers of the tests: running the scripts, their command lines, reading their output.

Tests import them as `from tests import helpers` (tests is a package, so pytest puts the
repository root on sys.path and the code imports as it does in the scripts).
"""
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from rce.detection import detection
from rce.results import provenance
from rce.results import result_files
from rce.tables import models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def script_env():
  """The environment for script subprocesses: this one (PYTHONPATH unchanged), quieter C++."""
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


# Output that means a script failed in a way it should not, whatever its exit code.
UNEXPECTED_OUTPUT = ('Traceback (most recent call last)', '--- Logging error ---')


def check_output_clean(proc, args):
  """Fails the test if a script printed a traceback or a logging error."""
  for needle in UNEXPECTED_OUTPUT:
    if needle in (proc.stdout or '') or needle in (proc.stderr or ''):
      pytest.fail('%r printed %r:\n%s' % (' '.join(str(a) for a in args), needle,
                                           describe(proc)))


def run_script(args, timeout=300, cwd=REPO_ROOT, expect_traceback=False):
  """Runs `python <args...>` from the repo root; returns the CompletedProcess (text output).

  A run whose output holds a Python traceback or a '--- Logging error ---' fails the test,
  unless `expect_traceback`.

  Args:
    args: the script and its arguments, e.g. ['train.py', '--dataset=mnist', ...].
    timeout: seconds before the run is killed (a test failure).
    cwd: working directory (default the repo root, as the README commands assume).
    expect_traceback: the test expects a traceback (do not fail on one).
  """
  proc = subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, env=script_env(),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        timeout=timeout)
  if not expect_traceback:
    check_output_clean(proc, args)
  return proc


def popen_script(args, cwd=REPO_ROOT, **kwargs):
  """Starts `python <args...>` from the repo root without waiting (stdout/stderr to files
  or pipes as given in kwargs); the caller kills or waits for it."""
  return subprocess.Popen([sys.executable] + [str(a) for a in args], cwd=cwd,
                          env=script_env(), **kwargs)


def run_parallel(jobs, timeout=600, workers=2, cwds=None, fork=True):
  """Runs several scripts (lists of args) at most `workers` at a time, each in its cwd (the
  repo root unless `cwds` gives one per job); returns the CompletedProcesses in job order.

  By default each run is a fork of one process that imported TensorFlow once
  (`run_forked`), which saves a TensorFlow start-up per run; fork=False (and `python -c`
  jobs) run real subprocesses, as a test of processes, signals or start-up needs."""
  cwds = cwds or [REPO_ROOT] * len(jobs)
  if fork and not any(str(job[0]).startswith('-') for job in jobs):  # a script, not -c
    return run_forked(jobs, cwds, timeout, workers)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(lambda job: run_script(job[0], timeout=timeout, cwd=job[1]),
                         zip(jobs, cwds)))


def run_forked(jobs, cwds, timeout=300, workers=2):
  """Like run_parallel, but every run is a fork of one process that imported TensorFlow
  once (tests/fork_runner.py): for many short runs of the scripts, e.g. their error
  messages. The CompletedProcesses in job order, each checked for a traceback."""
  spec = [{'args': [str(a) for a in job], 'cwd': str(cwd), 'timeout': timeout}
          for job, cwd in zip(jobs, cwds)]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'results.json')
    runner = subprocess.run([sys.executable, '-m', 'tests.fork_runner', out, str(workers)],
                            input=json.dumps(spec), cwd=REPO_ROOT, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=timeout * len(jobs))
    assert runner.returncode == 0, describe(runner)
    with open(out) as f:
      results = json.load(f)
  procs = []
  for job, result in zip(jobs, results):
    proc = subprocess.CompletedProcess([sys.executable] + [str(a) for a in job],
                                       result['returncode'], result['stdout'],
                                       result['stderr'])
    check_output_clean(proc, job)
    procs.append(proc)
  return procs


def describe(proc):
  """Return code and output tails of a finished script, for assertion messages."""
  return 'rc=%s\n--- stdout ---\n%s\n--- stderr ---\n%s' % (
      proc.returncode, (proc.stdout or '')[-3000:], (proc.stderr or '')[-6000:])


def markdown_table(text, header_start):
  """Rows (lists of cells) of the Markdown table whose header starts with `header_start`."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
  header = [c.strip() for c in lines[start].strip().strip('|').split('|')]
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append([c.strip() for c in line.strip().strip('|').split('|')])
  return header, rows


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def is_png(path):
  """Whether `path` is a PNG that decodes to an RGB(A) image larger than 10x10."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    head = f.read(8)
  if head != PNG_SIGNATURE:
    return False
  pixels = matplotlib.image.imread(path)
  return pixels.ndim == 3 and pixels.shape[0] > 10 and pixels.shape[1] > 10


# ---- the scripts' command lines on the digits data (mnist format, ResNet-8 by default) -----


def model_flags(log_root, rce, units=1):
  return ['--dataset=mnist', '--num_gpus=1', '--num_residual_units=%d' % units,
          '--RCE_train=%s' % rce, '--log_root=%s' % log_root]


def train_args(train_file, log_root, total_steps, rce=True, num_gpus=1, extra=()):
  """The README's train.py command."""
  return ['train.py', '--train_data_path=%s' % train_file, '--log_root=%s' % log_root,
          '--train_dir=%s' % os.path.join(str(log_root), 'train'), '--dataset=mnist',
          '--num_gpus=%d' % num_gpus, '--num_residual_units=1', '--mode=train',
          '--Optimizer=mom', '--total_steps=%d' % total_steps, '--RCE_train=%s' % rce
          ] + list(extra)


def attack_args(test_file, log_root, rce, method, n, batches=1, units=1, extra=()):
  """The README's test_adv.py --mode=attack command (the script by absolute path, so that
  it runs from any working directory)."""
  return ([os.path.join(REPO_ROOT, 'test_adv.py'), '--eval_data_path=%s' % test_file,
           '--Optimizer=mom', '--mode=attack', '--attack_method=%s' % method,
           '--eval_batch_count=%d' % batches, '--attack_batch_size=%d' % n]
          + model_flags(log_root, rce, units) + list(extra))


SHARED_TRAIN_STEPS = 200
MODELS = models.MODELS
# The AUC columns of the detect table (Table 2), in the paper's order.
AUC_COLUMNS = ['%s %s' % (metric, model) for metric in ('Confidence', 'non-ME', 'K-density')
               for model in MODELS]



def save_hand_made_results(results, labels_true, labels_nor, labels_adv, rng,
                           attack='carliniL2'):
  """Writes hand-made results of `attack` on both models, and both kernels, on 'mnist'.

  Every model has one made-up checkpoint and every folder the same made-up test file in its
  provenance, so that detect takes them as belonging together; the confidences, entropies,
  features and kernel points are drawn from `rng` (per model, in that order).

  Args:
    results: the results folder (created).
    labels_true: [N] int true labels of the attacked images.
    labels_nor, labels_adv: {model: [N] int} the predictions on the clean and adversarial
      images, for every model of MODELS.
    rng: a numpy RandomState.
  """
  n = len(labels_true)
  for model in MODELS:
    rce = model == models.model_name(True)
    prov = provenance.record(
        {'name': model, 'checkpoint': '/made/up/%s/model.ckpt-1' % model, 'global_step': 1,
         'fingerprint': model * 8, 'num_residual_units': 1, 'use_bottleneck': False},
        [{'path': '/made/up/data_test.bin', 'size': 1, 'sha256': '0' * 64}], {})
    feats = rng.normal(size=(n, 64))
    arrays = {'labels_true': labels_true, 'labels_nor': labels_nor[model],
              'labels_adv': labels_adv[model], 'confidence_nor': rng.uniform(0.6, 1, n),
              'confidence_adv': rng.uniform(0.4, 0.9, n), 'entropy_nor': rng.uniform(0, 1, n),
              'entropy_adv': rng.uniform(0.5, 2, n), 'logits_nor': feats,
              'logits_adv': feats + 0.5, 'L2_distance': np.ones(n),
              'nor_img': np.zeros((n, 28, 28, 1), np.float32),
              'adv_img': np.zeros((1, n, 28, 28, 1), np.float32)}
    directory = result_files.attack_dir(attack, 'mnist', rce, results_dir=results)
    result_files.save_attack_results(directory, arrays, {
        'attack': attack, 'dataset': 'mnist', 'num_examples': n, 'num_rounds': 1,
        'eps': [None], 'rounds': [], 'attack_stats': {}, 'model': model, 'provenance': prov})
    train = rng.normal(size=(200, 64))
    train_labels = np.arange(200) % 10
    params = detection.kernel_params(train, train_labels, rce, 10, per_class=15, subset=10)
    result_files.save_kernel_params(result_files.kernel_dir('mnist', results), rce, train,
                                    train_labels, params,
                                    {'dataset': 'mnist', 'provenance': prov})


def alive(pid):
  """Whether process `pid` exists and is not a zombie (Linux /proc)."""
  try:
    with open('/proc/%d/stat' % pid) as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def wait_until_gone(pids, seconds):
  """Waits up to `seconds` for every process of `pids` to end; returns those still alive."""
  import time  # pylint: disable=g-import-not-at-top
  deadline = time.time() + seconds
  while any(alive(p) for p in pids) and time.time() < deadline:
    time.sleep(0.05)
  return [p for p in pids if alive(p)]
