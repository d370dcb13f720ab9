"""reproduce.py --tiny end to end, and its reruns: interrupted, --jobs=2, --seeds=2, --steps.

Full pipelines are what this module costs (a few minutes each), so it runs four, each
checked for everything it can show: the --jobs=1 first run (module fixture `first_run`), a
--jobs=2 --seeds=2 run from the data on (fixture `two_seeds`: replica 0 must give the first
run's tables, replica 1 is the second seed) and the --steps=70 rerun. The other runs redo a
few stages only. All of them share one output folder, as the skipping is what they test:
the tests that rerun stages in it expect it at the tiny preset's 60 steps, so the --steps=70
test comes last (and says so if it did not).
"""
import os
import re
import shutil
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


def _read(path):
  """The text of `path`, '' when it does not exist (a failed run)."""
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    return f.read()


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  """reproduce.py --tiny (--jobs=1) in a fresh folder, and a copy of what the tests of its
  output read (RESULTS.md, the test_nor logs, detect's table2.md, the PNG headers), as the
  later tests rerun stages in the same folder."""
  out = tmp_path_factory.mktemp('reproduce_tiny')
  proc = run_script(['reproduce.py', '--tiny', '--out_dir=%s' % out], timeout=1500)
  pngs = {}
  for root, _, names in os.walk(str(out)):
    for name in names:
      if name.endswith('.png'):
        with open(os.path.join(root, name), 'rb') as f:
          pngs[os.path.relpath(os.path.join(root, name), str(out))] = f.read(8)
  return dict(
      proc=proc, out=str(out), text=_read(os.path.join(str(out), 'RESULTS.md')),
      test_nor_logs={m: _read(os.path.join(str(out), 'logs', 'test_nor_%s.log' % m))
                     for m in MODELS},
      table2_md=_read(os.path.join(str(out), 'results', 'detect_mnist', 'table2.md')),
      pngs=pngs, steps_changed=False)


def _require(run):
  assert run['proc'].returncode == 0, describe(run['proc'])
  assert run['text'], 'no RESULTS.md'


def _require_preset_steps(first_run):
  """For the tests that rerun stages in the folder: it is still at the preset's steps."""
  assert not first_run['steps_changed'], (
      'test_new_steps_rerun_exactly_what_they_affect_then_nothing ran before this test; it '
      'moves the folder to --steps=70 and must run last')


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
    log = first_run['test_nor_logs'][model]
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
  assert first_run['table2_md'].strip() in body


def test_table3_and_figures_and_commands(first_run):
  _require(first_run)
  text = first_run['text']
  header, rows = markdown_table(section(text, '## Table 3'), '| Model')
  assert [r[0] for r in rows] == list(MODELS), rows
  assert 'ratio of f2' in header[1] and 'RMS' in header[2] and 'L2' in header[3], header
  for row in rows:
    for cell in row[1:]:
      assert cell.startswith('n/c') or 0.0 <= float(cell), row
  figures = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', section(text, '## Figures'))
  assert any(f.endswith('tsne_fgsm.png') for f in figures), figures
  assert any(os.path.basename(f).startswith('roc_') for f in figures), figures
  for fig in figures:  # files of the first run (the PNGs it wrote, their first bytes)
    assert os.path.normpath(fig) in first_run['pngs'], (fig, sorted(first_run['pngs']))
    assert first_run['pngs'][os.path.normpath(fig)] == PNG_SIGNATURE, fig
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
  """A stage's results deleted, the driver and that stage killed (SIGKILL) mid-stage: the
  rerun redoes that stage and what reads it, skips every other, and gives the same tables."""
  _require(first_run)
  _require_preset_steps(first_run)
  out = first_run['out']
  bim_rce = os.path.join(out, 'results', 'bim_mnist', 'RCE')
  assert os.path.exists(os.path.join(bim_rce, 'summary.json'))
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


def _per_seed(out):
  import csv  # pylint: disable=g-import-not-at-top
  with open(os.path.join(out, 'per_seed.csv')) as f:
    rows = list(csv.DictReader(f))
  cells = {}
  for row in rows:
    cells.setdefault((row['table'], row['row'], row['column']), {})[int(row['seed'])] = (
        row['value'])
  return cells


# The sections of RESULTS.md that hold the numbers (the same in every run of a config).
TABLE_SECTIONS = ('## Table 1', '## Table 2', '## Table 3', '## Tables 4 and 5')


@pytest.fixture(scope='module')
def two_seeds(first_run):
  """reproduce.py --tiny --jobs=2 --seeds=2 from the data on, in the first run's folder:
  replica 0's results and models are deleted first, so replica 0 (the first run's commands)
  and replica 1 (--seed=1) run every stage but the data, up to two stages at once. What the
  tests read is copied as this run left it (the stopped-run test reruns stages after it)."""
  _require(first_run)
  _require_preset_steps(first_run)
  out = first_run['out']
  for folder in ('results', 'models_mnist', 'seed_1'):  # the data stays
    shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
  proc = run_script(['reproduce.py', '--tiny', '--out_dir=%s' % out, '--jobs=2',
                     '--seeds=2'], timeout=1500)
  have_csv = os.path.exists(os.path.join(out, 'per_seed.csv'))
  return dict(proc=proc, out=out, text=_read(os.path.join(out, 'RESULTS.md')),
              own={s: _read(os.path.join(out, 'RESULTS_seed%d.md' % s)) for s in (0, 1)},
              cells=_per_seed(out) if have_csv else {},
              seed_1_results=os.path.isdir(os.path.join(out, 'seed_1', 'results')))


