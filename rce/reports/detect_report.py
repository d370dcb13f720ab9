"""The detection report: AUC table (paper's Table 2), ROC curves, thresholds.

Replaces the original's others.py and Matlab scripts. Works on the files of result_files.py.
"""
import csv
import io
import os

from absl import logging
import numpy as np

from rce.tables import attack_names
from rce.detection import detect_characteristics as dchar
from rce.detection import detection
from rce.results import io_utils
from rce.results import provenance
from rce.reports import report_render
from rce.reports import report_tables
from rce.results import result_files


def _scores(data, kd, side):
  """Confidence, non-ME and log K-density (under the predicted class) of one side."""
  log_kd = kd.log_score(data['logits_' + side], data['labels_' + side])
  return {'confidence': data['confidence_' + side], 'non_me': data['entropy_' + side],
          'k_density': log_kd}


def evaluate_attack(directory, kd, thresholds, eps_round, auc_ties='half'):
  """AUCs, ROC points and the thresholding test of one attack on one model.

  Args:
    directory: the attack result folder of one model.
    kd: the model's fitted detection.KernelDensity.
    thresholds: [K] per-class K-density thresholds; K, the kernel's number of classes, is
      their length.
    eps_round: 1-based eps round of the swept attacks.
    auc_ties: how the AUCs count tied scores, one of detection.AUC_TIES (see
      detection.roc_auc).

  Raises:
    result_files.ResultsError: the results hold a class the kernel does not have.
  """
  index = result_files.round_index(result_files.load_summary(directory), eps_round)
  data = result_files.load_attack_round(directory, index)
  num_classes = len(thresholds)
  for name in ('labels_true', 'labels_nor', 'labels_adv'):
    labels = np.asarray(data[name]).reshape(-1)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
      raise result_files.ResultsError(
          '%s: %s holds class %d, outside the %d classes of the kernel (one median each); the '
          'kernel and the attack results do not belong together'
          % (directory, name, bad[0], num_classes))
  keep = detection.kept_mask(data['labels_true'], data['labels_nor'], data['labels_adv'])
  nor, adv = _scores(data, kd, 'nor'), _scores(data, kd, 'adv')
  clean_correct = (np.asarray(data['labels_nor']).reshape(-1)
                   == np.asarray(data['labels_true']).reshape(-1))
  out = {'n_kept': int(keep.sum()), 'n_clean_correct': int(clean_correct.sum()),
         'auc': {}, 'roc': {},
         'eps': data['summary']['eps'][index],
         'run_id': result_files.run_id(data['summary']), 'keep': keep, 'data': data}
  for metric in detection.METRICS:
    pos, neg = nor[metric][keep], adv[metric][keep]
    out['auc'][metric] = detection.roc_auc(pos, neg, ties=auc_ties)
    if out['auc'][metric] is not None:
      out['roc'][metric] = detection.roc_curve_points(pos, neg)
  out['threshold'] = detection.threshold_test(
      kd, thresholds, data['logits_nor'], data['labels_nor'], data['labels_true'],
      data['logits_adv'], data['labels_adv'])
  return out


