"""reproduce.py --tiny end to end, and its rerun after an interruption (issue "driver").

The complete run takes a few minutes (about 25 subprocess stages) and runs once, in a
module fixture; the interruption test then reuses its output folder.
"""
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.helpers import (AUC_COLUMNS, MODELS, PNG_SIGNATURE, describe, markdown_table,  # pylint: disable=g-bad-import-order
                      popen_script, run_script, wait_until_gone)

ATTACK_ROWS = ('FGSM', 'BIM', 'ILCM', 'JSMA', 'C&W', 'C&W-hc', 'C&W-wb')
ATTACKS = ('fgsm', 'bim', 'tgsm', 'jsma', 'carliniL2', 'carliniL2_highcon',
           'carliniL2_specific')
STAGES = (['data'] + ['%s_%s' % (s, m) for m in MODELS for s in ('train', 'test_nor')]
          + ['attack_%s_%s' % (a, m) for a in ATTACKS[:-1] for m in MODELS]
          + ['kernel_para_%s' % m for m in MODELS]
          + ['attack_carliniL2_specific_%s' % m for m in MODELS]
          + ['characteristics_%s' % m for m in MODELS] + ['detect', 'tsne_fgsm'])


def sections(text):
  """{'## heading': body} of the level-2 sections of RESULTS.md."""
  parts = re.split(r'^(## .*)$', text, flags=re.M)
  return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def section(text, prefix):
  matches = [body for head, body in sections(text).items() if head.startswith(prefix)]
  assert len(matches) == 1, (prefix, list(sections(text)))
  return matches[0]


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('reproduce_tiny')
  proc = run_script(['reproduce.py', '--tiny', '--out_dir=%s' % out], timeout=1500)
  results_md = out / 'RESULTS.md'
  text = results_md.read_text() if results_md.exists() else ''
  return dict(proc=proc, out=str(out), text=text)


def _require(run):
  assert run['proc'].returncode == 0, describe(run['proc'])
  assert run['text'], 'no RESULTS.md'


def test_tiny_run_prints_every_stage(first_run):
  _require(first_run)
  stdout = first_run['proc'].stdout
  for stage in STAGES:
    assert '[run ] %s:' % stage in stdout, stage
    assert re.search(r'\[done\] %s in [0-9.]+ s' % re.escape(stage), stdout), stage
  assert '[skip]' not in stdout


def test_table1_two_error_rates(first_run):
  _require(first_run)
  body = section(first_run['text'], '## Table 1')
  header, rows = markdown_table(body, '| Model')
  assert header[:2] == ['Model', 'test error'], header
  assert [r[0] for r in rows] == list(MODELS), rows
  for row in rows:
    m = re.fullmatch(r'([0-9.]+) %', row[1])
    assert m and 0.0 <= float(m.group(1)) <= 100.0, row
    assert int(row[2]) == 359, row  # every digits test image
  # The same numbers as test_nor.py printed.
  for model, row in zip(MODELS, rows):
    with open(os.path.join(first_run['out'], 'logs', 'test_nor_%s.log' % model)) as f:
      log = f.read()
    precision = float(re.findall(r'^precision: ([0-9.]+)', log, flags=re.M)[-1])
    assert float(row[1][:-2]) == pytest.approx(100 * (1 - precision), abs=0.006), (row, model)


def test_table2_every_attack_and_every_cell(first_run):
  _require(first_run)
  body = section(first_run['text'], '## Table 2')
  header, rows = markdown_table(body, '| Attack')
  assert header[1:7] == AUC_COLUMNS, header
  titles = [re.sub(r' \(eps [0-9.]+\)$', '', r[0]) for r in rows]
  assert titles == list(ATTACK_ROWS), [r[0] for r in rows]
  for row in rows:
    assert len(row) == len(header), row
    for cell in row[1:7]:
      assert cell == 'n/c' or (re.fullmatch(r'[01]\.[0-9]{4}', cell)
                               and 0.0 <= float(cell) <= 1.0), row
  for row in rows[:4]:  # swept attacks, JSMA included, at the tiny preset's eps 0.04
    assert row[0].endswith('(eps 0.04)'), row
  # the detect output is the same table
  with open(os.path.join(first_run['out'], 'results', 'detect_mnist', 'table2.md')) as f:
    assert f.read().strip() in body


