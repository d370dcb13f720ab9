"""Flag definitions shared by train.py, test_nor.py, test_adv.py and t_sne.py.

Flag names are the original ones, case included (`--Optimizer`, `--RCE_train`), so the
paper's README commands run as written. Each script calls the groups it needs before
`app.run`; every group is defined at most once per process, so tests may import several
scripts. Scripts turn flags into an immutable HParams with `hparams_from_flags` and pass
that on: no other module reads FLAGS.

Each flag's definition names the results it changes (`changes`, of RESULTS);
`result_flags(result)` lists them, and the scripts record their values in each result's
provenance (a shard merge compares them).

Command lines are strict: an unknown or misspelled flag, a bad choice or an out-of-range value
ends the script with one 'error: ...' line before any data is read or graph built (absl's own
parse, which suggests the flag meant; bounds and validators are declared with the flags).
"""
import collections

from rce.flags import strict
from rce.tables import attack_names
from rce.tables import dataset_table
from rce.tables import models
import resnet_model

flags = strict.flags
FLAGS = strict.FLAGS

# The results a flag can change. Each records the values of its flags in its provenance
# (result_flags lists them): test_nor.py's precision.json, an attack result folder (also the
# merge of its shards), which shard of it a --num_shards run holds, the kernel files, the
# characteristics.
RESULTS = ('precision', 'attack', 'shard', 'kernel_para', 'characteristics', 'calibration',
           'adaptive')
# The restored model's flags change every result made from it.
_MODEL = ('precision', 'attack', 'kernel_para', 'characteristics', 'calibration')

_Flag = collections.namedtuple('_Flag', ['kind', 'name', 'default', 'help', 'changes',
                                         'validator', 'args'])

_defined = set()


def _once(group):
  def decorate(fn):
    def wrapper():
      if group not in _defined:
        _defined.add(group)
        fn()
    wrapper.__doc__ = fn.__doc__
    return wrapper
  return decorate


def _flag(kind, name, default, help_text, changes=(), validator=None, **args):
  """One flag: absl's DEFINE_{kind}(name, default, help, **args), the results (of RESULTS)
  its value changes and an optional (check, message) validator."""
  unknown = sorted(set(changes) - set(RESULTS))
  if unknown:
    raise ValueError('--%s changes unknown result(s) %s' % (name, ', '.join(unknown)))
  return _Flag(kind, name, default, help_text, tuple(changes), validator, args)


def _count(name, default, help_text, changes=()):
  """An integer flag that must be at least 1 (absl rejects 0 and negatives when parsing)."""
  return _flag('integer', name, default, help_text, changes, lower_bound=1)


def _positive(name, help_text, changes=()):
  """A float flag that must be > 0 when given; None (not given) means the attack's default."""
  return _flag('float', name, None, help_text, changes,
               validator=(lambda v: v is None or v > 0, '--%s must be > 0' % name))


def _define(group):
  """Defines the flags of `group` (a tuple of _flag records), in their order."""
  for f in group:
    getattr(flags, 'DEFINE_' + f.kind)(f.name, f.default, help=f.help, **f.args)
    if f.validator:
      flags.register_validator(f.name, f.validator[0], message=f.validator[1])


_BASE_FLAGS = (
    _flag('enum', 'dataset', 'mnist', 'Data set.', _MODEL,
          enum_values=sorted(dataset_table.DATASETS)),
    _flag('string', 'mode', None, 'train (train.py), eval (test_nor.py), '
          'attack | kernel_para | calibrate | characteristics | detect | merge_shards '
          '(test_adv.py).'),
    _flag('string', 'log_root', '', 'Directory of the checkpoints.'),
    _flag('integer', 'num_gpus', 0, 'GPUs (towers) to use; 0 is the CPU. With fewer GPUs '
          'than asked for, the towers run on as many virtual CPU devices.', lower_bound=0),
    _count('num_residual_units', 5, 'Residual units per stage: 5 is ResNet-32, 9 is '
           'ResNet-56.', _MODEL),
    _flag('bool', 'use_bottleneck', False, 'Bottleneck residual units.', _MODEL),
    _flag('enum', 'Optimizer', 'mom', 'Optimizer.', enum_values=['sgd', 'mom', 'adam',
                                                                 'rmsprop']),
    _flag('bool', 'RCE_train', False, 'Train with / evaluate as Reverse Cross-Entropy.',
          _MODEL),
    _flag('string', 'train_data_path', '', 'Glob pattern(s) of the training files '
          '(train.py; test_adv.py --mode=kernel_para).'),
    _flag('string', 'eval_data_path', '', 'Glob pattern(s) of the test files (train.py: '
          'for the periodic test precision; default the test file beside the '
          'training files, if present).'),
    _flag('integer', 'seed', 0, 'Random seed (graph, shuffling, kernel points, targets).',
          ('attack', 'kernel_para', 'characteristics', 'calibration'), lower_bound=0),
)


