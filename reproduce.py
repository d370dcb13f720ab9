"""One command reproduces the paper: train CE and RCE, attack, detect, report in RESULTS.md.

  python reproduce.py            # digits preset: bundled data, 2-core CPU, ~26 minutes
  python reproduce.py --tiny     # a few steps and images: the CI smoke run
  python reproduce.py --small --data_dir=mnist_dataset   # real MNIST on a CPU
  python reproduce.py --full --dataset=mnist --data_dir=mnist_dataset   # the paper's settings
  python reproduce.py --tiny --jobs=2   # up to two stages at once
  python reproduce.py --seeds=3          # three replicas: every cell as mean +- s.d.

Every stage is one of the README's commands (train.py, test_nor.py, test_adv.py, t_sne.py)
run as a subprocess; the exact command lines, their wall times, the TensorFlow version and
the devices go into the report. A stage is skipped when it ran before with the same command
line and inputs (data checksums, the model's step and fingerprint, upstream run ids) and its
output is still the one it wrote, so an interrupted run continues where it stopped and a
changed flag or --steps reruns exactly the stages it affects. The stages form a graph;
--jobs=N runs up to N at once, each when the stages it reads are done. Stopping the driver
(Ctrl-C, SIGTERM, even SIGKILL on Linux) stops its running stages too.
"""
import argparse
import os
import signal
import sys
import time

from rce.pipeline import paper
from rce.pipeline import results_md
from rce.pipeline import scheduler
from rce.results import io_utils
from rce.tables import dataset_table

HERE = os.path.dirname(os.path.abspath(__file__))
# TensorFlow's C++ start-up notices (oneDNN, CUDA probing) would drown the stage logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def model_identity(log_root):
  """The newest checkpoint of `log_root`: None, or {'step', 'fingerprint', 'finite'}.

  The checkpoint reader needs TensorFlow, so it is imported here, when a training stage's
  output is first checked, never at start-up (nor by rce.pipeline).

  Raises:
    ValueError: the folder's checkpoints cannot be read (CheckpointError, e.g. a state file
      naming another folder's files).
  """
  if not os.path.isdir(log_root):
    return None  # no folder, no checkpoint: no need to start TensorFlow
  from rce.model import checkpoints  # pylint: disable=g-import-not-at-top
  ckpt = checkpoints.latest_checkpoint(log_root)
  info = checkpoints.inspect(ckpt) if ckpt else None
  if info is None:
    return None
  return dict(step=info.step, fingerprint=info.fingerprint, finite=not info.nonfinite)


def platform():
  """TensorFlow's version and the names of the devices it sees (the report's header)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.__version__, [d.name for d in tf.config.list_physical_devices()]


def make_pipeline(args):
  """The paper's stage graph for parsed arguments `args` (paper.Pipeline; nothing runs)."""
  return paper.Pipeline(args, HERE, model_identity)


def run(args):
  """Declares the stage graph of every replica, runs it (up to --jobs stages at once),
  writes the report."""
  start = time.time()
  pipeline = make_pipeline(args)
  runner = scheduler.Scheduler(pipeline.plan(), pipeline.state_path, pipeline.log_dir,
                               pipeline.results, jobs=args.jobs, gpus=args.gpus)
  runner.run()
  results_md.write_reports(pipeline, runner.records, time.time() - start, platform)


class _StrictParser(argparse.ArgumentParser):
  """argparse without abbreviations (--step is not --steps) and with one-line errors."""

  def __init__(self, **kwargs):
    super().__init__(allow_abbrev=False, **kwargs)

  def error(self, message):
    sys.exit('error: %s (see python reproduce.py --help)' % message)


def _count(text, minimum=0):
  """argparse type of the counts: an integer >= `minimum`."""
  value = int(text)
  if value < minimum:
    raise argparse.ArgumentTypeError('must be >= %d, got %d' % (minimum, value))
  return value


def _positive_count(text):
  """argparse type of --jobs and --seeds: an integer >= 1."""
  return _count(text, minimum=1)


def build_parser():
  """The command line of reproduce.py."""
  parser = _StrictParser(description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  group = parser.add_mutually_exclusive_group()
  group.add_argument('--tiny', dest='preset', action='store_const', const='tiny',
                     help='CI smoke run: a few steps and images (any data).')
  group.add_argument('--small', dest='preset', action='store_const', const='small',
                     help='Real data on a CPU (ResNet-14, 3000 steps, 1000 attacked images).')
  group.add_argument('--full', dest='preset', action='store_const', const='full',
                     help="The paper's settings (a GPU box).")
  parser.set_defaults(preset='digits')
  parser.add_argument('--dataset', default='mnist', choices=sorted(dataset_table.DATASETS))
  parser.add_argument('--data_dir', default='', help='Folder of the data files (default: '
                      'the bundled digits for mnist without --full, else {dataset}_dataset).')
  parser.add_argument('--out_dir', default='', help='Default reproduce_{preset}.')
  parser.add_argument('--num_gpus', type=_count, default=None,
                      help='Towers; default: every GPU present (0: the CPU).')
  parser.add_argument('--steps', type=_count, default=0,
                      help='Override the training steps (0: the preset\'s).')
  parser.add_argument('--seeds', type=_positive_count, default=1,
                      help='Independent replicas of the whole pipeline, seeds 0..N-1 '
                      '(initialization, shuffling, kernel points, C&W targets); with N > 1 '
                      'RESULTS.md gives mean +- s.d. over them and per_seed.csv each value.')
  parser.add_argument('--precision', default='fp32',
                      choices=['fp32', 'mixed_float16', 'mixed_bfloat16'],
                      help="train.py's --precision (training arithmetic; attacks and "
                      'detection are float32).')
  parser.add_argument('--jobs', type=_positive_count, default=None,
                      help='Stages run at once, each when its inputs are done (default: the '
                      'number of GPUs with --full, else 1). With GPUs each stage but training '
                      'gets one; on the CPU each gets its share of the cores.')
  return parser


def parse_args(argv):
  parser = build_parser()
  args = parser.parse_args(argv)
  if paper.PRESETS[args.preset]['digits_only'] and (args.data_dir or args.dataset != 'mnist'):
    parser.error('the digits preset (the default) runs on the bundled digits only, not on %s; '
                 'for real data use --small (a CPU) or --full (the paper\'s settings)'
                 % ('--data_dir=%s' % args.data_dir if args.data_dir
                    else '--dataset=%s' % args.dataset))
  if args.dataset != 'mnist' and args.preset == 'tiny' and not args.data_dir:
    parser.error('--dataset=%s needs --data_dir with its binary files (only mnist has a '
                 'bundled stand-in, the digits)' % args.dataset)
  gpus = None
  if args.num_gpus is None or args.jobs != 1:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    gpus = len(tf.config.list_physical_devices('GPU'))
  if args.num_gpus is None:
    args.num_gpus = gpus
  if args.jobs is None:
    args.jobs = max(1, gpus) if args.preset == 'full' else 1
  args.gpus = gpus or 0
  return args


def _exit_on_signal(signum, frame):
  del frame
  sys.exit(128 + signum)  # unwinds through Scheduler.run, which stops the running stages


def main(argv=None):
  sys.path.insert(0, HERE)
  args = parse_args(argv)
  for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, _exit_on_signal)
  try:
    run(args)
  except (scheduler.StageError, ValueError) as e:  # ValueError: e.g. a model folder's state
    sys.exit('error: %s' % e)                       # file naming checkpoints elsewhere
  except OSError as e:
    sys.exit('error: %s' % io_utils.os_error_text(e))


if __name__ == '__main__':
  main()