def test_table3_and_figures_and_commands(first_run):
  _require(first_run)
  text, out = first_run['text'], first_run['out']
  header, rows = markdown_table(section(text, '## Table 3'), '| Model')
  assert [r[0] for r in rows] == list(MODELS), rows
  assert 'ratio of f2' in header[1] and 'RMS' in header[2] and 'L2' in header[3], header
  for row in rows:
    for cell in row[1:]:
      assert cell.startswith('n/c') or 0.0 <= float(cell), row
  figures = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', section(text, '## Figures'))
  assert any(f.endswith('tsne_fgsm.png') for f in figures), figures
  assert any(os.path.basename(f).startswith('roc_') for f in figures), figures
  for fig in figures:
    path = os.path.join(out, fig)
    assert os.path.exists(path), fig
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE, fig
  _, timing = markdown_table(section(text, '## Wall time'), '| Stage')
  assert [r[0] for r in timing] == STAGES
  assert all(float(r[1]) > 0 for r in timing)  # every stage ran, none was skipped
  commands = section(text, '## Commands').strip().splitlines()
  commands = [c for c in commands if c and not c.startswith('```')]
  assert len(commands) == len(STAGES)
  scripts = [re.match(r'python \S*?([a-z_]+\.py) ', c).group(1) for c in commands]
  assert scripts.count('train.py') == 2 and scripts.count('test_nor.py') == 2
  assert scripts.count('test_adv.py') == 2 * len(ATTACKS) + 2 + 2 + 1
  assert any('--mode=detect' in c for c in commands)
  assert all('--attack_method=%s ' % a in ' '.join(commands) for a in ATTACKS)


def test_rerun_after_interruption_skips_finished_stages_and_gives_same_tables(first_run):
  _require(first_run)
  out = first_run['out']
  bim_rce = os.path.join(out, 'results', 'bim_mnist', 'RCE')
  assert os.path.exists(os.path.join(bim_rce, 'summary.json'))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(bim_rce)
  log_path = os.path.join(out, 'interrupted.log')
  stage_log = os.path.join(out, 'logs', 'attack_bim_RCE.log')
  os.remove(stage_log)  # the first run's; the driver starts it afresh
  with open(log_path, 'w') as log:
    proc = popen_script(['reproduce.py', '--tiny', '--out_dir=%s' % out], stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True)
  killed = False
  try:
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
      with open(log_path) as f:
        running = '[run ] attack_bim_RCE' in f.read()
      # kill once the stage's own process has started writing its log (TensorFlow loading)
      if running and os.path.exists(stage_log) and os.path.getsize(stage_log) > 0:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its running stage
        killed = True
        break
      time.sleep(0.1)
  finally:
    if proc.poll() is None and not killed:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
  with open(log_path) as f:
    interrupted = f.read()
  assert killed, interrupted
  assert '[run ] train_' not in interrupted, interrupted
  assert not os.path.exists(os.path.join(bim_rce, 'summary.json'))  # stopped mid-stage

  rerun = run_script(['reproduce.py', '--tiny', '--out_dir=%s' % out], timeout=900)
  assert rerun.returncode == 0, describe(rerun)
  stdout = rerun.stdout
  assert '[run ] train_' not in stdout and '[run ] test_nor_' not in stdout, stdout
  for stage in STAGES:
    if stage in ('attack_bim_RCE', 'characteristics_RCE', 'detect'):  # and what reads it
      assert '[run ] %s:' % stage in stdout, stage
    else:
      assert '[skip] %s' % stage in stdout, stage
  assert os.path.exists(os.path.join(bim_rce, 'summary.json'))
  with open(os.path.join(out, 'RESULTS.md')) as f:
    text = f.read()
  for prefix in ('## Table 1', '## Table 2', '## Table 3'):
    assert section(text, prefix) == section(first_run['text'], prefix), prefix
  _, timing = markdown_table(section(text, '## Wall time'), '| Stage')
  marks = {r[0]: r[2] if len(r) > 2 else '' for r in timing}
  assert marks['train_CE'] == 'from an earlier run' and marks['attack_bim_RCE'] == ''


def _children(pid):
  """Process ids of the children of `pid` (Linux /proc)."""
  try:
    with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
      return [int(p) for p in f.read().split()]
  except OSError:
    return []




