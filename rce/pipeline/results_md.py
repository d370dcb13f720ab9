"""RESULTS.md: each replica's Tables 1-5 (from verified result files), figures and commands.

With several seeds every cell of RESULTS.md is a mean +- s.d. over the replicas, each replica
has its own RESULTS_seed{N}.md and per_seed.csv holds every value.
"""
import os

from rce.pipeline import paper
from rce.pipeline import scheduler
from rce.reports import adaptive_report
from rce.reports import report_tables
from rce.reports import table6_report
from rce.results import io_utils
from rce.results import result_files
from rce.tables import dataset_table
from rce.tables import models

TABLES_4_5 = 'Tables 4 and 5: LID and Mahalanobis next to K-density (supervised protocol)'
TABLE6 = ('Tables 6 and 7: adaptive attacks on every detector at thresholds fixed on clean '
          'images, and how far they transfer')
TABLE3_NOTE = (
    'Counted: the examples classified correctly when clean whose adversarial image is '
    'classified as its target (on the logits). Ratio of f2(x*) > 0: the fraction of them the '
    'K-density detector still flags (f2 = -log K-density of the target class + log of its '
    'training median; higher is better for the defense). Distortion (RMS): the mean over '
    'them of sqrt(mean((x - x*)^2)), the original\'s; mean L2: of ||x - x*||_2. n/c: no '
    'example counted.')


def replica_tables(pipeline, rep):
  """Tables 1-5 of one replica as report_tables.Table values (read from verified files)."""
  table1 = report_tables.Table('Table 1', [
      ('test error', '%.2f %%'), ('images', '%d'), ('checkpoint step', '%d'),
      ('model fingerprint', '%s')], [])
  for rce in paper.RCE_FLAGS:
    clean = result_files.load_verified_summary(pipeline.eval_dir(rce, rep),
                                               result_files.CLEAN_RESULT)
    table1.rows.append((models.model_name(rce), [
        100.0 * (1.0 - clean['precision']), clean['images'], clean['checkpoint_step'],
        clean['provenance']['model']['fingerprint'][:16]]))
  table1.notes.append(
      "Images: the first ones of the test file(s) %s, in file order (the original's "
      "test_nor.py used the first 5000)." % ', '.join(
          os.path.basename(d['path']) for d in clean['provenance']['data']))
  detect_dir = pipeline.detect_dir(rep)
  result_files.load_verified_summary(detect_dir)  # table2.csv is one of its checked files
  with open(os.path.join(detect_dir, 'table2.csv')) as f:
    table2 = report_tables.table2_from_csv(f.read())
  table3 = report_tables.Table('Table 3', [
      ('ratio of f2(x*) > 0', '%.4f'), ("distortion (RMS, the paper's)", '%.4f'),
      ('mean L2 distortion', '%.4f'), ('examples counted', '%d'),
      ('target reached', '%.4f')], [])
  settings = []
  for rce in paper.RCE_FLAGS:
    directory = result_files.attack_dir('carliniL2_specific', pipeline.args.dataset, rce,
                                        results_dir=rep.results)
    stats = result_files.load_verified_summary(directory)['attack_stats']
    model = models.model_name(rce)
    table3.rows.append((model, [stats['ratio_f2_positive'], stats['rms_distortion'],
                                stats['mean_l2_distortion'], stats['table3_examples'],
                                stats['target_reached_rate']]))
    settings.append('%s: %s' % (model, '; then '.join(
        '%(binary_search_steps)d x %(max_iterations)d iterations, c %(initial_const)g, '
        'confidence %(confidence)g' % s for s in stats['cw_settings'])))
  table3.notes.append(TABLE3_NOTE + ' C&W runs used: %s.' % ' | '.join(settings))
  _add_table3_sr(table3, detect_dir)
  tables = [table1, table2, table3]
  for name in ('Table 4', 'Table 5'):  # with characteristics (LID, Mahalanobis)
    path = os.path.join(detect_dir, '%s.csv' % name.replace(' ', '').lower())
    if os.path.exists(path):
      with open(path) as f:
        tables.append(report_tables.from_csv(name, f.read()))
  return tables + table6_rates(detect_dir)


