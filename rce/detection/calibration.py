"""The detectors' thresholds, fixed on clean images before any adaptive attack sees them.

The detectors: the final-feature ones (final_feature_detectors: K-density, Mahalanobis,
LID), made from the kernel, and, once the characteristics of the attack they are trained on
exist, the supervised ones (supervised_detectors: Table 4's regressions trained on
dchar.SEEN_ATTACK), fitted here exactly as --mode=detect fits them (the same split and
dchar.supervised) and kept with the calibration. Scores are oriented higher = more suspicious. Each is
thresholded at the false-positive rates of adaptive_metrics.FPRS (1 %, 5 %, 50 %) on clean
calibration images no attack touches and no detector was trained on: the test images right
after the attacked ones (the supervised detectors' training images are among those). Tie rule
(characteristics.fpr_threshold): an image is accepted when its score <= the threshold, so at
most that share of the calibration images is flagged. Every adaptive attack and Table 6 read
the thresholds, and the detectors they belong to, from the one folder --mode=calibrate
writes. TensorFlow-free.
"""
import collections
import os

import numpy as np

from rce.detection import adaptive_metrics
from rce.detection import detect_characteristics as dchar
from rce.detection import final_feature_detectors
from rce.detection import supervised_detectors
from rce.detection import supervised_evaluation
from rce.results import consistency
from rce.results import result_files
from rce.tables import errors

FPRS = adaptive_metrics.FPRS
DETECTOR_NAMES = final_feature_detectors.DETECTOR_NAMES
SUPERVISED_NAMES = supervised_detectors.DETECTOR_NAMES
# Fewest calibration images: below this even the 5 % threshold is the maximum of a handful.
MIN_IMAGES = 20

# How the detectors are made from the kernel: LID's neighbours, the rows of its reference
# (drawn from the kernel points with `seed`).
DetectorSettings = collections.namedtuple('DetectorSettings', ['lid_k', 'lid_reference',
                                                               'seed'])


def build_detectors(kernel, settings, names=DETECTOR_NAMES):
  """{name: detector} of the kernel npz `kernel` (dict) with DetectorSettings `settings`."""
  return {name: final_feature_detectors.from_kernel(name, kernel, settings.lid_k,
                                                    settings.lid_reference, settings.seed)
          for name in names}


def threshold_key(fpr):
  """The JSON key of a false-positive rate ('0.05')."""
  return '%g' % fpr


def calibrate(detectors, features, predicted, supervised_scores=None):
  """Scores and thresholds of each detector on the clean calibration images.

  Args:
    detectors: {name: final-feature detector}.
    features: [M, D] final features of the calibration images; predicted: [M] their
      predicted classes (the class K-density scores against).
    supervised_scores: {name: [M] scores} of the supervised detectors on the same images
      (computed from the model: supervised_scoring), or None.

  Returns:
    ({name: [M] scores}, {name: {fpr: threshold}}), the final-feature detectors first.

  Raises:
    ValueError: fewer than MIN_IMAGES images, or a score that is not finite.
  """
  if len(features) < MIN_IMAGES:
    raise ValueError('calibration needs at least %d clean images, got %d (the test images '
                     'after the attacked ones; attack fewer images or give more test data)'
                     % (MIN_IMAGES, len(features)))
  scores = {name: detector.score(features, predicted) for name, detector in detectors.items()}
  scores.update(supervised_scores or {})
  thresholds = {}
  for name, values in scores.items():
    values = np.asarray(values, np.float64)
    if values.shape != (len(features),) or not np.all(np.isfinite(values)):
      raise ValueError('%s scores %d of the %d calibration images as non-finite (or gives %s '
                       'scores)' % (name, int(np.sum(~np.isfinite(values))), len(features),
                                    values.shape))
    thresholds[name] = adaptive_metrics.thresholds_at(values, FPRS)
  return scores, thresholds