def check_consistent(found, kernel_summaries, kernel_dir):
  """ResultsError unless the folders of one table belong together.

  Every attack folder of model M must come from the checkpoint its kernel was made from (the
  model fingerprint), every attack folder must have attacked the same test data, and the CE
  and RCE kernels the same training data. The message names both folders and their files.
  """
  data_ref = None
  for attack in sorted(found):
    for model, directory in sorted(found[attack].items()):
      summary = result_files.load_summary(directory)
      if 'provenance' not in summary:
        result_files.verify_checksums(directory, summary)  # says: older version, rerun
      made_by = summary['provenance']['model']
      kernel_by = kernel_summaries[model]['provenance']['model']
      if made_by['fingerprint'] != kernel_by['fingerprint']:
        raise result_files.ResultsError(
            '%s: %s was made by checkpoint %s (step %d), but %s: %s by checkpoint %s (step %d);'
            ' they are not the same %s model: rerun the stale one (attack or kernel_para)'
            % (directory, result_files.SUMMARY, made_by['checkpoint'], made_by['global_step'],
               kernel_dir, result_files.kernel_summary_name(model == 'RCE'),
               kernel_by['checkpoint'], kernel_by['global_step'], model))
      data = provenance.data_identity(summary['provenance']['data'])
      if data_ref is None:
        data_ref = (directory, data)
      elif data != data_ref[1]:
        raise result_files.ResultsError(
            '%s: %s records other test data than %s (%s vs %s); one table compares '
            'attacks on the same images' % (
                directory, result_files.SUMMARY, data_ref[0],
                [d['path'] for d in summary['provenance']['data']], data_ref[0]))
  kernel_data = {m: provenance.data_identity(k['provenance']['data'])
                 for m, k in kernel_summaries.items()}
  if len({repr(d) for d in kernel_data.values()}) > 1:
    raise result_files.ResultsError(
        '%s: the CE and RCE kernels (%s) were made from different training data'
        % (kernel_dir, ', '.join(result_files.kernel_summary_name(m == 'RCE')
                                 for m in sorted(kernel_data))))


def characteristics_command(dataset, model, results_dir, eps_round):
  """The command that makes a model's characteristics, for messages."""
  return ('python test_adv.py --mode=characteristics --dataset=%s --RCE_train=%s '
          '--log_root=<the %s model> --results_dir=%s --eps_round=%d'
          % (dataset, model == 'RCE', model, results_dir, eps_round))


def add_characteristics(results, kernel_summaries, detectors, dataset, results_dir, eps_round,
                        auc_ties):
  """Loads the characteristics of every (attack, model) that has them into the results and
  adds Table 2's LID and Mahalanobis AUCs; returns {attack: {model: run id}}."""
  found = {}
  for attack, per_model in results:
    for model, r in per_model.items():
      hint = characteristics_command(dataset, model, results_dir, eps_round)
      loaded = result_files.load_characteristics(r['dir'], r['data']['summary'],
                                                 kernel_summaries[model], hint)
      if loaded is None:
        continue
      chars, summary = loaded
      if summary['eps_round_index'] != result_files.round_index(r['data']['summary'],
                                                               eps_round):
        raise result_files.ResultsError(
            '%s: the characteristics are of eps round %d, detect reports round %d; remake '
            'them with: %s' % (r['dir'], summary['eps_round_index'] + 1, eps_round, hint))
      r['characteristics'] = chars
      r['sets'] = dchar.characteristic_sets(chars, detectors[model][0], r['data'])
      for metric, (auc, roc) in dchar.unsupervised_aucs(chars, r['keep'], auc_ties).items():
        r['auc'][metric] = auc
        if roc is not None:
          r['roc'][metric] = roc
      found.setdefault(attack, {})[model] = result_files.run_id(summary)
  return found


def _shared_labels(results):
  """labels_true of the attacked images (the longest run); every attack attacked a prefix
  of the same images, in the same order."""
  longest = max((r['data']['labels_true'] for _, pm in results for r in pm.values()), key=len)
  for attack, per_model in results:
    for model, r in per_model.items():
      labels = r['data']['labels_true']
      if not np.array_equal(labels, longest[:len(labels)]):
        raise result_files.ResultsError('%s: its images are not the ones the other attacks '
                                        'attacked (labels differ)' % r['dir'])
  return longest


