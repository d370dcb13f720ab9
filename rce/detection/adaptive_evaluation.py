"""Table 6's and Table 7's records: every adaptive attack's images scored by the detectors.

Reads the runs of adaptive_{dataset}/{run}/{CE|RCE}/ (test_adv.py --mode=attack with a pgd_*
method) and each model's calibration (thresholds_{dataset}/{M}/), checks that they belong
together (the kernel's checkpoint, the very calibration every run read, attacked rows after
the calibration images), and scores every round with the calibration's detectors: the
final-feature ones from the saved features, the supervised ones from the characteristics
each run saved (supervised_characteristics.npz), the ensemble (accepted when all six accept,
each at its own threshold) as max_d (s_d - t_d) <= 0. Table 6: an oblivious run counts for
every detector's row, a detector-aware run for the detector it attacked. Table 7 (transfer):
every run for every detector. C&W-wb (the paper's Table 3 attack) is rescored at the same
thresholds of the K-density detector it attacks. TensorFlow-free.
"""
import collections
import os

import numpy as np

from rce.detection import adaptive_metrics
from rce.detection import calibration
from rce.results import result_files
from rce.tables import attack_names
from rce.tables import errors
from rce.tables import models

WB_ATTACK = 'carliniL2_specific'
WB_DETECTOR = 'k_density'
ENSEMBLE = attack_names.ENSEMBLE

# One run's identity: the attack, its Table 6 column, the detector it attacked (None:
# oblivious), the threat model, and its folder.
Run = collections.namedtuple('Run', ['attack', 'column', 'detector', 'targeted', 'directory'])

# What detect reports of the adaptive attacks: {targeted: {(detector, model): {eps: {column:
# record or reason}}}} (adaptive_metrics.threat_model_columns), Table 7's {targeted: {model:
# {(column, attacked): {scored_by: {eps: record}}}}} (oblivious: attacked None, its losses
# combined), C&W-wb's records per model (None without C&W-wb), and the run ids read.
AdaptiveResults = collections.namedtuple('AdaptiveResults', ['cells', 'transfer', 'wb',
                                                             'inputs'])


def find_runs(results_dir, dataset):
  """{model: [Run]} of every adaptive run of `dataset` under `results_dir` (incomplete ones
  are a ResultsError, as result_files.find_attacks)."""
  root = os.path.join(results_dir, 'adaptive_%s' % dataset)
  found = collections.defaultdict(list)
  if not os.path.isdir(root):
    return {}
  for entry in sorted(os.listdir(root)):
    for model in models.MODELS:
      directory = os.path.join(root, entry, model)
      if not os.path.isdir(directory):
        continue
      summary = result_files.load_summary(directory)
      info = attack_names.info(summary['attack'])
      settings = summary['attack_stats']['settings']
      if summary.get('model') != model or summary.get('dataset') != dataset:
        raise errors.ResultsError('%s holds results of the %s model on %s, not %s on %s'
                                  % (directory, summary.get('model'), summary.get('dataset'),
                                     model, dataset))
      found[model].append(Run(summary['attack'], info.adaptive, settings['detector'],
                              bool(settings['targeted']), directory))
  return dict(found)


def _check_run(run, summary, calib, kernel_summary):
  """ResultsError unless the run is of the kernel's checkpoint, read this very calibration
  and attacked test rows after its images."""
  made_by = summary['provenance']['model']['fingerprint']
  kernel_made_by = kernel_summary['provenance']['model']['fingerprint']
  if made_by != kernel_made_by:
    raise errors.ResultsError('%s was made by another checkpoint than the kernel of its model '
                              '(fingerprint %s vs %s); rerun the attack'
                              % (run.directory, made_by[:16], kernel_made_by[:16]))
  if summary.get('calibration_run_id') != calib.run_id:
    raise errors.ResultsError(
        '%s attacked the thresholds of another calibration (run %s, now %s); rerun the attack'
        % (run.directory, summary.get('calibration_run_id'), calib.run_id))
  calib.check_attack_rows(run.directory, int(summary.get('first_image', 0)),
                          summary['num_examples'])


def supervised_characteristics(directory, summary, calib):
  """{name: ([N, F] clean, [R, N, F] adversarial)} of the calibration's supervised detectors,
  as the run saved them; ResultsError when missing, mis-shaped or not finite."""
  if not calib.supervised:
    return {}
  arrays = result_files.load_supervised_characteristics(directory, summary) or {}
  n, rounds = summary['num_examples'], summary['num_rounds']
  out = {}
  for name, detector in calib.supervised.items():
    clean, adv = arrays.get(name + '_nor'), arrays.get(name + '_adv')
    width = detector.coef.size
    if clean is None or adv is None:
      raise errors.ResultsError('%s holds no %s characteristics of %s (made before the '
                                'calibration fitted it?); rerun the attack'
                                % (directory, result_files.SUPERVISED_FILE, name))
    if clean.shape != (n, width) or adv.shape != (rounds, n, width):
      raise errors.ResultsError('%s: %s of %s has shapes %s and %s, expected (%d, %d) and '
                                '(%d, %d, %d)' % (directory, result_files.SUPERVISED_FILE,
                                                  name, clean.shape, adv.shape, n, width,
                                                  rounds, n, width))
    if not (np.all(np.isfinite(clean)) and np.all(np.isfinite(adv))):
      raise errors.ResultsError('%s: %s holds non-finite characteristics of %s'
                                % (directory, result_files.SUPERVISED_FILE, name))
    out[name] = (clean, adv)
  return out