@_once('base')
def define_base_flags():
  """Data set, model shape, checkpoint location and devices (every script)."""
  _define(_BASE_FLAGS)


_TRAIN_FLAGS = (
    _flag('string', 'train_dir', '', 'TensorBoard summaries of training.'),
    _count('total_steps', 20000, 'Training stops exactly at this global step.'),
    _count('batch_size', 128, 'Global batch, split evenly over the towers.'),
    _count('checkpoint_steps', 2500, 'Checkpoint every this many steps.'),
    _count('summary_steps', 100, 'Summaries every this many steps.'),
    _count('log_steps', 100, 'Log loss, precision and steps/s every this many.'),
    _flag('integer', 'test_every_steps', 2500, 'Test precision every this many steps '
          '(0: never).', lower_bound=0),
    _count('test_batches', 10, 'Batches of 100 test images per test precision.'),
    _flag('list', 'lr_boundaries', None, 'Steps at which the learning rate changes, '
          'increasing (default: the data set\'s, the paper\'s schedule).'),
    _flag('list', 'lr_values', None, 'Learning rates, one more than --lr_boundaries '
          '(default: the data set\'s).'),
    _flag('enum', 'precision', 'fp32', 'Training arithmetic: fp32, or mixed precision with '
          'float32 variables, loss and BN statistics (mixed_float16 with dynamic loss '
          'scaling, mixed_bfloat16). Evaluation, attacks and detection are float32.',
          enum_values=list(models.PRECISION_NAMES)),
)


@_once('train')
def define_train_flags():
  """train.py."""
  define_base_flags()
  _define(_TRAIN_FLAGS)
  flags.register_multi_flags_validator(
      ['batch_size', 'num_gpus'], lambda f: f['batch_size'] % max(f['num_gpus'], 1) == 0,
      message='--batch_size must divide evenly over the --num_gpus towers')
  flags.register_multi_flags_validator(['lr_boundaries', 'lr_values'], _check_schedule)


def _check_schedule(f):
  """Validator of --lr_boundaries / --lr_values: both or neither, consistent, increasing."""
  boundaries, values = f['lr_boundaries'], f['lr_values']
  if boundaries is None and values is None:
    return True
  if boundaries is None or values is None:
    raise flags.ValidationError('--lr_boundaries and --lr_values go together')
  try:
    steps, rates = [int(b) for b in boundaries], [float(v) for v in values]
  except ValueError as e:
    raise flags.ValidationError('--lr_boundaries are steps, --lr_values numbers (%s)' % e)
  if len(rates) != len(steps) + 1:
    raise flags.ValidationError('--lr_values needs one more value (%d) than --lr_boundaries '
                                'has steps (%d)' % (len(rates), len(steps)))
  if any(b <= a for a, b in zip([0] + steps, steps)):
    raise flags.ValidationError('--lr_boundaries must be positive and increasing, got %s'
                                % ','.join(boundaries))
  if not all(0 < r < float('inf') for r in rates):
    raise flags.ValidationError('--lr_values must be positive and finite, got %s'
                                % ','.join(values))
  return True


def lr_schedule_from_flags():
  """(boundaries, values) of --lr_boundaries / --lr_values, or None for the data set's."""
  if FLAGS.lr_boundaries is None:
    return None
  return [int(b) for b in FLAGS.lr_boundaries], [float(v) for v in FLAGS.lr_values]