def supervised_tables(results, dataset, results_dir, eps_round, seed=0):
  """Tables 4 and 5 (report_tables.Table), the per-example rows, the split facts."""
  labels = _shared_labels(results)
  train_ex, test_ex, stratified = dchar.example_split(labels, seed)
  models = report_render.TABLE_MODELS
  table4 = report_tables.Table('Table 4', [('AUROC %s' % m, '%.4f') for m in models]
                               + [(DETECTED_COLUMN % m, '%.4f') for m in models], [],
                               first='Attack: detector')
  table5 = report_tables.Table('Table 5', [('AUROC %s' % m, '%.4f') for m in models], [],
                               first='Attack: detector (trained on FGSM)')
  reasons, fitted, per_example, missing = [], {}, [], {}
  for attack, per_model in results:
    for det in dchar.DETECTORS:
      label = '%s: %s' % (attack_names.title(attack), dchar.DETECTOR_NAMES[det])
      cells = {}
      for model in models:
        r = per_model.get(model)
        if r is None or 'sets' not in r:
          cells[model] = (None, None)
          missing.setdefault(model, []).append(attack_names.title(attack))
          continue
        res = dchar.supervised(det, r['sets'][det], r['keep'], train_ex, test_ex, seed)
        fitted[(attack, model, det)] = res
        if res['auroc'] is None:
          reasons.append(('Table 4', res['reason'], '%s %s' % (attack_names.title(attack),
                                                               model)))
        cells[model] = (res['auroc'], res['detected_at_fpr5'])
      table4.rows.append((label, [cells[m][0] for m in models] + [cells[m][1] for m in models]))
  for attack, per_model in results:
    for det in dchar.DETECTORS:
      label = '%s: %s' % (attack_names.title(attack), dchar.DETECTOR_NAMES[det])
      row = []
      for model in models:
        trained = fitted.get((dchar.SEEN_ATTACK, model, det))
        r = per_model.get(model)
        if trained is None or r is None or 'sets' not in r:
          row.append(None)
          continue
        auroc, why = dchar.transfer_auroc(trained, r['sets'][det], r['keep'], test_ex)
        if why:
          reasons.append(('Table 5', why, '%s %s' % (attack_names.title(attack), model)))
        row.append(auroc)
      table5.rows.append((label + (' (seen)' if attack == dchar.SEEN_ATTACK else ''), row))
  if dchar.SEEN_ATTACK not in dict(results):
    table5.notes.append('n/c: no FGSM results to train on.')
  split_note = ('Split: %d of the %d attacked images for training, %d for testing (seeded, %s); '
                'one split for every attack and both models.' % (
                    len(train_ex), len(labels), len(test_ex),
                    'stratified by class' if stratified else 'not stratified: a class has '
                    'one image'))
  for model, attacks in sorted(missing.items()):
    reasons.append(('Tables 4 and 5', 'no results or characteristics (make them with: %s)'
                    % characteristics_command(dataset, model, results_dir, eps_round),
                    ', '.join('%s %s' % (a, model) for a in sorted(set(attacks),
                                                                  key=attacks.index))))
  chosen, eps_record = [], {}
  for attack, per_model in results:
    for model in models:
      res = fitted.get((attack, model, 'mahalanobis'))
      if res is not None and res['model'] is not None:
        eps = per_model[model]['characteristics']['mahalanobis_eps'][res['eps_index']]
        chosen.append('%s %s %g' % (attack_names.title(attack), model, eps))
        eps_record.setdefault(attack, {})[model] = {
            'eps': float(eps), 'validation_aurocs': res['validation_aurocs']}
  table4.notes += [split_note] + _reason_notes(reasons)
  if chosen:
    table4.notes.append('Mahalanobis pre-processing eps chosen: %s.' % ', '.join(chosen))
  for attack, per_model in results:
    for model, r in sorted(per_model.items()):
      if 'sets' in r:
        per_example.extend(_example_rows(attack, model, r, fitted, train_ex, test_ex))
  return table4, table5, per_example, {'train': len(train_ex), 'test': len(test_ex),
                                       'stratified': stratified, 'seed': seed,
                                       'mahalanobis_eps': eps_record}


def _reason_notes(reasons):
  """'n/c' lines, one per (table, reason), naming the attacks and models it applies to."""
  grouped = {}
  for table, reason, where in reasons:
    places = grouped.setdefault((table, reason), [])
    if where not in places:
      places.append(where)
  return ['n/c in %s (%s): %s.' % (table, ', '.join(places), reason)
          for (table, reason), places in grouped.items()]


