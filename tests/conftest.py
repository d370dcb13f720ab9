"""Shared fixtures: the repo root on sys.path, the bundled digits data, running the scripts.

Every fixture here is CPU-only and seeded; the data fixtures write into pytest's tmp dirs,
never into the repository.
"""
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


def script_env():
  """The environment for script subprocesses: this one (PYTHONPATH unchanged), quieter C++."""
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def run_script(args, timeout=300, cwd=REPO_ROOT):
  """Runs `python <args...>` from the repo root; returns the CompletedProcess (text output).

  Args:
    args: the script and its arguments, e.g. ['train.py', '--dataset=mnist', ...].
    timeout: seconds before the run is killed (a test failure).
    cwd: working directory (default the repo root, as the README commands assume).
  """
  return subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, env=script_env(),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        timeout=timeout)


def popen_script(args, cwd=REPO_ROOT, **kwargs):
  """Starts `python <args...>` from the repo root without waiting (stdout/stderr to files
  or pipes as given in kwargs); the caller kills or waits for it."""
  return subprocess.Popen([sys.executable] + [str(a) for a in args], cwd=cwd,
                          env=script_env(), **kwargs)


def describe(proc):
  """Return code and output tails of a finished script, for assertion messages."""
  return 'rc=%s\n--- stdout ---\n%s\n--- stderr ---\n%s' % (
      proc.returncode, (proc.stdout or '')[-3000:], (proc.stderr or '')[-6000:])


@pytest.fixture(scope='session')
def repo_root():
  return REPO_ROOT


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A directory with the bundled digits data in the mnist format, written once per session:
  data_train.bin (1438 records) and data_test.bin (359 records)."""
  import dataset_input  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('digits_dataset')
  dataset_input.convert_digits(str(out))
  return str(out)


@pytest.fixture(scope='session')
def digits_train(digits_dir):
  """Path of the digits training file (mnist format)."""
  return os.path.join(digits_dir, 'data_train.bin')


@pytest.fixture(scope='session')
def digits_test(digits_dir):
  """Path of the digits test file (mnist format)."""
  return os.path.join(digits_dir, 'data_test.bin')


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