_EVAL_FLAGS = (
    _flag('string', 'eval_dir', '', 'TensorBoard summaries of evaluation.'),
    _count('eval_batch_count', 50, 'Number of eval batches.',
           ('precision', 'attack', 'kernel_para', 'calibration')),
    _count('eval_batch_size', 100, 'Images per eval batch.', ('precision',)),
    _flag('bool', 'eval_once', False, 'Evaluate the latest checkpoint once and exit.'),
    _count('eval_interval_secs', 60, 'Seconds between checkpoint polls.'),
)


@_once('eval')
def define_eval_flags():
  """test_nor.py (and the batch counts of test_adv.py)."""
  _define(_EVAL_FLAGS)


_ATTACK_FLAGS = (
    _flag('enum', 'attack_method', 'fgsm', 'The attack.', ('attack',),
          enum_values=list(attack_names.ATTACK_NAMES)),
    _flag('float', 'eps', 0.0, 'A single eps for the eps attacks, in (0, 1]; 0 sweeps '
          '0.02..0.20 (Table 6\'s pgd_* attacks: the data set\'s adaptive eps list).',
          ('attack',),
          validator=(lambda v: v == 0 or 0 < v <= 1,
                     '--eps must be in (0, 1], or 0 for the sweep 0.02..0.20')),
    _flag('string', 'save_pwd', '', 'Where attack results go; default '
          '{results_dir}/{attack}_{dataset}/{RCE|CE}.'),
    _flag('string', 'results_dir', '.', 'Folder of kernel_para_{dataset}/ and the attack '
          'results (default layout).'),
    _count('attack_batch_size', 200, 'Images per attack batch (eps attacks).',
           ('attack', 'calibration')),
    _count('bim_nb_iter', 10, 'Steps of BIM and ILCM (each eps/steps).', ('attack',)),
    _count('jsma_max_iter', 100, 'Most pixels JSMA changes per image.', ('attack',)),
    # The C&W settings default to each attack's own (the original's, in the attack
    # registry); one given on the command line wins, for every stage of the attack.
    _count('cw_batch_size', None, 'Images per C&W batch (results do not depend on it). '
           'Default: the attack\'s.', ('attack',)),
    _count('cw_max_iterations', None, 'Adam iterations per C&W binary-search step (abort '
           'early per example when its loss stalls). Default: the attack\'s.', ('attack',)),
    _count('cw_binary_search_steps', None, 'Binary-search steps over c. Default: the '
           'attack\'s.', ('attack',)),
    _positive('cw_learning_rate', 'C&W Adam learning rate. Default: the attack\'s (0.01).',
              ('attack',)),
    _positive('cw_initial_const', 'Initial c of C&W. Default: the attack\'s.', ('attack',)),
    _flag('enum', 'tgsm_target', 'original', 'ILCM\'s target vector: original (the paper\'s '
          'code: +0.5 for the least-likely class, -0.5 elsewhere) or onehot (the textbook '
          'ILCM).', ('attack',), enum_values=['original', 'onehot']),
    _flag('enum', 'auc_ties', 'half', 'How detect\'s ROC-AUC counts tied scores: half (the '
          'rank statistic, half credit) or original (the original AUC.m: a tie counts '
          'against the normal example).', enum_values=['half', 'original']),
    _count('kernel_per_class', 1000, 'Kernel points per class (kernel_para).',
           ('kernel_para',)),
    _count('kernel_subset', 100, 'Kernel points per class of the white-box attack '
           '(kernel_para).', ('kernel_para',)),
    _count('eps_round', 8, 'eps round of the swept attacks that detect reports (1-based: 8 '
           'is eps 0.16); --mode=calibrate fits the supervised detectors on its '
           'characteristics.', ('characteristics', 'calibration')),
    _count('lid_k', 20, 'Nearest neighbours of the LID estimate (--mode=characteristics, '
           'and the LID detector of --mode=calibrate).', ('characteristics', 'calibration')),
    _count('lid_batch', 100, 'Minibatch of normal examples LID is estimated within '
           '(--mode=characteristics; more than --lid_k).', ('characteristics',)),
    _count('calibration_images', 1000, 'Clean test images after the attacked ones '
           '(--eval_batch_count x --attack_batch_size) that --mode=calibrate fixes the '
           'detectors\' thresholds on (1 / 5 / 50 %% false positives).', ('calibration',)),
    _count('lid_reference', 100, 'Kernel points (drawn with --seed) that the LID detector of '
           'the adaptive attacks finds its --lid_k neighbours among (--mode=calibrate).',
           ('calibration',)),
    _flag('enum', 'detector', 'k_density', 'The detector a detector-aware adaptive attack '
          '(pgd_lagrangian, pgd_selective, pgd_orthogonal) attacks: one on the final feature, '
          'one of Table 4\'s supervised regressions (fitted by --mode=calibrate) or the '
          'ensemble of all six (each score above its threshold, summed).', ('adaptive',),
          enum_values=list(attack_names.TABLE6_DETECTORS)),
    _flag('bool', 'targeted', False, 'Adaptive attacks: aim at the C&W target (a seeded '
          'random other class) instead of any wrong class.', ('adaptive',)),
    _count('pgd_steps', 100, 'Steps per restart of the adaptive PGD attacks.', ('adaptive',)),
    _count('pgd_restarts', 2, 'Random restarts of the adaptive PGD attacks (they alternate '
           'the step size).', ('adaptive',)),
    _count('lagrange_steps', 5, 'Search rounds of the Lagrangian PGD\'s per-example '
           'multiplier.', ('adaptive',)),
    _flag('float', 'attack_fpr', 0.05, 'The false-positive rate whose threshold the '
          'Lagrangian PGD aims below (one of 0.01, 0.05, 0.5).', ('adaptive',),
          validator=(lambda v: v in (0.01, 0.05, 0.5),
                     '--attack_fpr must be 0.01, 0.05 or 0.5 (a calibrated threshold)')),
    _count('num_shards', 1, 'Split the attacked images into this many contiguous shards '
           '(--mode=attack runs one, --mode=merge_shards joins them).', ('shard',)),
    _flag('integer', 'shard_index', 0, 'The shard this --mode=attack run attacks '
          '(0-based).', ('shard',), lower_bound=0),
)