EXAMPLE_COLUMNS = (['attack', 'model', 'example', 'version', 'kept', 'split', 'k_density']
                   + list(dchar.UNSUPERVISED)
                   + ['supervised_%s' % d for d in dchar.DETECTORS]
                   + ['flagged_%s' % d for d in dchar.DETECTORS])


def _example_rows(attack, model, r, fitted, train_ex, test_ex):
  """Per example and version: the unsupervised scores (higher = more normal) and, for kept
  examples, each supervised detector's score and whether it flags it (at 5 % FPR)."""
  n = len(r['keep'])
  split = np.where(np.isin(np.arange(n), test_ex), 'test',
                   np.where(np.isin(np.arange(n), train_ex), 'train', '-'))
  unsup = {key: dchar.unsupervised_scores(r['characteristics'], key)
           for key, _ in dchar.VERSIONS}
  sup = {}
  for det in dchar.DETECTORS:
    res = fitted.get((attack, model, det))
    if res is None or res['score'] is None:
      continue
    flags = dchar.flagged(res)
    # supervised_dataset's row order: adversarial, normal, noisy, each over the kept examples
    kept = int(r['keep'].sum())
    version = np.array(['adv'] * kept + ['normal'] * kept + ['noisy'] * kept)
    for ex, v, score, flag in zip(res['example'], version, res['score'], flags):
      sup[(int(ex), v, det)] = (float(score), bool(flag))
  rows = []
  for i in range(n):
    for key, name in dchar.VERSIONS:
      row = [attack, model, i, name, bool(r['keep'][i]), split[i],
             float(r['sets']['k_density'][key][i, 0])]
      row += [float(unsup[key][m][i]) for m in dchar.UNSUPERVISED]
      row += [sup.get((i, key, d), ('', ''))[0] for d in dchar.DETECTORS]
      row += [sup.get((i, key, d), ('', ''))[1] for d in dchar.DETECTORS]
      rows.append(row)
  return rows


TABLE4_TITLE = ('### Table 4: supervised detection (LID of Ma et al., Mahalanobis of Lee et '
                "al.), AUROC and detected at 5 % FPR (Lee et al.'s TNR at TPR 95 %)")
# Table 4's second metric (characteristics.detected_at_fpr at 5 %), per model.
DETECTED_COLUMN = 'detected at 5 %% FPR %s'
DETECTED_NOTE = (
    "Detected at 5 % FPR: Lee et al.'s TNR at TPR 95 % (their calculate_log.py takes the normal "
    'and noisy test rows as positives): the share of adversarial test rows flagged at the '
    'threshold that accepts at least 95 % of the normal and noisy test rows. Ties: a row '
    'scoring exactly the threshold is accepted, adversarial or not (a tie counts against the '
    'detector). per_example_scores.csv flags rows at that threshold.')
TABLE5_TITLE = '### Table 5: unseen attacks (detectors trained on FGSM), AUROC'


def supervised_markdown(table4, table5):
  """Tables 4 and 5 with their explanations."""
  return '\n'.join([
      TABLE4_TITLE, '', table4.markdown(),
      'Per model, attack and detector a logistic regression (scikit-learn LogisticRegressionCV)'
      ' on the characteristics: K-density its log density under the predicted class; LID '
      'every layer (input, the three stages, the feature; MinMaxScaler first); Mahalanobis '
      'every layer (class means and shared covariance of the training features, input '
      'pre-processing eps chosen on a quarter of the training part, then refit on all of it).'
      ' Positives: the adversarial versions of the kept examples; negatives: their normal and'
      ' noisy versions (Gaussian noise with the kept adversarial examples\' mean L2; for JSMA'
      ' as many pixels set to the maximum as the attack changed). The split, the stratification'
      ' and the refit are this suite\'s protocol (Lee et al. fit on 10 % of the data).',
      '', DETECTED_NOTE, '', TABLE5_TITLE, '', table5.markdown()])


def _csv_text(columns, rows):
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(columns)
  writer.writerows(rows)
  return buf.getvalue()


