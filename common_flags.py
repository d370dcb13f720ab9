"""Flag definitions shared by train.py, test_nor.py, test_adv.py and t_sne.py.

Flag names are the original ones, case included (`--Optimizer`, `--RCE_train`), so the
paper's README commands run as written. Each script calls the groups it needs before
`app.run`; every group is defined at most once per process, so tests may import several
scripts. Scripts turn flags into an immutable HParams with `hparams_from_flags` and pass
that on: no other module reads FLAGS.
"""
import sys

from absl import logging
import tensorflow as tf

import checkpoints
import dataset_input
import resnet_model

flags = tf.compat.v1.app.flags
FLAGS = flags.FLAGS

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


@_once('base')
def define_base_flags():
  """Data set, model shape, checkpoint location and devices (every script)."""
  flags.DEFINE_enum('dataset', 'mnist', sorted(dataset_input.DATASETS), 'Data set.')
  flags.DEFINE_string('mode', None, 'train (train.py), eval (test_nor.py), '
                      'attack | kernel_para | detect (test_adv.py).')
  flags.DEFINE_string('log_root', '', 'Directory of the checkpoints.')
  flags.DEFINE_integer('num_gpus', 0, 'GPUs (towers) to use; 0 is the CPU. With fewer GPUs '
                       'than asked for, the towers run on as many virtual CPU devices.')
  flags.DEFINE_integer('num_residual_units', 5, 'Residual units per stage: 5 is ResNet-32, '
                       '9 is ResNet-56.')
  flags.DEFINE_bool('use_bottleneck', False, 'Bottleneck residual units.')
  flags.DEFINE_enum('Optimizer', 'mom', ['sgd', 'mom', 'adam', 'rmsprop'], 'Optimizer.')
  flags.DEFINE_bool('RCE_train', False, 'Train with / evaluate as Reverse Cross-Entropy.')
  flags.DEFINE_string('train_data_path', '', 'Glob pattern(s) of the training files '
                      '(train.py; test_adv.py --mode=kernel_para).')
  flags.DEFINE_string('eval_data_path', '', 'Glob pattern(s) of the test files (train.py: '
                      'for the periodic test precision; default the test file beside the '
                      'training files, if present).')
  flags.DEFINE_integer('seed', 0, 'Random seed (graph, shuffling, kernel points, targets).')


@_once('train')
def define_train_flags():
  """train.py."""
  flags.DEFINE_string('train_dir', '', 'TensorBoard summaries of training.')
  flags.DEFINE_integer('total_steps', 20000, 'Training stops exactly at this global step.')
  flags.DEFINE_integer('batch_size', 128, 'Global batch, split evenly over the towers.')
  flags.DEFINE_integer('checkpoint_steps', 2500, 'Checkpoint every this many steps.')
  flags.DEFINE_integer('summary_steps', 100, 'Summaries every this many steps.')
  flags.DEFINE_integer('log_steps', 100, 'Log loss, precision and steps/s every this many.')
  flags.DEFINE_integer('test_every_steps', 2500, 'Test precision every this many steps '
                       '(0: never).')
  flags.DEFINE_integer('test_batches', 10, 'Batches of 100 test images per test precision.')


@_once('eval')
def define_eval_flags():
  """test_nor.py (and the batch counts of test_adv.py)."""
  flags.DEFINE_string('eval_dir', '', 'TensorBoard summaries of evaluation.')
  flags.DEFINE_integer('eval_batch_count', 50, 'Number of eval batches.')
  flags.DEFINE_integer('eval_batch_size', 100, 'Images per eval batch.')
  flags.DEFINE_bool('eval_once', False, 'Evaluate the latest checkpoint once and exit.')
  flags.DEFINE_integer('eval_interval_secs', 60, 'Seconds between checkpoint polls.')


@_once('attack')
def define_attack_flags():
  """test_adv.py: attacks, kernel parameters and detection."""
  import attacks  # only test_adv.py needs the registry
  flags.DEFINE_enum('attack_method', 'fgsm', list(attacks.ATTACK_NAMES), 'The attack.')
  flags.DEFINE_float('eps', 0.0, 'A single eps for the eps attacks; 0 sweeps 0.02..0.20.')
  flags.DEFINE_string('save_pwd', '', 'Where attack results go; default '
                      '{results_dir}/{attack}_{dataset}/{RCE|CE}.')
  flags.DEFINE_string('results_dir', '.', 'Folder of kernel_para_{dataset}/ and the attack '
                      'results (default layout).')
  flags.DEFINE_integer('attack_batch_size', 200, 'Images per attack batch (eps attacks).')
  flags.DEFINE_integer('bim_nb_iter', 10, 'Steps of BIM and ILCM (each eps/steps).')
  flags.DEFINE_integer('jsma_max_iter', 100, 'Most pixels JSMA changes per image.')
  flags.DEFINE_integer('cw_batch_size', 100, 'Images per C&W batch.')
  flags.DEFINE_integer('cw_max_iterations', 10000, 'Adam iterations per C&W binary-search '
                       'step (abort early when the loss stalls).')
  flags.DEFINE_integer('cw_binary_search_steps', 9, 'Binary-search steps over c.')
  flags.DEFINE_float('cw_learning_rate', 0.01, 'C&W Adam learning rate.')
  flags.DEFINE_float('cw_initial_const', 1.0, 'Initial c of C&W.')
  flags.DEFINE_integer('kernel_per_class', 1000, 'Kernel points per class (kernel_para).')
  flags.DEFINE_integer('kernel_subset', 100, 'Kernel points per class of the white-box '
                       'attack (kernel_para).')
  flags.DEFINE_integer('eps_round', 8, 'eps round of the swept attacks that detect reports '
                       '(1-based: 8 is eps 0.16).')


def hparams_from_flags(batch_size=128):
  """The immutable model hyper-parameters of the parsed flags."""
  return resnet_model.default_hparams(
      batch_size=batch_size, num_residual_units=FLAGS.num_residual_units,
      use_bottleneck=FLAGS.use_bottleneck, optimizer=FLAGS.Optimizer,
      RCE_train=FLAGS.RCE_train)


def check_mode(allowed, script):
  """Rejects a --mode this script does not run (None is taken as the script's default)."""
  if FLAGS.mode is not None and FLAGS.mode not in allowed:
    raise ValueError('%s: --mode=%s is not one of %s'
                     % (script, FLAGS.mode, ', '.join(allowed)))


def run_script(define_flags, body):
  """The entry point of every script: flags, graph mode, logging, then `body()`.

  Bad input (ValueError and its subclasses DataError / ResultsError, CheckpointError) ends
  the script with 'error: ...' on stderr and exit status 1, not a traceback.
  """
  define_flags()
  tf.compat.v1.disable_eager_execution()
  logging.set_verbosity(logging.INFO)

  def main(argv):
    del argv
    try:
      body()
    except (ValueError, checkpoints.CheckpointError) as e:
      sys.exit('error: %s' % e)

  tf.compat.v1.app.run(main)
