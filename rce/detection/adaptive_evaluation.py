"""Table 6's records: every adaptive attack's images scored by the detectors that decide.

Reads the runs of adaptive_{dataset}/{run}/{CE|RCE}/ (test_adv.py --mode=attack with a pgd_*
method) and each model's calibration (thresholds_{dataset}/{M}/), checks that they belong
together (the kernel's checkpoint, the calibration the detector-aware runs attacked, no
attacked image among the calibration images), and scores every round with the numpy
detectors of the calibration: an oblivious run counts for every detector's row, a
detector-aware run for the detector it attacked. C&W-wb (the paper's Table 3 attack) is
rescored at the same thresholds of the K-density detector it attacks. TensorFlow-free.
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

# One run's identity: the attack, its Table 6 column, the detector it attacked (None:
# oblivious), the threat model, and its folder.
Run = collections.namedtuple('Run', ['attack', 'column', 'detector', 'targeted', 'directory'])

# What detect reports of the adaptive attacks: {targeted: {(detector, model): {eps: {column:
# record or reason}}}} (adaptive_metrics.threat_model_columns), C&W-wb's records per model
# (None without C&W-wb), and the run ids read.
AdaptiveResults = collections.namedtuple('AdaptiveResults', ['cells', 'wb', 'inputs'])


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
  """ResultsError unless the run is of the kernel's checkpoint, attacked images below the
  calibration images and (detector-aware) attacked this very calibration."""
  made_by = summary['provenance']['model']['fingerprint']
  kernel_made_by = kernel_summary['provenance']['model']['fingerprint']
  if made_by != kernel_made_by:
    raise errors.ResultsError('%s was made by another checkpoint than the kernel of its model '
                              '(fingerprint %s vs %s); rerun the attack'
                              % (run.directory, made_by[:16], kernel_made_by[:16]))
  calib.check_attacked(summary['num_examples'])
  if run.detector is not None and summary.get('calibration_run_id') != calib.run_id:
    raise errors.ResultsError(
        '%s attacked the thresholds of another calibration (run %s, now %s); rerun the attack'
        % (run.directory, summary.get('calibration_run_id'), calib.run_id))


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


def _records(run, detectors, thresholds, summary):
  """{detector: {eps: AdaptiveEvaluation}} of one run, scored by `detectors`."""
  rounds = summary['num_rounds']
  l_inf = _l_inf(run.directory, rounds)
  out = collections.defaultdict(dict)
  for r in range(rounds):
    data = result_files.load_attack_round(run.directory, r)
    eps = float(summary['eps'][r])
    clean_correct = data['labels_nor'] == data['labels_true']
    success = _success(data, np.asarray(summary['targets'], np.int64), run.targeted)
    for name, detector in detectors.items():
      out[name][eps] = adaptive_metrics.evaluate(
          clean_correct, detector.score(data['logits_nor'], data['labels_nor']), success,
          detector.score(data['logits_adv'], data['labels_adv']), thresholds[name],
          l_inf[r], data['L2_distance'], attack=run.column, eps=eps)
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


def evaluate(results_dir, dataset, kernel_summaries, num_classes, wb_dirs=None):
  """The AdaptiveResults of every adaptive run under `results_dir`, or None without any.

  Args:
    kernel_summaries: {model: kernel summary} (as detect loaded them).
    num_classes: of the data set (C&W-wb's targets).
    wb_dirs: {model: C&W-wb result folder} to rescore, or None.
  """
  runs = find_runs(results_dir, dataset)
  if not runs:
    return None
  cells = {False: {}, True: {}}
  wb, inputs = {}, {'calibrations': {}, 'runs': {}}
  for model, model_runs in sorted(runs.items()):
    rce = model == models.model_name(True)
    kernel, kernel_summary = _kernel(results_dir, dataset, rce, kernel_summaries.get(model))
    calib = calibration.load(results_dir, dataset, rce, kernel, kernel_summary)
    inputs['calibrations'][model] = calib.run_id
    columns = {False: collections.defaultdict(dict), True: collections.defaultdict(dict)}
    for run in model_runs:
      summary = result_files.load_verified_summary(run.directory)
      _check_run(run, summary, calib, kernel_summary)
      inputs['runs'][os.path.relpath(run.directory, results_dir)] = result_files.run_id(summary)
      detectors = (calib.detectors if run.detector is None
                   else {run.detector: calib.detectors[run.detector]})
      for name, by_eps in _records(run, detectors, calib.thresholds, summary).items():
        per_column = columns[run.targeted][name].setdefault(run.column, {})
        for eps, record in by_eps.items():
          per_column.setdefault(eps, []).append(record)
    for targeted, per_detector in columns.items():
      for name, runs_of_detector in per_detector.items():
        cells[targeted][(name, model)] = adaptive_metrics.threat_model_columns(
            runs_of_detector)
    if wb_dirs and model in wb_dirs:
      wb[model] = _wb_record(wb_dirs[model], calib, num_classes)
  return AdaptiveResults(cells, wb or None, inputs)


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
