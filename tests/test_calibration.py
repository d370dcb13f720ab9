"""The detectors' calibrated thresholds (rce.detection.calibration), without a model: the tie
rule and the false-positive rate on the calibration images, the saved record read back, and
the refusals of an attack that reaches the calibration images or a stale kernel."""
import numpy as np
import pytest

from rce.detection import adaptive_metrics
from rce.detection import calibration
from rce.detection import characteristics
from rce.detection import final_feature_detectors
from rce.results import result_files
from rce.tables import errors

SETTINGS = calibration.DetectorSettings(lid_k=5, lid_reference=30, seed=3)


def _kernel(rng, per_class=20, classes=3, dim=6):
  labels = np.repeat(np.arange(classes), per_class)
  points = rng.randn(per_class * classes, dim).astype(np.float32) + 3.0 * labels[:, None]
  means, precision = characteristics.class_statistics(points, labels, classes)
  return {'points': points, 'point_labels': labels, 'sigma2': np.float64(1.0 / 0.26),
          characteristics.stats_key('means', 'feature'): means,
          characteristics.stats_key('precision', 'feature'): precision}


def test_every_threshold_flags_at_most_its_rate_ties_accepted():
  rng = np.random.RandomState(0)
  kernel = _kernel(rng)
  detectors = calibration.build_detectors(kernel, SETTINGS)
  assert list(detectors) == list(final_feature_detectors.DETECTOR_NAMES)
  features = rng.randn(157, 6) * 2.0 + 3.0
  predicted = rng.randint(0, 3, 157)
  scores, thresholds = calibration.calibrate(detectors, features, predicted)
  for name, detector in detectors.items():
    np.testing.assert_array_equal(scores[name], detector.score(features, predicted))
    for fpr in calibration.FPRS:
      t = thresholds[name][fpr]
      assert np.mean(scores[name] > t) <= fpr
      assert t in scores[name]  # a calibration score, accepted (score <= t)
      # the smallest such threshold: one calibration score lower flags more than fpr
      lower = scores[name][scores[name] < t]
      if lower.size:
        assert np.mean(scores[name] > lower.max()) > fpr
  # Ties: 100 scores of which 10 tie at the top; the 5 % threshold is the tie and accepts all.
  tied = np.concatenate([np.arange(90.0), np.full(10, 99.0)])
  assert adaptive_metrics.thresholds_at(tied)[0.05] == 99.0
  assert adaptive_metrics.thresholds_at(tied)[0.5] == 49.0


def test_too_few_or_non_finite_calibration_scores_are_refused():
  rng = np.random.RandomState(1)
  detectors = calibration.build_detectors(_kernel(rng), SETTINGS)
  with pytest.raises(ValueError, match='at least 20 clean images'):
    calibration.calibrate(detectors, rng.randn(5, 6), np.zeros(5, int))
  features = rng.randn(30, 6)
  features[3] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    calibration.calibrate(detectors, features, np.zeros(30, int))


def test_the_saved_calibration_reads_back_with_the_same_detectors(tmp_path):
  rng = np.random.RandomState(2)
  kernel = _kernel(rng)
  detectors = calibration.build_detectors(kernel, SETTINGS)
  features, predicted = rng.randn(60, 6) + 3.0, rng.randint(0, 3, 60)
  scores, thresholds = calibration.calibrate(detectors, features, predicted)
  summary = calibration.summary_block(thresholds, SETTINGS, start=40, count=60,
                                      clean_accuracy=0.9)
  loaded = calibration.from_summary(kernel, summary, str(tmp_path), 'run-1')
  assert loaded.start == 40 and loaded.settings == SETTINGS and loaded.run_id == 'run-1'
  for name in detectors:
    assert loaded.thresholds[name] == pytest.approx(thresholds[name])
    np.testing.assert_array_equal(loaded.detectors[name].score(features, predicted),
                                  scores[name])
  # the LID reference is the same seeded draw of the kernel points
  np.testing.assert_array_equal(loaded.detectors['lid'].reference,
                                detectors['lid'].reference)
  loaded.check_attacked(40)
  with pytest.raises(errors.ResultsError, match='calibrated on test images 40.. but this '
                     'run attacks the first 41'):
    loaded.check_attacked(41)


def test_thresholds_of_another_kernel_or_model_are_refused(tmp_path):
  kernel_summary = {'provenance': {'run_id': 'kernel-2'}}
  directory = str(tmp_path / 'thresholds_mnist' / 'RCE')
  result_files.save_thresholds(directory, {'scores_lid': np.zeros(3)}, {
      'dataset': 'mnist', 'model': 'RCE', 'kernel_run_id': 'kernel-1',
      'provenance': {'run_id': 'calib-1'}})
  with pytest.raises(errors.ResultsError, match='another kernel'):
    result_files.load_thresholds_summary(directory, True, 'mnist', kernel_summary)
  with pytest.raises(errors.ResultsError, match='thresholds of the RCE model on mnist, not CE'):
    result_files.load_thresholds_summary(directory, False, 'mnist', kernel_summary)
  with pytest.raises(errors.ResultsError, match='--mode=calibrate'):
    result_files.load_thresholds_summary(str(tmp_path / 'none'), True, 'mnist',
                                         kernel_summary)