def _l_inf(directory, rounds):
  """[R, N] L-inf distance of each round's adversarial image to its clean image."""
  nor = np.load(os.path.join(directory, 'nor_img.npy'), allow_pickle=False)
  adv = np.load(os.path.join(directory, 'adv_img.npy'), allow_pickle=False)
  if adv.shape[0] != rounds or adv.shape[1:] != nor.shape:
    raise errors.ResultsError('%s: adv_img.npy has shape %s for %d rounds of nor_img.npy %s'
                              % (directory, adv.shape, rounds, nor.shape))
  diff = np.abs(adv.astype(np.float64) - nor[None].astype(np.float64))
  return diff.reshape(rounds, nor.shape[0], -1).max(axis=2)


def _success(data, targets, targeted):
  return data['labels_adv'] == targets if targeted else data['labels_adv'] != data['labels_true']


def scored_by(calib):
  """The detectors a run of `calib` is scored by: its own, then the ensemble when it holds
  every member."""
  names = calib.names
  if all(n in names for n in attack_names.ENSEMBLE_MEMBERS):
    names = names + [ENSEMBLE]
  return names


def ensemble_scores(scores, thresholds):
  """{fpr: [N]} max over the members of (score - its threshold at fpr): <= 0 exactly when
  every member accepts (each at its own threshold)."""
  return {fpr: np.max([np.asarray(scores[m], np.float64) - thresholds[m][fpr]
                       for m in attack_names.ENSEMBLE_MEMBERS], axis=0)
          for fpr in adaptive_metrics.FPRS}


def round_scores(calib, data, chars, r):
  """{name: (clean [N], adversarial [N]) scores} of every detector of `calib` in round r."""
  out = {name: (d.score(data['logits_nor'], data['labels_nor']),
                d.score(data['logits_adv'], data['labels_adv']))
         for name, d in calib.detectors.items()}
  for name, (clean, adv) in chars.items():
    detector = calib.supervised[name]
    out[name] = (detector.score(clean), detector.score(adv[r]))
  return out


def _records(run, calib, summary, names):
  """{detector: {eps: AdaptiveEvaluation}} of one run, scored by each detector of `names`."""
  rounds = summary['num_rounds']
  l_inf = _l_inf(run.directory, rounds)
  chars = supervised_characteristics(run.directory, summary, calib)
  zero = {f: 0.0 for f in adaptive_metrics.FPRS}
  out = collections.defaultdict(dict)
  for r in range(rounds):
    data = result_files.load_attack_round(run.directory, r)
    eps = float(summary['eps'][r])
    clean_correct = data['labels_nor'] == data['labels_true']
    success = _success(data, np.asarray(summary['targets'], np.int64), run.targeted)
    scores = round_scores(calib, data, chars, r)
    for name in names:
      if name == ENSEMBLE:
        clean = ensemble_scores({m: scores[m][0] for m in scores}, calib.thresholds)
        adv = ensemble_scores({m: scores[m][1] for m in scores}, calib.thresholds)
        thresholds = zero
      else:
        (clean, adv), thresholds = scores[name], calib.thresholds[name]
      out[name][eps] = adaptive_metrics.evaluate(
          clean_correct, clean, success, adv, thresholds, l_inf[r], data['L2_distance'],
          attack=run.column, eps=eps)
  return out


def _cw_targets(summary, labels_true, num_classes):
  """The C&W targets of a C&W folder's images, recomputed as the attack drew them: from all
  its true labels and its --seed."""
  return attack_names.random_targets(labels_true, summary['provenance']['flags']['seed'],
                                     num_classes)


def _kernel(results_dir, dataset, rce, kernel_summary):
  """(kernel npz, summary) of a model: the very one detect read (`kernel_summary`), when it
  read one (a model with adaptive runs only has none)."""
  kernel_dir = result_files.kernel_dir(dataset, results_dir)
  kernel, summary = result_files.load_kernel_params(kernel_dir, rce, dataset)
  if kernel_summary is not None and result_files.run_id(summary) != result_files.run_id(
      kernel_summary):
    raise errors.ResultsError('%s: the kernel of the %s model changed while detect read it; '
                              'rerun detect' % (kernel_dir, models.model_name(rce)))
  return kernel, summary


