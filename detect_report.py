"""The detection report: kernel parameters, AUC table (paper's Table 2), ROC curves, thresholds.

Replaces the original's others.py and Matlab scripts. Works on the files of result_files.py.
"""
import os

from absl import logging
import numpy as np

import attack_names
import detection
import io_utils
import provenance
import report_render
import result_files


def kernel_params(features, labels, rce, num_classes, per_class=1000, subset=100, seed=0):
  """Kernel points, the white-box subset and its per-class median densities.

  Args:
    features: [N, 64] training features; labels: [N] true labels in [0, num_classes).
    rce: selects sigma2.
    num_classes: number of classes K of the dataset; every class must be present.
    per_class: kernel points per class (detection); subset: points per class (C&W-wb).
    seed: seed of the draws of the kernel points and of the subset.

  Returns:
    dict of arrays for result_files.save_kernel_params; 'medians' and 'subset_medians' are
    [num_classes] float64.
  """
  sigma2 = detection.sigma2_for(rce)
  points, point_labels = detection.select_kernel_points(features, labels, num_classes,
                                                        per_class, seed)
  sub_points, sub_labels = detection.subset_per_class(points, point_labels, subset, seed)
  kd_sub = detection.KernelDensity(sigma2).fit(sub_points, sub_labels)
  medians = detection.per_class_median_density(kd_sub, features, labels, num_classes)
  kd = detection.KernelDensity(sigma2).fit(points, point_labels)
  train_medians = detection.per_class_median_density(kd, features, labels, num_classes)
  return {'points': points, 'point_labels': point_labels, 'subset_points': sub_points,
          'subset_labels': sub_labels, 'subset_medians': medians,
          'medians': train_medians, 'sigma2': np.float64(sigma2), 'seed': np.int64(seed)}


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
  out = {'n_kept': int(keep.sum()), 'auc': {}, 'roc': {},
         'eps': data['summary']['eps'][index],
         'run_id': result_files.run_id(data['summary'])}
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
  results, rows, figures = [], [], []
  for attack in attack_names.ordered(found):
    per_model = {}
    for model, directory in sorted(found[attack].items()):
      kd, thresholds = detectors[model]
      per_model[model] = evaluate_attack(directory, kd, thresholds, eps_round, auc_ties)
      inputs['attacks'].setdefault(attack, {})[model] = {
          'dir': os.path.abspath(directory), 'run_id': per_model[model].pop('run_id')}
      logging.info('%s %s: %d kept examples', attack, model, per_model[model]['n_kept'])
    results.append((attack, per_model))
    aucs = {(m, model): r['auc'][m] for model, r in per_model.items()
            for m in detection.METRICS}
    title = attack_names.title(attack)
    eps = sorted({r['eps'] for r in per_model.values() if r['eps'] is not None})
    if eps:
      title += ' (eps %s)' % '/'.join('%g' % e for e in eps)
    rows.append((title, aucs, {model: r['n_kept'] for model, r in per_model.items()}))
    curves = [('%s %s' % (model, report_render.METRIC_NAMES[m]), r['roc'][m][0],
               r['roc'][m][1], r['auc'][m]) for model, r in sorted(per_model.items())
              for m in detection.METRICS if m in r['roc']]
    if curves:
      figures.append(('roc_%s.png' % attack, curves, 'ROC, %s on %s' % (title, dataset)))

  table = report_render.table_markdown(
      rows, title='AUC of detection on %s (rows: attacks; normal = positives)' % dataset)
  threshold_rows = [(attack_names.title(attack),
                     {model: r['threshold'] for model, r in per_model.items()})
                    for attack, per_model in results]
  text = (table + '\nK-density under the predicted class; kept examples: normal classified '
          'correctly and adversarial misclassified. Swept attacks at eps round %d. %s\n\n'
          '### Thresholding test (per-class threshold: training median K-density)\n\n%s'
          % (eps_round, _AUC_TIES_NOTE[auc_ties],
             report_render.threshold_markdown(threshold_rows)))
  folder = result_files.FolderWriter(out_dir)  # incomplete until finish()
  for name, curves, title in figures:
    folder.write(name, lambda path, c=curves, t=title: report_render.plot_roc(c, path, t))
  folder.write('table2.md', io_utils.atomic_write_text, text)
  folder.write('table2.csv', io_utils.atomic_write_text, report_render.table_csv(rows))
  folder.finish({'dataset': dataset, 'eps_round': eps_round, 'inputs': inputs,
                 'provenance': provenance.record(None, [], {'eps_round': eps_round,
                                                            'threshold': threshold,
                                                            'auc_ties': auc_ties})})
  return text, dict(results)