def test_new_steps_rerun_exactly_what_they_affect_then_nothing(first_run):
  """--steps changed: stopping the driver stops its stage; the rerun redoes the training and
  every stage downstream of it (not the data); a third run with the same flags skips all."""
  _require(first_run)
  out = first_run['out']
  args = ['reproduce.py', '--tiny', '--steps=70', '--out_dir=%s' % out]
  log_path = os.path.join(out, 'stopped.log')
  with open(log_path, 'w') as log:
    proc = popen_script(args, stdout=log, stderr=subprocess.STDOUT)
  child = None
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and child is None:
      with open(log_path) as f:
        if '[run ] train_CE' in f.read():
          child = next(iter(_children(proc.pid)), None)
      time.sleep(0.1)
    assert child is not None, open(log_path).read()
    proc.send_signal(signal.SIGTERM)  # the driver alone, not its process group
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode != 0
  assert not wait_until_gone([child], 20), 'the running stage outlived the driver'

  rerun = run_script(args, timeout=900)
  assert rerun.returncode == 0, describe(rerun)
  stdout = rerun.stdout
  assert '[skip] data' in stdout, stdout
  for stage in STAGES[1:]:
    assert '[run ] %s:' % stage in stdout, (stage, stdout)
  with open(os.path.join(out, 'RESULTS.md')) as f:
    text = f.read()
  header, rows = markdown_table(section(text, '## Table 1'), '| Model')
  assert header[3] == 'checkpoint step', header
  assert [r[3] for r in rows] == ['70', '70'], rows
  # The tiny preset's schedule scales with the steps: the 60-step checkpoints were made with
  # another one, so the stopped run started the training afresh rather than resume it.
  with open(log_path) as f:
    assert '[note] train_CE: removing' in f.read()
  assert '--lr_boundaries=42,60 --lr_values=0.1,0.01,0.001' in stdout

  third = run_script(args, timeout=600)
  assert third.returncode == 0, describe(third)
  assert '[run ]' not in third.stdout, third.stdout
  for stage in STAGES:
    assert '[skip] %s' % stage in third.stdout, stage
  with open(os.path.join(out, 'RESULTS.md')) as f:
    again = f.read()
  for prefix in ('## Table 1', '## Table 2', '## Table 3', '## Tables 4 and 5'):
    assert section(again, prefix) == section(text, prefix), prefix


def test_jobs_2_same_tables_and_a_stopped_parallel_run_resumes(first_run):
  """--jobs=2 from the data on gives the tables of --jobs=1, the models' fingerprints
  included (training keeps its threads); stopping it during parallel stages stops them all,
  and a rerun does not redo the stages that finished."""
  _require(first_run)
  out = first_run['out']
  args = ['reproduce.py', '--tiny', '--steps=70', '--out_dir=%s' % out, '--jobs=2']
  with open(os.path.join(out, 'RESULTS.md')) as f:
    jobs1 = f.read()  # the --jobs=1 run of the test before
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(out, 'results'))
  shutil.rmtree(os.path.join(out, 'models_mnist'))  # the two trainings run side by side too
  parallel = run_script(args, timeout=900)
  assert parallel.returncode == 0, describe(parallel)
  stdout = parallel.stdout
  assert stdout.index('[run ] train_RCE') < stdout.index('[done] train_CE'), stdout  # overlap
  assert re.search(r'running: attack_\w+, attack_\w+', parallel.stdout), parallel.stdout
  with open(os.path.join(out, 'RESULTS.md')) as f:
    jobs2 = f.read()
  for prefix in ('## Table 1', '## Table 2', '## Table 3', '## Tables 4 and 5'):
    assert section(jobs2, prefix) == section(jobs1, prefix), prefix

  shutil.rmtree(os.path.join(out, 'results'))
  log_path = os.path.join(out, 'stopped_parallel.log')
  with open(log_path, 'w') as log:
    proc = popen_script(args, stdout=log, stderr=subprocess.STDOUT)
  children = []
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      with open(log_path) as f:
        text = f.read()
      if text.count('[done] attack_') >= 2 and len(_children(proc.pid)) == 2:
        children = _children(proc.pid)
        break
      time.sleep(0.1)
    assert len(children) == 2, open(log_path).read()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert not wait_until_gone(children, 20), 'a running stage outlived the driver'
  with open(log_path) as f:
    finished = re.findall(r'^\[done\] (\S+) in', f.read(), flags=re.M)
  rerun = run_script(args, timeout=900)
  assert rerun.returncode == 0, describe(rerun)
  for stage in finished:
    assert '[skip] %s' % stage in rerun.stdout, (stage, rerun.stdout)
  with open(os.path.join(out, 'RESULTS.md')) as f:
    again = f.read()
  for prefix in ('## Table 1', '## Table 2', '## Table 3', '## Tables 4 and 5'):
    assert section(again, prefix) == section(jobs1, prefix), prefix


