"""test_adv.py --mode=kernel_para, --mode=calibrate and --mode=characteristics: what the
detectors learn from a restored model.

kernel_para: the features of training images -> the K-density's kernel points and per-class
medians, and Lee et al.'s class means and shared covariance of every layer, in
kernel_para_{dataset}/. calibrate: the final-feature detectors' thresholds at 1 / 5 / 50 %
false positives on clean test images after the attacked ones, in thresholds_{dataset}/{M}/
(rce.detection.calibration). characteristics: the LID and Mahalanobis characteristics of every
attack folder of one model (characteristics_runner), in {attack folder}/characteristics/.

The modes take their settings as values (test_adv.py builds them from its flags), so tests
call them directly.
"""
import collections
import os

from absl import logging

from rce.detection import attack_evaluation
from rce.detection import calibration
from rce.detection import characteristics_runner
from rce.detection import detection
from rce.detection import supervised_scoring
from rce.model import restored_model
from rce.results import consistency
from rce.results import io_utils
from rce.results import provenance
from rce.results import result_files
from rce.tables import attack_names
import dataset_input

# --mode=kernel_para: `num_images` training images of `data_path` (glob pattern); the kernel's
# `per_class` points and the white-box attack's `subset` per class, drawn with `seed`; the
# folder of kernel_para_{dataset}/; `flags`: {name: value} of the flags that change it.
KernelSettings = collections.namedtuple('KernelSettings', [
    'source', 'data_path', 'num_images', 'per_class', 'subset', 'seed', 'results_dir',
    'flags'])

# --mode=characteristics: the attack folders under `results_dir`; the 1-based eps round of the
# swept attacks; LID's neighbours `lid_k` within minibatches of `lid_batch`; the noise `seed`;
# `flags`: {name: value} of the flags that change them.
CharacteristicsSettings = collections.namedtuple('CharacteristicsSettings', [
    'source', 'results_dir', 'eps_round', 'lid_k', 'lid_batch', 'seed', 'flags'])


# --mode=calibrate: the `num_images` test images of `data_path` after its first `attacked`
# (the attacks' images); the final-feature detectors made with `detectors`
# (calibration.DetectorSettings); the supervised ones fitted on the characteristics of
# `eps_round` (1-based, as detect reads them).
CalibrationSettings = collections.namedtuple('CalibrationSettings', [
    'source', 'data_path', 'attacked', 'num_images', 'detectors', 'eps_round', 'results_dir',
    'flags'])


def run_kernel_para(settings):
  """Training features -> kernel points and per-class medians; returns the output folder."""
  s, dataset, rce = settings, settings.source.dataset, settings.source.hps.RCE_train
  files = dataset_input.validate_files(dataset, s.data_path)
  images, labels = dataset_input.load_arrays(dataset, s.data_path, s.num_images, files)
  model = restored_model.restore(s.source)
  out_dir = result_files.kernel_dir(dataset, s.results_dir)
  io_utils.check_writable_dir(out_dir, '--results_dir')
  layer_model = characteristics_runner.LayerModel(model)
  pooled = layer_model.outputs(images, pooled=True)  # one pass: every layer, the feature last
  model.close()
  features = pooled[layer_model.names.index('feature')]
  num_classes = model.hps.num_classes
  params = detection.kernel_params(features, labels, rce, num_classes, s.per_class, s.subset,
                                   s.seed)
  # Lee et al.'s class means and shared covariance of every layer, for --mode=characteristics.
  params.update(characteristics_runner.training_statistics(layer_model.names, pooled, labels,
                                                           num_classes))
  result_files.save_kernel_params(
      out_dir, rce, features, labels, params,
      {'dataset': dataset, 'num_examples': len(features),
       'provenance': restored_model.result_provenance(model, provenance.data_record(files),
                                                      s.flags)})
  print('wrote kernel parameters of %d training features (%s) to %s'
        % (len(features), result_files.model_name(rce), out_dir))
  return out_dir


