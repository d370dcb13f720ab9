"""Flag definitions shared by train.py, test_nor.py, test_adv.py and t_sne.py.

Flag names are the original ones, case included (`--Optimizer`, `--RCE_train`), so the
paper's README commands run as written. Each script calls the groups it needs before
`app.run`; every group is defined at most once per process, so tests may import several
scripts. Scripts turn flags into an immutable HParams with `hparams_from_flags` and pass
that on: no other module reads FLAGS.

Command lines are strict: an unknown or misspelled flag, a bad choice or an out-of-range value
ends the script with one 'error: ...' line before any data is read or graph built (absl's own
parse, which suggests the flag meant; bounds and validators are declared with the flags).
"""
from rce.flags import strict
from rce.tables import attack_names
from rce.tables import dataset_table
from rce.tables import models
import resnet_model

flags = strict.flags
FLAGS = strict.FLAGS

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


def _count(name, default, help_text):
  """An integer flag that must be at least 1 (absl rejects 0 and negatives when parsing)."""
  flags.DEFINE_integer(name, default, help_text, lower_bound=1)


def _positive(name, help_text):
  """A float flag that must be > 0 when given; None (not given) means the attack's default."""
  flags.DEFINE_float(name, None, help_text)
  flags.register_validator(name, lambda v: v is None or v > 0,
                           message='--%s must be > 0' % name)


@_once('base')
def define_base_flags():
  """Data set, model shape, checkpoint location and devices (every script)."""
  flags.DEFINE_enum('dataset', 'mnist', sorted(dataset_table.DATASETS), 'Data set.')
  flags.DEFINE_string('mode', None, 'train (train.py), eval (test_nor.py), '
                      'attack | kernel_para | detect (test_adv.py).')
  flags.DEFINE_string('log_root', '', 'Directory of the checkpoints.')
  flags.DEFINE_integer('num_gpus', 0, 'GPUs (towers) to use; 0 is the CPU. With fewer GPUs '
                       'than asked for, the towers run on as many virtual CPU devices.',
                       lower_bound=0)
  _count('num_residual_units', 5, 'Residual units per stage: 5 is ResNet-32, 9 is ResNet-56.')
  flags.DEFINE_bool('use_bottleneck', False, 'Bottleneck residual units.')
  flags.DEFINE_enum('Optimizer', 'mom', ['sgd', 'mom', 'adam', 'rmsprop'], 'Optimizer.')
  flags.DEFINE_bool('RCE_train', False, 'Train with / evaluate as Reverse Cross-Entropy.')
  flags.DEFINE_string('train_data_path', '', 'Glob pattern(s) of the training files '
                      '(train.py; test_adv.py --mode=kernel_para).')
  flags.DEFINE_string('eval_data_path', '', 'Glob pattern(s) of the test files (train.py: '
                      'for the periodic test precision; default the test file beside the '
                      'training files, if present).')
  flags.DEFINE_integer('seed', 0, 'Random seed (graph, shuffling, kernel points, targets).',
                       lower_bound=0)


@_once('train')
def define_train_flags():
  """train.py."""
  define_base_flags()
  flags.DEFINE_string('train_dir', '', 'TensorBoard summaries of training.')
  _count('total_steps', 20000, 'Training stops exactly at this global step.')
  _count('batch_size', 128, 'Global batch, split evenly over the towers.')
  _count('checkpoint_steps', 2500, 'Checkpoint every this many steps.')
  _count('summary_steps', 100, 'Summaries every this many steps.')
  _count('log_steps', 100, 'Log loss, precision and steps/s every this many.')
  flags.DEFINE_integer('test_every_steps', 2500, 'Test precision every this many steps '
                       '(0: never).', lower_bound=0)
  _count('test_batches', 10, 'Batches of 100 test images per test precision.')
  flags.register_multi_flags_validator(
      ['batch_size', 'num_gpus'], lambda f: f['batch_size'] % max(f['num_gpus'], 1) == 0,
      message='--batch_size must divide evenly over the --num_gpus towers')
  flags.DEFINE_list('lr_boundaries', None, 'Steps at which the learning rate changes, '
                    'increasing (default: the data set\'s, the paper\'s schedule).')
  flags.DEFINE_list('lr_values', None, 'Learning rates, one more than --lr_boundaries '
                    '(default: the data set\'s).')
  flags.register_multi_flags_validator(['lr_boundaries', 'lr_values'], _check_schedule)
  flags.DEFINE_enum('precision', 'fp32', list(models.PRECISION_NAMES),
                    'Training arithmetic: fp32, or mixed precision with float32 variables, '
                    'loss and BN statistics (mixed_float16 with dynamic loss scaling, '
                    'mixed_bfloat16). Evaluation, attacks and detection are float32.')


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