def _add_table3_sr(table3, detect_dir):
  """Table 3 gains C&W-wb's SR@5 and SR@50 at the calibrated K-density thresholds, when
  detect rescored it (a preset with Table 6)."""
  path = os.path.join(detect_dir, adaptive_report.TABLE3_SR_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    sr = dict(report_tables.from_csv('Table 3 SR', f.read()).rows)
  table3.columns += list(table6_report.TABLE3_SR_COLUMNS)
  table3.rows = [(model, cells + list(sr[model])) for model, cells in table3.rows]
  table3.notes.append(table6_report.TABLE3_SR_NOTE)


def table6_rates(detect_dir):
  """Table 6's SR@5 and SR@50 (untargeted, then targeted) as numeric tables, from detect's
  detail CSVs; none without Table 6."""
  out = []
  for targeted in (False, True):
    path = os.path.join(detect_dir, 'table6%s_detail.csv' % ('_targeted' if targeted else ''))
    if os.path.exists(path):
      with open(path) as f:
        text = f.read()
      out += [table6_report.table6_rates(text, fpr, targeted)
              for fpr in table6_report.SHOWN_FPRS]
  return out


def _header(pipeline, platform, total_wall, seeds):
  """The report's first lines; `platform`: (TensorFlow's version, the device names)."""
  args = pipeline.args
  version, devices = platform
  return [
      '# Reproduction of "Towards Robust Detection of Adversarial Examples" (RCE + K-density)',
      '', 'Preset **%s** on %s: %s' % (args.preset, args.dataset, pipeline.preset['note']),
      '', 'Data: %s.' % data_note(pipeline),
      '', 'Seeds: %s. Training precision: %s (evaluation, attacks and detection: float32).'
      % (seeds, args.precision),
      '', 'TensorFlow %s; devices: %s; --num_gpus=%d; --jobs=%d; total wall time of this '
      'invocation %.0f s.' % (version, ', '.join(devices), args.num_gpus, args.jobs,
                              total_wall)]


def data_note(pipeline):
  """The data actually used: each part's files and record counts (from their sizes)."""
  spec = dataset_table.get_spec(pipeline.args.dataset)
  record = spec.record_values * spec.record_dtype.itemsize
  parts = []
  for part in ('train', 'test'):
    files = paper.data_files(pipeline.data_paths[part])
    parts.append('%s %s (%d images)' % (part, ', '.join(files),
                                        sum(os.path.getsize(f) for f in files) // record))
  bundled = (' (the bundled digits, written by dataset_input.py --convert=digits)'
             if pipeline.converts_digits() else '')
  return '%s%s' % ('; '.join(parts), bundled)


def _stage_sections(stages, records):
  """The wall time and the command of each of `stages`, from their stages.json records."""
  timing = ['| Stage | wall time (s) | |', '|---|---|---|']
  commands = []
  for stage in stages:
    record = records[stage.name]
    timing.append('| %s | %.1f | %s |' % (stage.name, record['wall_s'],
                                           'from an earlier run' if record.get('skipped')
                                           else ''))
    commands.append(record['command'])
  return (['', '## Wall time per stage', ''] + timing
          + ['', '## Commands run', '', '```'] + commands + ['```', ''])


def replica_report(pipeline, records, platform, rep, tables, total_wall, report_dir):
  """One replica's RESULTS text: Tables 1-3, figures, its stages' times and commands."""
  table1, _, table3 = tables[:3]
  detect_dir = pipeline.detect_dir(rep)
  with open(os.path.join(detect_dir, 'table2.md')) as f:
    table2 = f.read()  # with the thresholding test and the notes of detect
  supervised = []
  if os.path.exists(os.path.join(detect_dir, 'table4_5.md')):
    with open(os.path.join(detect_dir, 'table4_5.md')) as f:
      supervised = ['## %s' % TABLES_4_5, '', f.read()]
  if os.path.exists(os.path.join(detect_dir, 'table6.md')):
    with open(os.path.join(detect_dir, 'table6.md')) as f:
      supervised += ['## %s' % TABLE6, '', f.read()]
  images = sorted(n for n in os.listdir(detect_dir) if n.endswith('.png'))
  figures = ['![%s](%s)' % (n, os.path.relpath(os.path.join(detect_dir, n), report_dir))
             for n in images]
  return '\n'.join(
      _header(pipeline, platform, total_wall, rep.seed)
      + ['', '## Table 1: clean test error', '', table1.markdown(),
         '', '## Table 2: ROC-AUC of detection', '', table2,
         '## Table 3: white-box attack on the K-density detector (C&W-wb)', '',
         table3.markdown()] + supervised + ['## Figures', '']
      + figures + _stage_sections(pipeline.replica_stages(rep), records))


def write_reports(pipeline, records, total_wall, platform):
  """RESULTS.md; with several seeds, also each replica's RESULTS_seed{N}.md and
  per_seed.csv, and RESULTS.md gives every cell as mean +- s.d. over the seeds.

  `records`: the stages' records (scheduler.Scheduler.records); `platform()`: TensorFlow's
  version and the names of its devices, asked once the tables are read.
  """
  out, replicas = pipeline.out, pipeline.replicas
  path = os.path.join(out, 'RESULTS.md')
  tables = [replica_tables(pipeline, rep) for rep in replicas]
  where = platform()
  if len(replicas) == 1:
    io_utils.atomic_write_text(path, replica_report(pipeline, records, where, replicas[0],
                                                    tables[0], total_wall, out))
    print('wrote %s' % path)
    return
  for rep, rep_tables in zip(replicas, tables):
    io_utils.atomic_write_text(
        os.path.join(out, 'RESULTS_seed%d.md' % rep.seed),
        replica_report(pipeline, records, where, rep, rep_tables, total_wall, out))
  seeds = [rep.seed for rep in replicas]
  io_utils.atomic_write_text(os.path.join(out, 'per_seed.csv'),
                             report_tables.per_seed_csv(seeds, tables))
  titles = {'Table 1': '## Table 1: clean test error',
            'Table 2': '## Table 2: ROC-AUC of detection',
            'Table 3': '## Table 3: white-box attack on the K-density detector (C&W-wb)',
            'Table 4': '## %s\n\n### Table 4: supervised, AUROC and detected at 5 %% FPR '
                       "(Lee et al.'s TNR at TPR 95 %%)" % TABLES_4_5,
            'Table 5': '### Table 5: unseen attacks (trained on FGSM), AUROC'}
  for kind in ('untargeted', 'targeted'):
    for fpr in table6_report.SHOWN_FPRS:
      key = 'SR@%s' % table6_report.fpr_label(fpr)
      titles['Table 6 %s (%s)' % (key, kind)] = '### Table 6, %s: %s' % (kind, key)
  titles['Table 6 SR@5 (untargeted)'] = '## %s\n\n%s' % (
      TABLE6, titles['Table 6 SR@5 (untargeted)'])
  if len({tuple(t.name for t in per) for per in tables}) > 1:
    raise scheduler.StageError('the replicas reported different tables: %s' % [
        [t.name for t in per] for per in tables])
  body = []
  for per_seed in zip(*tables):
    body += ['', titles[per_seed[0].name], '', report_tables.mean_sd_markdown(per_seed)]
  text = '\n'.join(
      _header(pipeline, where, total_wall, '%s (%d replicas of the whole pipeline)'
              % (', '.join(map(str, seeds)), len(seeds)))
      + ['', 'Every numeric cell: mean ± standard deviation (n - 1) over the %d seeds; '
         'the per-seed values are in per_seed.csv and each replica\'s own report in '
         'RESULTS_seed{N}.md (with its figures and the thresholding test).' % len(seeds)]
      + body + _stage_sections(pipeline.stages, records))
  io_utils.atomic_write_text(path, text)
  print('wrote %s' % path)