def run_characteristics(settings):
  """LID and Mahalanobis characteristics of every attack folder of the model under
  `results_dir`, into {attack folder}/characteristics/; returns {attack: attack folder}.

  Every folder and the kernel are checked to be of the restored checkpoint before any work.
  """
  s, dataset, rce = settings, settings.source.dataset, settings.source.hps.RCE_train
  model_name = result_files.model_name(rce)
  found = {a: dirs[model_name] for a, dirs in result_files.find_attacks(
      s.results_dir, dataset, (model_name,)).items()}
  if not found:
    raise result_files.ResultsError(
        'no attack results of the %s model for %s under --results_dir=%s; run test_adv.py '
        '--mode=attack first' % (model_name, dataset, s.results_dir))
  kernel_dir = result_files.kernel_dir(dataset, s.results_dir)
  kernel, kernel_summary = result_files.load_kernel_params(kernel_dir, rce, dataset)
  model = restored_model.restore(s.source)
  made = restored_model.restored(model, s.source.log_root)
  consistency.check_kernel_of(kernel_summary, kernel_dir, rce, made)
  for _, directory in sorted(found.items()):
    consistency.check_attack_of(result_files.load_verified_summary(directory), directory, made)
    io_utils.check_writable_dir(directory, '--results_dir')
  stats = characteristics_runner.stats_from_kernel(kernel, list(model.layers), kernel_dir, rce)
  layer_model = characteristics_runner.LayerModel(model, stats)
  model.graph.finalize()
  for attack in attack_names.ordered(found):
    arrays, facts = characteristics_runner.attack_characteristics(
        layer_model, stats, found[attack], s.eps_round, s.lid_k, s.lid_batch, s.seed)
    data = result_files.load_summary(found[attack])['provenance']['data']
    summary = dict(facts, attack=attack, model=model_name, dataset=dataset,
                   kernel_run_id=result_files.run_id(kernel_summary),
                   provenance=restored_model.result_provenance(model, data, s.flags))
    result_files.save_characteristics(found[attack], arrays, summary)
    print('wrote the characteristics of %s (%s, %d examples, eps %s) to %s' % (
        attack, model_name, facts['num_examples'], facts['eps'],
        result_files.characteristics_dir(found[attack])))
  model.close()
  return found


def _supervised(settings, model_name):
  """calibration.fit_supervised of the results under --results_dir ({} and the reason when
  there are no attack results or characteristics to fit them on)."""
  found = {}
  if os.path.isdir(settings.results_dir):
    found = result_files.find_attacks(settings.results_dir, settings.source.dataset)
  if not found:
    return {}, {'reason': 'no attack results under --results_dir=%s' % settings.results_dir}
  loaded = attack_evaluation.load_rounds(settings.results_dir, settings.source.dataset, found,
                                         settings.eps_round)
  return calibration.fit_supervised(loaded, model_name)


def run_calibrate(settings):
  """The detectors' thresholds at 1 / 5 / 50 % false positives on clean test images after
  the attacked ones -> thresholds_{dataset}/{RCE|CE}/; returns the folder."""
  s, dataset, rce = settings, settings.source.dataset, settings.source.hps.RCE_train
  model_name = result_files.model_name(rce)
  files = dataset_input.validate_files(dataset, s.data_path)
  images, labels = dataset_input.load_arrays(dataset, s.data_path,
                                             s.attacked + s.num_images, files)
  images, labels = images[s.attacked:], labels[s.attacked:]
  if len(images) < s.num_images:
    logging.warning('the test files hold %d images after the %d attacked ones, fewer than '
                    '--calibration_images=%d: calibrating on %d', len(images), s.attacked,
                    s.num_images, len(images))
  kernel_dir = result_files.kernel_dir(dataset, s.results_dir)
  kernel, kernel_summary = result_files.load_kernel_params(kernel_dir, rce, dataset)
  detectors = calibration.build_detectors(kernel, s.detectors)
  supervised, record = _supervised(s, model_name)
  calibration.check_not_trained_on(record, s.attacked)
  if not supervised:
    logging.warning('no supervised detectors calibrated: %s', record['reason'])
  out_dir = result_files.thresholds_dir(dataset, rce, s.results_dir)
  io_utils.check_writable_dir(out_dir, '--results_dir')
  model = restored_model.restore(s.source)
  consistency.check_kernel_of(kernel_summary, kernel_dir, rce,
                              restored_model.restored(model, s.source.log_root))
  scorer = None
  if supervised:
    stats = characteristics_runner.stats_from_kernel(kernel, list(model.layers), kernel_dir,
                                                     rce)
    scorer = supervised_scoring.SupervisedScorer(model, stats, detectors['k_density'])
  logits, features = model.outputs(images)
  predicted = logits.argmax(axis=1)
  supervised_scores = {name: scorer.scores(d, images, predicted)
                       for name, d in supervised.items()}
  model.close()
  scores, thresholds = calibration.calibrate(detectors, features, predicted, supervised_scores)
  summary = calibration.summary_block(thresholds, s.detectors, s.attacked, len(images),
                                      float((predicted == labels).mean()), record)
  summary.update(dataset=dataset, model=model_name,
                 kernel_run_id=result_files.run_id(kernel_summary),
                 provenance=restored_model.result_provenance(
                     model, provenance.data_record(files), s.flags))
  arrays = dict({'scores_' + name: v for name, v in scores.items()}, labels=labels,
                predicted=predicted, features=features)
  for detector in supervised.values():
    arrays.update(detector.arrays())
  result_files.save_thresholds(out_dir, arrays, summary)
  print('wrote the thresholds of %s (%s) at false-positive rates %s on %d clean test images '
        '(%d..%d) to %s' % (', '.join(thresholds), model_name,
                            ' / '.join('%g %%' % (100 * f) for f in calibration.FPRS),
                            len(images), s.attacked, s.attacked + len(images) - 1, out_dir))
  return out_dir