@_once('eval')
def define_eval_flags():
  """test_nor.py (and the batch counts of test_adv.py)."""
  flags.DEFINE_string('eval_dir', '', 'TensorBoard summaries of evaluation.')
  _count('eval_batch_count', 50, 'Number of eval batches.')
  _count('eval_batch_size', 100, 'Images per eval batch.')
  flags.DEFINE_bool('eval_once', False, 'Evaluate the latest checkpoint once and exit.')
  _count('eval_interval_secs', 60, 'Seconds between checkpoint polls.')


@_once('attack')
def define_attack_flags():
  """test_adv.py: attacks, kernel parameters and detection."""
  flags.DEFINE_enum('attack_method', 'fgsm', list(attack_names.ATTACK_NAMES), 'The attack.')
  flags.DEFINE_float('eps', 0.0, 'A single eps for the eps attacks, in (0, 1]; 0 sweeps '
                     '0.02..0.20.')
  flags.register_validator('eps', lambda v: v == 0 or 0 < v <= 1,
                           message='--eps must be in (0, 1], or 0 for the sweep 0.02..0.20')
  flags.DEFINE_string('save_pwd', '', 'Where attack results go; default '
                      '{results_dir}/{attack}_{dataset}/{RCE|CE}.')
  flags.DEFINE_string('results_dir', '.', 'Folder of kernel_para_{dataset}/ and the attack '
                      'results (default layout).')
  _count('attack_batch_size', 200, 'Images per attack batch (eps attacks).')
  _count('bim_nb_iter', 10, 'Steps of BIM and ILCM (each eps/steps).')
  _count('jsma_max_iter', 100, 'Most pixels JSMA changes per image.')
  # The C&W settings default to each attack's own (the original's, in the attack registry);
  # one given on the command line wins, for every stage of the attack.
  _count('cw_batch_size', None, 'Images per C&W batch (results do not depend on it). '
         'Default: the attack\'s.')
  _count('cw_max_iterations', None, 'Adam iterations per C&W binary-search step (abort early '
         'per example when its loss stalls). Default: the attack\'s.')
  _count('cw_binary_search_steps', None, 'Binary-search steps over c. Default: the '
         'attack\'s.')
  _positive('cw_learning_rate', 'C&W Adam learning rate. Default: the attack\'s (0.01).')
  _positive('cw_initial_const', 'Initial c of C&W. Default: the attack\'s.')
  flags.DEFINE_enum('tgsm_target', 'original', ['original', 'onehot'], 'ILCM\'s target '
                    'vector: original (the paper\'s code: +0.5 for the least-likely class, '
                    '-0.5 elsewhere) or onehot (the textbook ILCM).')
  flags.DEFINE_enum('auc_ties', 'half', ['half', 'original'], 'How detect\'s ROC-AUC counts '
                    'tied scores: half (the rank statistic, half credit) or original (the '
                    'original AUC.m: a tie counts against the normal example).')
  _count('kernel_per_class', 1000, 'Kernel points per class (kernel_para).')
  _count('kernel_subset', 100, 'Kernel points per class of the white-box attack '
         '(kernel_para).')
  flags.register_multi_flags_validator(
      ['kernel_per_class', 'kernel_subset'],
      lambda f: f['kernel_subset'] <= f['kernel_per_class'],
      message='--kernel_subset cannot exceed --kernel_per_class (it is drawn from them)')
  _count('eps_round', 8, 'eps round of the swept attacks that detect reports (1-based: 8 is '
         'eps 0.16).')
  _count('lid_k', 20, 'Nearest neighbours of the LID estimate (--mode=characteristics).')
  _count('lid_batch', 100, 'Minibatch of normal examples LID is estimated within '
         '(--mode=characteristics; more than --lid_k).')
  flags.register_multi_flags_validator(
      ['lid_k', 'lid_batch'], lambda f: f['lid_batch'] > f['lid_k'],
      message='--lid_batch must exceed --lid_k (each minibatch needs k neighbours)')
  _count('num_shards', 1, 'Split the attacked images into this many contiguous shards '
         '(--mode=attack runs one, --mode=merge_shards joins them).')
  flags.DEFINE_integer('shard_index', 0, 'The shard this --mode=attack run attacks (0-based).',
                       lower_bound=0)
  flags.register_multi_flags_validator(
      ['num_shards', 'shard_index'], lambda f: f['shard_index'] < f['num_shards'],
      message='--shard_index must be below --num_shards')


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