def fit_supervised(loaded, model):
  """The supervised detectors of `model`, fitted as --mode=detect fits Table 4's cells of
  dchar.SEEN_ATTACK, and the record of what they were fitted on.

  Args:
    loaded: attack_evaluation.LoadedRounds of the results (both models' attacks).
    model: 'CE' or 'RCE'.

  Returns:
    ({name: SupervisedDetector}, record) or ({}, {'reason': why none}) when the attack has
    no characteristics of this model or a detector cannot be fitted.
  """
  attack = supervised_detectors.TRAINED_ON
  found = dict(loaded.rounds).get(attack, {}).get(model)
  if found is None or found.characteristics is None:
    return {}, {'reason': 'no characteristics of %s on the %s model (test_adv.py '
                          '--mode=characteristics)' % (attack, model)}
  directory = found.evaluation.directory
  chars_summary = result_files.load_verified_summary(result_files.characteristics_dir(directory))
  flags = chars_summary['provenance']['flags']
  arrays = found.characteristics.arrays
  layers = [str(n) for n in arrays['layers']]
  split = supervised_evaluation.example_split(loaded.rounds)
  reference_rows = int(flags['lid_batch'])
  normal = np.load(os.path.join(directory, 'nor_img.npy'), allow_pickle=False)
  detectors, settings = {}, {}
  for kind in supervised_detectors.NAMES:  # as supervised_evaluation.evaluate fits Table 4
    fitted = dchar.supervised(kind, found.characteristics.sets[kind], found.keep, split.train,
                              split.test)
    if fitted['model'] is None:
      return {}, {'reason': 'the %s detector of %s on %s is not fitted: %s'
                            % (kind, attack, model, fitted['reason'])}
    options = {}
    if kind == 'mahalanobis':
      options['eps'] = float(arrays['mahalanobis_eps'][fitted['eps_index']])
    if kind == 'lid':
      options.update(lid_k=int(flags['lid_k']), reference_images=normal[:reference_rows])
    detector = supervised_detectors.from_fit(kind, fitted, ['feature'] if kind == 'k_density'
                                             else layers, **options)
    detectors[detector.name] = detector
    settings[detector.name] = {'eps': detector.eps, 'lid_k': detector.lid_k,
                               'layers': detector.layers}
  record = {'trained_on': attack, 'attack_run_id': found.evaluation.run_id,
            'characteristics_run_id': found.characteristics.run_id,
            'eps_round_index': int(chars_summary['eps_round_index']),
            'split': {'train': len(split.train), 'test': len(split.test), 'seed': split.seed,
                      'stratified': bool(split.stratified)},
            'fitted_on_images': int(split.num_images),
            'lid_reference_rows': [0, reference_rows], 'detectors': settings}
  return detectors, record


def check_not_trained_on(record, start):
  """ValueError when calibration images from row `start` on include images the supervised
  detectors were fitted on (rows 0 .. fitted_on_images - 1)."""
  if record and record.get('fitted_on_images', 0) > start:
    raise ValueError('the supervised detectors were fitted on the first %d test images, but '
                     'the calibration images start at %d: calibrate after all of them '
                     '(--eval_batch_count x --attack_batch_size of the attacks)'
                     % (record['fitted_on_images'], start))


def summary_block(thresholds, settings, start, count, clean_accuracy, supervised=None):
  """The JSON record of a calibration: thresholds per detector and fpr, how the detectors
  were made (the supervised ones: `supervised`, fit_supervised's record), which test images
  (rows start .. start + count - 1) and their clean accuracy."""
  return {'fprs': list(FPRS), 'detectors': list(thresholds),
          'thresholds': {name: {threshold_key(f): float(t) for f, t in per.items()}
                         for name, per in thresholds.items()},
          'detector_settings': settings._asdict(),
          'supervised': supervised,
          'calibration': {'start': int(start), 'count': int(count),
                          'clean_accuracy': float(clean_accuracy),
                          'tie_rule': 'accepted when score <= threshold'}}


