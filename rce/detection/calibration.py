"""The detectors' thresholds, fixed on clean images before any adaptive attack sees them.

Each final-feature detector (final_feature_detectors: K-density, Mahalanobis, LID; scores
higher = more suspicious) is thresholded at the false-positive rates of
adaptive_metrics.FPRS (1 %, 5 %, 50 %) on clean calibration images that no attack touches:
the test images right after the attacked ones. Tie rule (characteristics.fpr_threshold): an
image is accepted when its score <= the threshold, so at most that share of the calibration
images is flagged. Every adaptive attack and Table 6 reads the thresholds, and the detectors
they belong to, from the one file --mode=calibrate writes. TensorFlow-free.
"""
import collections

import numpy as np

from rce.detection import adaptive_metrics
from rce.detection import final_feature_detectors
from rce.results import consistency
from rce.results import result_files
from rce.tables import errors

FPRS = adaptive_metrics.FPRS
DETECTOR_NAMES = final_feature_detectors.DETECTOR_NAMES
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


def calibrate(detectors, features, predicted):
  """Scores and thresholds of each detector on the clean calibration features.

  Args:
    detectors: {name: detector}.
    features: [M, D] final features of the calibration images; predicted: [M] their
      predicted classes (the class K-density scores against).

  Returns:
    ({name: [M] scores}, {name: {fpr: threshold}}).

  Raises:
    ValueError: fewer than MIN_IMAGES images, or a score that is not finite.
  """
  if len(features) < MIN_IMAGES:
    raise ValueError('calibration needs at least %d clean images, got %d (the test images '
                     'after the attacked ones; attack fewer images or give more test data)'
                     % (MIN_IMAGES, len(features)))
  scores, thresholds = {}, {}
  for name, detector in detectors.items():
    values = detector.score(features, predicted)
    if not np.all(np.isfinite(values)):
      raise ValueError('%s scores %d of the %d calibration images as non-finite'
                       % (name, int(np.sum(~np.isfinite(values))), len(values)))
    scores[name] = values
    thresholds[name] = adaptive_metrics.thresholds_at(values, FPRS)
  return scores, thresholds


def summary_block(thresholds, settings, start, count, clean_accuracy):
  """The JSON record of a calibration: thresholds per detector and fpr, how the detectors
  were made, which test images (rows start .. start + count - 1) and their clean accuracy."""
  return {'fprs': list(FPRS), 'detectors': list(thresholds),
          'thresholds': {name: {threshold_key(f): float(t) for f, t in per.items()}
                         for name, per in thresholds.items()},
          'detector_settings': settings._asdict(),
          'calibration': {'start': int(start), 'count': int(count),
                          'clean_accuracy': float(clean_accuracy),
                          'tie_rule': 'accepted when score <= threshold'}}


class Calibration(collections.namedtuple('Calibration', [
    'detectors',  # {name: detector}, made from the kernel as the calibration made them
    'thresholds',  # {name: {fpr: threshold}}
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


def from_summary(kernel, summary, directory, run_id):
  """The Calibration of a calibration summary (its detectors rebuilt from `kernel`)."""
  block = summary['detector_settings']
  settings = DetectorSettings(int(block['lid_k']), int(block['lid_reference']),
                              int(block['seed']))
  thresholds = {name: {f: float(summary['thresholds'][name][threshold_key(f)]) for f in FPRS}
                for name in summary['detectors']}
  return Calibration(build_detectors(kernel, settings, summary['detectors']), thresholds,
                     settings, int(summary['calibration']['start']), run_id, directory,
                     summary)


def load(results_dir, dataset, rce, kernel, kernel_summary, model=None):
  """The Calibration of a model under `results_dir`, checked to be of its kernel
  (`kernel_summary`) and, when given, of the restored `model` (a consistency.Restored)."""
  directory = result_files.thresholds_dir(dataset, rce, results_dir)
  summary = result_files.load_thresholds_summary(directory, rce, dataset, kernel_summary)
  calibrated = from_summary(kernel, summary, directory, result_files.run_id(summary))
  if model is not None:
    calibrated.check_model(model)
  return calibrated
