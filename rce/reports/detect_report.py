"""--mode=detect: reads the results, has rce.detection compute, writes the report's files.

Replaces the original's others.py and Matlab scripts. Works on the files of result_files.py:
the attack folders of both models and their kernels (checked to belong together), then
rce.detection's records (attack_evaluation, supervised_evaluation) rendered by table2_report
and supervised_report into Table 2, the ROC PNGs, the thresholding test and Tables 4 and 5.
"""
import os

from rce.detection import adaptive_evaluation
from rce.detection import attack_evaluation
from rce.detection import detection
from rce.detection import supervised_detectors
from rce.detection import supervised_evaluation
from rce.reports import adaptive_report
from rce.reports import report_render
from rce.reports import supervised_report
from rce.reports import table2_report
from rce.results import io_utils
from rce.results import provenance
from rce.results import result_files
from rce.tables import dataset_table


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
    (markdown text, {attack: {model: attack_evaluation.AttackEvaluation}}).

  With characteristics (test_adv.py --mode=characteristics) it writes Tables 4 and 5 and the
  per-example scores too. The output folder's summary.json records the run ids of every
  folder read and the checksums of every file written (result_files.FolderWriter).
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
  loaded = attack_evaluation.load_rounds(results_dir, dataset, found, eps_round, auc_ties)
  rounds, kernel_summaries, commands = loaded.rounds, loaded.kernel_summaries, loaded.commands
  # Table 6 and C&W-wb's SR: every adaptive run scored at the calibrated thresholds.
  seen = dict(rounds).get(supervised_detectors.TRAINED_ON, {})
  adaptive = adaptive_evaluation.evaluate(
      results_dir, dataset, kernel_summaries, dataset_table.get_spec(dataset).num_classes,
      found.get(adaptive_evaluation.WB_ATTACK),
      {m: (r.evaluation.run_id, r.characteristics.run_id) for m, r in seen.items()
       if r.characteristics is not None})
  evaluations = [(attack, {m: r.evaluation for m, r in per_model.items()})
                 for attack, per_model in rounds]
  characterized = {attack: {m: r.characteristics.run_id for m, r in per_model.items()
                            if r.characteristics is not None} for attack, per_model in rounds}
  characterized = {attack: run_ids for attack, run_ids in characterized.items() if run_ids}

  # Table 2 gains the unsupervised LID and Mahalanobis columns when there are characteristics.
  metrics = table2_report.metrics(bool(characterized))
  table2 = table2_report.table2(evaluations, dataset, metrics)
  text = table2_report.markdown(table2, evaluations, eps_round, auc_ties, bool(characterized))
  folder = result_files.FolderWriter(out_dir)  # incomplete until finish()
  for figure in table2_report.roc_figures(evaluations, dataset, metrics):
    folder.write(figure.name, lambda path, f=figure: report_render.plot_roc(
        f.curves, path, f.title, f.empty_notes))
  folder.write('table2.md', io_utils.atomic_write_text, text)
  folder.write('table2.csv', io_utils.atomic_write_text, table2.csv())
  split = None
  if characterized:
    supervised = supervised_evaluation.evaluate(rounds)
    table4, table5 = supervised_report.tables([a for a, _ in rounds], supervised, commands)
    supervised_text = supervised_report.markdown(table4, table5)
    folder.write('table4_5.md', io_utils.atomic_write_text, supervised_text)
    folder.write('table4.csv', io_utils.atomic_write_text, table4.csv())
    folder.write('table5.csv', io_utils.atomic_write_text, table5.csv())
    folder.write('per_example_scores.csv', io_utils.atomic_write_text,
                 supervised_report.examples_table(supervised.examples).csv())
    text += '\n' + supervised_text
    split = supervised.split_record()
  else:
    text += supervised_report.no_characteristics_text(commands)
  if adaptive is not None:
    adaptive_files, adaptive_text = adaptive_report.files(adaptive, dataset)
    for name, content in adaptive_files:
      folder.write(name, io_utils.atomic_write_text, content)
    text += '\n' + adaptive_text
  inputs = {'kernels': {m: result_files.run_id(k) for m, k in kernel_summaries.items()},
            'attacks': {attack: {m: {'dir': os.path.abspath(e.directory), 'run_id': e.run_id}
                                 for m, e in per_model.items()}
                        for attack, per_model in evaluations},
            'characteristics': characterized,
            'adaptive': adaptive.inputs if adaptive is not None else None}
  folder.finish({'dataset': dataset, 'eps_round': eps_round, 'inputs': inputs,
                 'supervised_split': split,
                 'provenance': provenance.record(None, [], {'eps_round': eps_round,
                                                            'threshold': threshold,
                                                            'auc_ties': auc_ties})})
  return text, dict(evaluations)
