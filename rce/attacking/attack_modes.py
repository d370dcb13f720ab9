"""test_adv.py --mode=attack and --mode=merge_shards: attack a restored model, join shards.

attack: every check first (data, shard count, the white-box attack's kernel of this very
checkpoint, a writable output folder), then one graph with the attack built once and
finalized, then the rounds (C&W retried at smaller batches when the device memory runs out),
then the original's files with the summary last. merge_shards: the --num_shards shard
folders, checked to be of the same checkpoint, data and flags, -> the ordinary result folder.

The modes take their settings as values (test_adv.py builds them from its flags), so tests
call them directly.
"""
import collections

from absl import logging

import attacks
import dataset_input
from rce import placement
from rce.attacking import adaptive_runner
from rce.attacking import attack_runner
from rce.attacking import shards
from rce.detection import calibration
from rce.detection import characteristics_runner
from rce.model import checkpoints
from rce.model import restored_model
from rce.results import consistency
from rce.results import io_utils
from rce.results import provenance
from rce.results import result_files
from rce.tables import attack_names
from rce.tables import perturbation

# An attack run: `method` (an --attack_method) on the first `num_images` images of
# `data_path` (glob pattern) with the model of `source` (restored_model.ModelSource); `eps`
# one eps of the swept attacks, 0 for the sweep; `params` the attack_runner.AttackParams
# (params.cw_overrides['batch_size'] None: the C&W batch suits the device); the shard
# `shard_index` of `num_shards` (1: unsharded); the output folder from `save_pwd` or under
# `results_dir` (which holds the kernel files too); `flags` and `shard_flags`: {name: value}
# of the flags that change the result, and of those that say which shard it is.
AttackSettings = collections.namedtuple('AttackSettings', [
    'method', 'source', 'data_path', 'num_images', 'eps', 'params', 'num_shards',
    'shard_index', 'results_dir', 'save_pwd', 'flags', 'shard_flags'])


def attack_dir(settings):
  """The result folder of the (unsharded) attack: --save_pwd, or the default layout (Table
  6's attacks under adaptive_{dataset}/{run}/, the run naming detector and targeting)."""
  info = attack_names.info(settings.method)
  if info.adaptive:
    p = settings.params.adaptive or adaptive_runner.DEFAULT_PARAMS
    return result_files.adaptive_dir(
        attack_names.adaptive_run(settings.method, p.detector, p.targeted),
        settings.source.dataset, settings.source.hps.RCE_train, settings.save_pwd,
        settings.results_dir)
  return result_files.attack_dir(settings.method, settings.source.dataset,
                                 settings.source.hps.RCE_train, settings.save_pwd,
                                 settings.results_dir)


def _eps_list(settings, spec):
  """The eps of each round: --eps, or the sweep (Table 6's attacks: the data set's list)."""
  if spec.info.adaptive and settings.eps <= 0:
    return list(dataset_input.get_spec(settings.source.dataset).adaptive_eps)
  return perturbation.eps_schedule(settings.eps)