def check_supervised_fit(calib, model, fitted_on):
  """ResultsError when the calibration fitted its supervised detectors on other attack
  results or characteristics than the ones detect reads (`fitted_on`: {model: (attack run
  id, characteristics run id)} of the attack they are trained on; a model absent: not read,
  nothing to compare)."""
  record = calib.summary.get('supervised') or {}
  if not calib.supervised or model not in fitted_on:
    return
  made = (record.get('attack_run_id'), record.get('characteristics_run_id'))
  if tuple(fitted_on[model]) != made:
    raise errors.ResultsError(
        '%s fitted the supervised detectors on %s run %s (characteristics %s), but detect '
        'reads run %s (characteristics %s): rerun test_adv.py --mode=calibrate and Table 6\'s '
        'attacks of the %s model' % (calib.directory, record.get('trained_on'), made[0],
                                     made[1], fitted_on[model][0], fitted_on[model][1], model))


def evaluate(results_dir, dataset, kernel_summaries, num_classes, wb_dirs=None,
             fitted_on=None):
  """The AdaptiveResults of every adaptive run under `results_dir`, or None without any.

  Args:
    kernel_summaries: {model: kernel summary} (as detect loaded them).
    num_classes: of the data set (C&W-wb's targets).
    wb_dirs: {model: C&W-wb result folder} to rescore, or None.
    fitted_on: {model: (attack run id, characteristics run id)} of the attack the supervised
      detectors are trained on, as detect read them (check_supervised_fit), or None.
  """
  runs = find_runs(results_dir, dataset)
  if not runs:
    return None
  cells = {False: {}, True: {}}
  transfer = {False: {}, True: {}}
  wb, inputs = {}, {'calibrations': {}, 'runs': {}}
  for model, model_runs in sorted(runs.items()):
    rce = model == models.model_name(True)
    kernel, kernel_summary = _kernel(results_dir, dataset, rce, kernel_summaries.get(model))
    calib = calibration.load(results_dir, dataset, rce, kernel, kernel_summary)
    inputs['calibrations'][model] = calib.run_id
    check_supervised_fit(calib, model, fitted_on or {})
    names = scored_by(calib)
    columns = {False: collections.defaultdict(dict), True: collections.defaultdict(dict)}
    transfer_runs = {False: collections.defaultdict(dict), True: collections.defaultdict(dict)}
    for run in model_runs:
      summary = result_files.load_verified_summary(run.directory)
      _check_run(run, summary, calib, kernel_summary)
      if run.detector is not None and run.detector not in names:
        raise errors.ResultsError('%s attacked %s, which %s does not hold' % (
            run.directory, run.detector, calib.directory))
      inputs['runs'][os.path.relpath(run.directory, results_dir)] = result_files.run_id(summary)
      for name, by_eps in _records(run, calib, summary, names).items():
        source = transfer_runs[run.targeted][(run.column, run.detector)].setdefault(name, {})
        for eps, record in by_eps.items():
          source.setdefault(eps, []).append(record)
          if run.detector in (None, name):  # Table 6: oblivious for all, aware for its own
            columns[run.targeted][name].setdefault(run.column, {}).setdefault(
                eps, []).append(record)
    for targeted, per_detector in columns.items():
      for name, runs_of_detector in per_detector.items():
        cells[targeted][(name, model)] = adaptive_metrics.threat_model_columns(
            runs_of_detector)
      if transfer_runs[targeted]:
        transfer[targeted][model] = {
            source: {name: {eps: adaptive_metrics.combine(records, source[0], eps)
                            for eps, records in by_eps.items()}
                     for name, by_eps in per_name.items()}
            for source, per_name in transfer_runs[targeted].items()}
    if wb_dirs and model in wb_dirs:
      wb[model] = _wb_record(wb_dirs[model], calib, num_classes)
  return AdaptiveResults(cells, transfer, wb or None, inputs)


def _wb_record(directory, calib, num_classes):
  """C&W-wb's images as they are, scored by the K-density detector at the calibrated
  thresholds (targeted: success is the target reached)."""
  summary = result_files.load_verified_summary(directory)
  calib.check_attacked(summary['num_examples'])
  data = result_files.load_attack_round(directory, 0)
  targets = _cw_targets(summary, data['labels_true'], num_classes)
  detector = calib.detectors[WB_DETECTOR]
  l_inf = _l_inf(directory, summary['num_rounds'])[0]
  return adaptive_metrics.evaluate(
      data['labels_nor'] == data['labels_true'],
      detector.score(data['logits_nor'], data['labels_nor']), data['labels_adv'] == targets,
      detector.score(data['logits_adv'], data['labels_adv']), calib.thresholds[WB_DETECTOR],
      l_inf, data['L2_distance'], attack=WB_ATTACK)