@_once('attack')
def define_attack_flags():
  """test_adv.py: attacks, kernel parameters and detection."""
  _define(_ATTACK_FLAGS)
  flags.register_multi_flags_validator(
      ['kernel_per_class', 'kernel_subset'],
      lambda f: f['kernel_subset'] <= f['kernel_per_class'],
      message='--kernel_subset cannot exceed --kernel_per_class (it is drawn from them)')
  flags.register_multi_flags_validator(
      ['lid_k', 'lid_batch'], lambda f: f['lid_batch'] > f['lid_k'],
      message='--lid_batch must exceed --lid_k (each minibatch needs k neighbours)')
  flags.register_multi_flags_validator(
      ['num_shards', 'shard_index'], lambda f: f['shard_index'] < f['num_shards'],
      message='--shard_index must be below --num_shards')


_GROUPS = (_BASE_FLAGS, _TRAIN_FLAGS, _EVAL_FLAGS, _ATTACK_FLAGS)


def result_flags(result):
  """The names of the flags that change `result` (one of RESULTS), in the order they are
  defined: the flags whose values its provenance records (and a shard merge compares)."""
  if result not in RESULTS:
    raise ValueError('unknown result %r; the results are %s' % (result, ', '.join(RESULTS)))
  return tuple(f.name for group in _GROUPS for f in group if result in f.changes)


def flag_values(result):
  """{name: value} of the parsed flags that change `result`, for its provenance."""
  return {name: FLAGS[name].value for name in result_flags(result)}


def hparams_from_flags():
  """The immutable model hyper-parameters of the parsed flags (classes from the data set)."""
  return resnet_model.default_hparams(
      num_classes=dataset_table.get_spec(FLAGS.dataset).num_classes,
      num_residual_units=FLAGS.num_residual_units,
      use_bottleneck=FLAGS.use_bottleneck, optimizer=FLAGS.Optimizer,
      RCE_train=FLAGS.RCE_train)


def check_mode(allowed, script):
  """Rejects a --mode this script does not run (None is taken as the script's default)."""
  if FLAGS.mode is not None and FLAGS.mode not in allowed:
    raise ValueError('%s: --mode=%s is not one of %s'
                     % (script, FLAGS.mode, ', '.join(allowed)))


def require_flags(script, *names):
  """ValueError naming the first of the string flags `names` that was left empty."""
  for name in names:
    if not FLAGS[name].value:
      raise ValueError('%s needs --%s (%s)' % (script, name, FLAGS[name].help))