def _no_curve_note(result):
  """What an empty ROC panel says: no results of the model, or too few kept examples."""
  if result is None:
    return 'no results of this model'
  if result['n_kept'] == 0:
    if result['n_clean_correct'] == 0:
      return 'no kept examples\n(no clean image classified correctly)'
    return ('no kept examples\n(the attack fooled none of the\n%d clean-correct images)'
            % result['n_clean_correct'])
  return 'no ROC curve: %d kept example%s' % (result['n_kept'],
                                             '' if result['n_kept'] == 1 else 's')


# The sentence under Table 2 naming the tie rule of its AUCs, per detection.AUC_TIES.
_AUC_TIES_NOTE = {
    'half': 'AUC ties: half credit (rank statistic).',
    'original': 'AUC ties: counted against the normal example, as the original\'s AUC.m.',
}


def detect(results_dir, dataset, eps_round=8, out_dir=None, threshold='median',
           auc_ties='half'):
  """Finds every attack result of `dataset`, writes Table 2 (md, csv), ROC PNGs, thresholds.

  Args:
    results_dir: folder holding kernel_para_{dataset}/ and {attack}_{dataset}/{CE,RCE}/.
    dataset: 'mnist' or 'cifar10'.
    eps_round: 1-based eps round of the swept attacks (8 is eps 0.16).
    out_dir: where the report goes (default {results_dir}/detect_{dataset}).
    threshold: 'median' (training median K-density per class) of the thresholding test.
    auc_ties: how every AUC counts a (normal, adversarial) pair with equal scores: 'half'
      (half credit, the rank statistic = sklearn's roc_auc_score) or 'original' (no credit,
      as the original's Matlab_scripts/AUC.m); see detection.roc_auc. Table 2 says which.

  Returns:
    (markdown text, {attack: {model: evaluate_attack result}}).

  The output folder's summary.json records the run ids of every folder read and the
  checksums of every file written (result_files.FolderWriter).
  """
  detection.check_auc_ties(auc_ties)  # before any file is read
  found = result_files.find_attacks(results_dir, dataset)
  if not found:
    raise result_files.ResultsError(
        'no complete attack results for %s under %s (expected {attack}_%s/{CE,RCE}/%s; run '
        'test_adv.py --mode=attack first)' % (dataset, results_dir, dataset,
                                              result_files.SUMMARY))
  if threshold != 'median':
    raise ValueError('unknown threshold rule %r' % threshold)
  out_dir = out_dir or os.path.join(results_dir, 'detect_%s' % dataset)
  kernel_dir = result_files.kernel_dir(dataset, results_dir)
  detectors, kernel_summaries = {}, {}
  for model in sorted({m for dirs in found.values() for m in dirs}):
    params, kernel_summaries[model] = result_files.load_kernel_params(kernel_dir,
                                                                      model == 'RCE', dataset)
    kd = detection.KernelDensity(float(params['sigma2'])).fit(params['points'],
                                                            params['point_labels'])
    detectors[model] = (kd, params['medians'])
  check_consistent(found, kernel_summaries, kernel_dir)

  inputs = {'kernels': {m: result_files.run_id(k) for m, k in kernel_summaries.items()},
            'attacks': {}}
  results = []
  for attack in attack_names.ordered(found):
    per_model = {}
    for model, directory in sorted(found[attack].items()):
      kd, thresholds = detectors[model]
      per_model[model] = evaluate_attack(directory, kd, thresholds, eps_round, auc_ties)
      per_model[model]['dir'] = directory
      inputs['attacks'].setdefault(attack, {})[model] = {
          'dir': os.path.abspath(directory), 'run_id': per_model[model].pop('run_id')}
      logging.info('%s %s: %d kept examples', attack, model, per_model[model]['n_kept'])
    results.append((attack, per_model))
  inputs['characteristics'] = add_characteristics(results, kernel_summaries, detectors,
                                                  dataset, results_dir, eps_round, auc_ties)
  # Table 2 gains the unsupervised LID and Mahalanobis columns when there are characteristics.
  metrics = detection.METRICS + (dchar.UNSUPERVISED if inputs['characteristics'] else ())
  rows, figures = [], []
  for attack, per_model in results:
    aucs = {(m, model): r['auc'][m] for model, r in per_model.items()
            for m in metrics if m in r['auc']}
    title = attack_names.title(attack)
    eps = sorted({r['eps'] for r in per_model.values() if r['eps'] is not None})
    if eps:
      title += ' (eps %s)' % '/'.join('%g' % e for e in eps)
    rows.append((title, aucs, {model: r['n_kept'] for model, r in per_model.items()},
                 {model: r['n_clean_correct'] for model, r in per_model.items()}))
    curves = {model: {m: (r['roc'][m][0], r['roc'][m][1], r['auc'][m])
                      for m in metrics if m in r['roc']} for model, r in per_model.items()}
    if any(curves.values()):  # a figure of two empty panels would say nothing new
      notes = {model: _no_curve_note(per_model.get(model))
               for model in report_render.TABLE_MODELS if not curves.get(model)}
      figures.append(('roc_%s.png' % attack, curves, notes,
                      'ROC, %s on %s' % (title, dataset)))

  table = report_render.table_markdown(
      rows, title='AUC of detection on %s (rows: attacks; normal = positives)' % dataset,
      metrics=metrics)
  threshold_rows = [(attack_names.title(attack),
                     {model: r['threshold'] for model, r in per_model.items()})
                    for attack, per_model in results]
  text = (table + '\nK-density under the predicted class; kept examples: normal classified '
          'correctly and adversarial misclassified. Swept attacks at eps round %d. %s%s\n\n'
          '### Thresholding test (per-class threshold: training median K-density)\n\n%s'
          % (eps_round, _AUC_TIES_NOTE[auc_ties],
             ' Mahalanobis (Lee et al.) and LID (Ma et al.): unsupervised, on the final 64-d '
             'feature, Mahalanobis without input pre-processing, LID within minibatches of '
             'normal examples.' if inputs['characteristics'] else '',
             report_render.threshold_markdown(threshold_rows)))
  folder = result_files.FolderWriter(out_dir)  # incomplete until finish()
  for name, curves, notes, title in figures:
    folder.write(name, lambda path, c=curves, n=notes, t=title:
                 report_render.plot_roc(c, path, t, n))
  folder.write('table2.md', io_utils.atomic_write_text, text)
  folder.write('table2.csv', io_utils.atomic_write_text, report_render.table_csv(rows, metrics))
  split = None
  if inputs['characteristics']:
    table4, table5, per_example, split = supervised_tables(results, dataset, results_dir,
                                                           eps_round)
    sup_text = supervised_markdown(table4, table5)
    folder.write('table4_5.md', io_utils.atomic_write_text, sup_text)
    folder.write('table4.csv', io_utils.atomic_write_text, table4.csv())
    folder.write('table5.csv', io_utils.atomic_write_text, table5.csv())
    folder.write('per_example_scores.csv', io_utils.atomic_write_text,
                 _csv_text(EXAMPLE_COLUMNS, per_example))
    text += '\n' + sup_text
  else:
    text += ('\nTables 4 and 5 (LID and Mahalanobis, supervised) need the characteristics of '
             'the attacks: %s\n' % ' and '.join(
                 characteristics_command(dataset, m, results_dir, eps_round)
                 for m in report_render.TABLE_MODELS))
  for _, per_model in results:  # the arrays stay out of the returned results
    for r in per_model.values():
      for key in ('data', 'characteristics', 'sets', 'keep'):
        r.pop(key, None)
  folder.finish({'dataset': dataset, 'eps_round': eps_round, 'inputs': inputs,
                 'supervised_split': split,
                 'provenance': provenance.record(None, [], {'eps_round': eps_round,
                                                            'threshold': threshold,
                                                            'auc_ties': auc_ties})})
  return text, dict(results)