class Calibration(collections.namedtuple('Calibration', [
    'detectors',  # {name: detector}, made from the kernel as the calibration made them
    'supervised',  # {name: SupervisedDetector}, as the calibration fitted them ({}: none)
    'thresholds',  # {name: {fpr: threshold}} of both kinds
    'settings',  # DetectorSettings
    'start',  # the first calibration row of the test data: attacks may use rows below it
    'run_id',  # of the calibration result, for the provenance of what uses it
    'directory',
    'summary',  # its summary as read (the model that made it)
])):
  """A model's detectors and their thresholds, as --mode=calibrate fixed them."""
  __slots__ = ()

  def threshold(self, detector, fpr):
    return self.thresholds[detector][fpr]

  @property
  def end(self):
    """The first test row after the calibration images: where Table 6's attacks start (the
    rows before are the supervised detectors' training images and the calibration's)."""
    return self.start + int(self.summary['calibration']['count'])

  @property
  def names(self):
    """Every detector it thresholds, final-feature ones first."""
    return list(self.thresholds)

  def check_attack_rows(self, directory, first, count):
    """ResultsError unless an adaptive run's test rows first .. first + count - 1 all come
    after the calibration images (and so after the supervised detectors' training rows)."""
    if first < self.end:
      raise errors.ResultsError(
          '%s attacked test images %d..%d, but %s calibrated on %d..%d: rerun the attack '
          '(it starts after the calibration images)' % (directory, first, first + count - 1,
                                                        self.directory, self.start,
                                                        self.end - 1))

  def check_model(self, model):
    """ResultsError unless the calibration was made by the restored `model` (a
    consistency.Restored)."""
    consistency.check_attack_of(self.summary, self.directory, model,
                                'test_adv.py --mode=calibrate')

  def check_attacked(self, num_images):
    """ResultsError when the first `num_images` test images reach the calibration images."""
    if num_images > self.start:
      raise errors.ResultsError(
          '%s: the thresholds were calibrated on test images %d.. but this run attacks the '
          'first %d: rerun test_adv.py --mode=calibrate with the attack\'s '
          '--eval_batch_count and --attack_batch_size' % (self.directory, self.start,
                                                          num_images))


def from_summary(kernel, summary, directory, run_id, arrays=None):
  """The Calibration of a calibration summary (its final-feature detectors rebuilt from
  `kernel`, its supervised ones read from `arrays`, its calibration.npz)."""
  block = summary['detector_settings']
  settings = DetectorSettings(int(block['lid_k']), int(block['lid_reference']),
                              int(block['seed']))
  thresholds = {name: {f: float(summary['thresholds'][name][threshold_key(f)]) for f in FPRS}
                for name in summary['detectors']}
  supervised = {}
  names = [n for n in summary['detectors'] if n in SUPERVISED_NAMES]
  if names:
    if arrays is None:
      raise errors.ResultsError('%s: the calibration holds supervised detectors but its '
                                'arrays were not read' % directory)
    supervised = supervised_detectors.from_arrays(arrays)
    missing = sorted(set(names) - set(supervised))
    if missing:
      raise errors.ResultsError('%s: %s holds no numbers of %s; rerun --mode=calibrate'
                                % (directory, result_files.THRESHOLDS_ARRAYS,
                                   ', '.join(missing)))
  final = [n for n in summary['detectors'] if n not in SUPERVISED_NAMES]
  return Calibration(build_detectors(kernel, settings, final), supervised, thresholds,
                     settings, int(summary['calibration']['start']), run_id, directory,
                     summary)


def load(results_dir, dataset, rce, kernel, kernel_summary, model=None):
  """The Calibration of a model under `results_dir`, checked to be of its kernel
  (`kernel_summary`) and, when given, of the restored `model` (a consistency.Restored)."""
  directory = result_files.thresholds_dir(dataset, rce, results_dir)
  summary = result_files.load_thresholds_summary(directory, rce, dataset, kernel_summary)
  arrays = result_files.load_thresholds_arrays(directory)
  calibrated = from_summary(kernel, summary, directory, result_files.run_id(summary), arrays)
  if model is not None:
    calibrated.check_model(model)
  return calibrated