def run_attack(settings):
  """The attack of `settings` -> its result folder (or shard folder), which it returns."""
  s, dataset, rce = settings, settings.source.dataset, settings.source.hps.RCE_train
  spec = attacks.get_attack(s.method)
  files = dataset_input.validate_files(dataset, s.data_path)
  kernel = calibrated = stats = None
  kernel_dir = result_files.kernel_dir(dataset, s.results_dir)
  first = 0  # Table 6's attacks: the rows after the calibration images
  if spec.info.adaptive:
    adaptive_runner.check_unsharded(spec, s.num_shards)
  if spec.info.white_box or spec.info.adaptive:
    kernel, kernel_summary = result_files.load_kernel_params(kernel_dir, rce, dataset)
  if spec.info.adaptive:
    calibrated = calibration.load(s.results_dir, dataset, rce, kernel, kernel_summary)
    first = calibrated.end
  images, labels = dataset_input.load_arrays(dataset, s.data_path, first + s.num_images, files)
  images, labels = images[first:], labels[first:]
  if len(images) < s.num_images:
    if not len(images):
      raise ValueError('%s holds no test images after the %d calibrated on (%s): give more '
                       'test data or calibrate on fewer (--calibration_images)'
                       % (s.data_path, first, calibrated.directory))
    logging.warning('the test files hold %d images%s, fewer than %d = --eval_batch_count x '
                    '--attack_batch_size: attacking %d', len(images),
                    ' after the %d calibration rows' % first if first else '', s.num_images,
                    len(images))
  shards.check_count(len(images), s.num_shards)
  model = restored_model.restore(s.source)
  if spec.info.white_box or spec.info.adaptive:
    made = restored_model.restored(model, s.source.log_root)
    consistency.check_kernel_of(kernel_summary, kernel_dir, rce, made)
    if spec.info.adaptive:
      calibrated.check_model(made)
      if calibrated.supervised:
        stats = characteristics_runner.stats_from_kernel(kernel, list(model.layers),
                                                         kernel_dir, rce)
  out_dir = attack_dir(s)
  targets = attack_runner.random_targets(labels, s.params.seed, model.hps.num_classes)
  shard = None
  if s.num_shards > 1:  # this run's contiguous share; every image keeps its target
    start, end = shards.share(len(images), s.shard_index, s.num_shards)
    images, labels, targets = images[start:end], labels[start:end], targets[start:end]
    out_dir = shards.shard_dir(out_dir, s.shard_index, s.num_shards)
    shard = {'index': s.shard_index, 'count': s.num_shards, 'start': start, 'end': end}
  io_utils.check_writable_dir(out_dir, '--save_pwd' if s.save_pwd else '--results_dir')

  def attempt(cw_batch):
    """Builds the attack (C&W at `cw_batch`; None: its own) in a restored graph, runs it."""
    nonlocal model
    params = s.params
    if cw_batch is not None:
      params = params._replace(cw_overrides=dict(params.cw_overrides, batch_size=cw_batch))
    model = model or restored_model.restore(s.source)  # a retry restores into a fresh graph
    try:
      return _attack_rounds(s, model, spec, params, images, labels, targets,
                            (calibrated, stats) if spec.info.adaptive else kernel, out_dir)
    except BaseException:
      model.close()  # frees the device memory before a retry at a smaller batch
      model = None
      raise

  sizes = [None]
  if not spec.info.swept and not spec.info.adaptive:
    given = s.params.cw_overrides['batch_size']
    sizes = attack_runner.cw_batch_sizes(len(images), given, placement.available_gpus())
    if sizes[0] is not None and given is None:
      logging.info('GPU present: C&W batch = all %d attacked images (falls back to smaller '
                   'batches if that does not fit; --cw_batch_size sets it)', sizes[0])
  adv_rounds, extra, eps_list, supervised = attack_runner.with_batch_fallback(attempt, sizes)
  arrays, per_round = attack_runner.collect(model, images, labels, adv_rounds, eps_list)
  summary = {'attack': s.method, 'dataset': dataset, 'model': result_files.model_name(rce),
             'checkpoint': model.ckpt, 'checkpoint_step': model.step,
             'num_examples': len(images), 'num_rounds': len(eps_list), 'eps': eps_list,
             'rounds': per_round, 'num_residual_units': s.source.hps.num_residual_units,
             'attack_stats': extra,
             'provenance': restored_model.result_provenance(
                 model, provenance.data_record(files), dict(s.flags, **s.shard_flags))}
  if shard:
    summary['shard'] = shard
  if spec.info.adaptive:
    summary['targets'] = [int(t) for t in targets]  # the C&W targets, for --targeted runs
    summary['first_image'] = first  # the test row of its first image
    summary['calibration_run_id'] = calibrated.run_id
    summary['kernel_run_id'] = result_files.run_id(kernel_summary)
    summary['supervised_characteristics'] = sorted(calibrated.supervised)
  result_files.save_attack_results(out_dir, arrays, summary, supervised)
  if extra:
    logging.info('%s: %s', s.method, extra)
  print('wrote %s results (%d images, %d rounds) to %s'
        % (s.method, len(images), len(eps_list), out_dir))
  model.close()
  return out_dir


def _attack_rounds(settings, model, spec, params, images, labels, targets, kernel, out_dir):
  """Builds the attack in the restored graph, finalizes it, runs every round. `kernel` is
  the kernel of C&W-wb, (calibration, Mahalanobis statistics or None) of an adaptive attack,
  or None.

  Returns (adversarial rounds [R, N, ...], attack statistics, eps list, {name: array} of the
  supervised characteristics of an adaptive attack's images, {} otherwise).
  """
  if spec.info.adaptive:
    attack = adaptive_runner.AdaptiveAttack(model, spec, params, *kernel)
    eps_list = _eps_list(settings, spec)
  elif spec.info.swept:
    attack = attack_runner.EpsAttack(model, spec, params)
    eps_list = _eps_list(settings, spec)
  else:
    attack, eps_list = attack_runner.CWAttack(model, spec, params, kernel), [None]
  model.init_new_variables()
  model.graph.finalize()  # nothing may be added per batch or round
  logging.info('%s on %d images of %s (%s model, checkpoint step %d) -> %s',
               settings.method, len(images), settings.data_path,
               result_files.model_name(settings.source.hps.RCE_train), model.step, out_dir)
  progress = attack_runner.Progress(settings.method, len(images) * len(eps_list))
  if spec.info.adaptive:
    adv_rounds, per_round = attack.run(images, labels, targets, eps_list, progress)
    return (adv_rounds, {'settings': attack.settings(), 'rounds': per_round}, eps_list,
            attack.supervised_characteristics(images, adv_rounds))
  if spec.info.swept:
    return attack.run(images, eps_list, progress), {}, eps_list, {}
  adv_rounds, extra = attack.run(images, labels, targets, progress)
  return adv_rounds, extra, eps_list, {}


def run_merge_shards(settings):
  """The `num_shards` shard folders of the attack -> its ordinary result folder (returned)."""
  s, dataset, rce = settings, settings.source.dataset, settings.source.hps.RCE_train
  if s.num_shards < 2:
    raise ValueError('--mode=merge_shards needs --num_shards (the number of shards, >= 2)')
  files = dataset_input.validate_files(dataset, s.data_path)
  info = checkpoints.require_finite(checkpoints.inspect(
      checkpoints.require_checkpoint(s.source.log_root)))
  data = provenance.data_record(files)
  out_dir = attack_dir(s)
  # Every shard of the same flags and count; each shard's index is checked on its own.
  found = shards.load_shards(out_dir, s.num_shards, info.fingerprint,
                             provenance.data_identity(data),
                             dict(s.flags, num_shards=s.num_shards))
  record = provenance.record(
      provenance.model_record(info, result_files.model_name(rce), s.source.hps), data,
      s.flags)
  summary = shards.merge(out_dir, found, record)
  print('merged %d shards of %s (%d images) into %s'
        % (s.num_shards, s.method, summary['num_examples'], out_dir))
  return out_dir