def _per_seed(out):
  import csv  # pylint: disable=g-import-not-at-top
  with open(os.path.join(out, 'per_seed.csv')) as f:
    rows = list(csv.DictReader(f))
  cells = {}
  for row in rows:
    cells.setdefault((row['table'], row['row'], row['column']), {})[int(row['seed'])] = (
        row['value'])
  return cells


# Where each table is in RESULTS.md: section, header start, cells (rows x numeric columns).
TABLE_PLACES = {
    'Table 1': ('## Table 1', '| Model', 2 * 4),
    'Table 2': ('## Table 2', '| Attack', 7 * 14),  # + Mahalanobis, LID and success, CE and RCE
    'Table 3': ('## Table 3', '| Model', 2 * 5),
    'Table 4': ('## Tables 4 and 5', '| Attack: detector |', 7 * 3 * 4),
    'Table 5': ('## Tables 4 and 5', '| Attack: detector (trained', 7 * 3 * 2),
}


def _own_cell(text, table, row, column):
  """The cell of a replica's own RESULTS_seed{N}.md (Table 2 is detect's table2.md)."""
  heading, start = TABLE_PLACES[table][:2]
  header, rows = markdown_table(section(text, heading), start)
  return dict((r[0], r) for r in rows)[row][header.index(column)]


def _formatted(table, column, value):
  if value == 'n/c' or not re.fullmatch(r'-?[0-9.e+-]+|nan|inf', value):
    return value
  if table == 'Table 1' and column == 'test error':
    return '%.2f %%' % float(value)
  if column in ('images', 'checkpoint step', 'examples counted') or column.startswith('kept'):
    return '%d' % int(value)
  return '%.4f' % float(value)


def test_seeds_2_mean_and_sd_in_every_cell_and_per_seed_values_of_each_replica(first_run):
  """--seeds=2 on the folder of the runs before: seed 0 is the run already there (skipped),
  seed 1 a whole second replica; RESULTS.md gives mean +- s.d. in every numeric cell and
  per_seed.csv two values per cell, each the one of that replica's own tables."""
  _require(first_run)
  out = first_run['out']
  proc = run_script(['reproduce.py', '--tiny', '--steps=70', '--out_dir=%s' % out,
                     '--jobs=2', '--seeds=2'], timeout=1200)
  assert proc.returncode == 0, describe(proc)
  for stage in STAGES:  # replica 0 is the single-seed run, unchanged
    assert '[skip] %s ' % stage in proc.stdout, stage
    if stage not in ('data', 'tsne_fgsm'):
      assert '[done] %s_seed1 in' % stage in proc.stdout, stage
  assert '--seed=1' in proc.stdout and os.path.isdir(os.path.join(out, 'seed_1', 'results'))
  with open(os.path.join(out, 'RESULTS.md')) as f:
    text = f.read()
  own = {}
  for seed in (0, 1):
    with open(os.path.join(out, 'RESULTS_seed%d.md' % seed)) as f:
      own[seed] = f.read()
  fingerprints = [markdown_table(section(own[s], '## Table 1'), '| Model')[1][0][4]
                  for s in (0, 1)]
  assert fingerprints[0] != fingerprints[1]  # two different trainings

  cells = _per_seed(out)
  for table, (heading, start, count) in TABLE_PLACES.items():
    in_csv = {k: v for k, v in cells.items() if k[0] == table}
    assert len(in_csv) == count, (table, len(in_csv))
    header, rows = markdown_table(section(text, heading), start)
    by_row = dict((r[0], r) for r in rows)
    for (_, row, column), values in in_csv.items():
      assert sorted(values) == [0, 1], (table, row, column)
      for seed, value in values.items():
        assert _formatted(table, column, value) == _own_cell(own[seed], table, row, column), (
            table, row, column, seed)
      cell = by_row[row][header.index(column)]
      numbers = [float(v) for v in values.values() if v not in ('n/c', '')
                 and re.fullmatch(r'-?[0-9.e+-]+', v)]
      if column == 'model fingerprint':
        assert cell == ' / '.join(values[s] for s in (0, 1))
      elif len(numbers) == 2:
        mean, sd = np.mean(numbers), np.std(numbers, ddof=1)
        fmt = '%.2f %%' if column == 'test error' else (
            '%.1f' if column in ('images', 'checkpoint step', 'examples counted')
            or column.startswith('kept') else '%.4f')
        assert cell == '%s ± %s' % (fmt % mean, fmt % sd), (table, row, column, cell)
      elif len(numbers) == 1:
        assert '±' in cell and '1 of 2 seeds' in cell, cell
      else:
        assert cell == 'n/c', (table, row, column, cell)