def test_jobs_2_from_the_data_on_gives_the_tables_of_jobs_1(first_run, two_seeds):
  """--jobs=2 from the data on (the --seeds=2 run) gives in replica 0 the tables of the
  --jobs=1 first run, the models' fingerprints included (training keeps its threads, and
  the two trainings run side by side); the attacks run two at once."""
  _require(first_run)
  proc = two_seeds['proc']
  assert proc.returncode == 0, describe(proc)
  stdout = proc.stdout
  assert stdout.index('[run ] train_RCE:') < stdout.index('[done] train_CE in'), stdout  # overlap
  assert re.search(r'running: attack_\w+, attack_\w+', stdout), stdout
  for prefix in TABLE_SECTIONS:
    assert section(two_seeds['own'][0], prefix) == section(first_run['text'], prefix), prefix


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


def test_seeds_2_mean_and_sd_in_every_cell_and_per_seed_values_of_each_replica(two_seeds):
  """--seeds=2: seed 1 is a whole second replica (every stage but the shared data and the
  t-SNE figure, with --seed=1, in seed_1/); RESULTS.md gives mean +- s.d. in every numeric
  cell and per_seed.csv two values per cell, each the one of that replica's own tables.
  (That replica 0 is a single-seed run already there, skipped, is checked at the end of the
  stopped-run test: here replica 0 ran from the data on.)"""
  proc = two_seeds['proc']
  assert proc.returncode == 0, describe(proc)
  for stage in STAGES:
    if stage not in ('data', 'tsne_fgsm'):
      assert '[done] %s_seed1 in' % stage in proc.stdout, stage
  assert '--seed=1' in proc.stdout and two_seeds['seed_1_results']
  text, own = two_seeds['text'], two_seeds['own']
  fingerprints = [markdown_table(section(own[s], '## Table 1'), '| Model')[1][0][4]
                  for s in (0, 1)]
  assert fingerprints[0] != fingerprints[1]  # two different trainings

  cells = two_seeds['cells']
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


# The attacks on RCE whose results the stopped-run test deletes: with --jobs=2 two of them
# finish while two others run; they are redone with characteristics_RCE and detect only.
STOPPED_ATTACKS = ('bim', 'tgsm', 'jsma', 'carliniL2')


def test_a_stopped_parallel_run_resumes_and_seeds_2_takes_a_single_seed_run_as_replica_0(
    first_run, two_seeds):
  """After the --seeds=2 run, four attacks of replica 0 deleted and a single-seed --jobs=2
  run stopped (SIGTERM to the driver) once two of them finished, while two stages run: both
  running stages stop with it, a rerun does not redo the stages that finished, and the
  tables are those of the --jobs=1 first run. Then --seeds=2 on the folder of this
  single-seed run: seed 0 is the run already there, every one of its stages skipped."""
  _require(first_run)
  _require_preset_steps(first_run)
  assert two_seeds['proc'].returncode == 0, describe(two_seeds['proc'])
  out = first_run['out']
  args = ['reproduce.py', '--tiny', '--out_dir=%s' % out, '--jobs=2']
  for attack in STOPPED_ATTACKS:
    shutil.rmtree(os.path.join(out, 'results', '%s_mnist' % attack, 'RCE'))
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
  for prefix in TABLE_SECTIONS:
    assert section(again, prefix) == section(first_run['text'], prefix), prefix

  seeds = run_script(args + ['--seeds=2'], timeout=600)
  assert seeds.returncode == 0, describe(seeds)
  for stage in STAGES:  # replica 0 is the single-seed run, unchanged
    assert '[skip] %s ' % stage in seeds.stdout, stage
  assert '[run ]' not in seeds.stdout, seeds.stdout  # nor did replica 1 change


def test_new_steps_rerun_exactly_what_they_affect_then_nothing(first_run):
  """--steps changed: stopping the driver stops its stage; the rerun redoes the training and
  every stage downstream of it (not the data); a third run with the same flags skips all.
  The stopped run has --jobs=1, the rerun and the third run --jobs=2 (no part of a stage's
  key; it halves the rerun). Last in the module: it leaves the folder at --steps=70."""
  _require(first_run)
  first_run['steps_changed'] = True
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

  rerun = run_script(args + ['--jobs=2'], timeout=900)
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

  third = run_script(args + ['--jobs=2'], timeout=600)
  assert third.returncode == 0, describe(third)
  assert '[run ]' not in third.stdout, third.stdout
  for stage in STAGES:
    assert '[skip] %s' % stage in third.stdout, stage
  with open(os.path.join(out, 'RESULTS.md')) as f:
    again = f.read()
  for prefix in TABLE_SECTIONS:
    assert section(again, prefix) == section(text, prefix), prefix
