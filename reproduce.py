"""One command reproduces the paper: train CE and RCE, attack, detect, report in RESULTS.md.

  python reproduce.py            # digits preset: bundled data, 2-core CPU, ~15 minutes
  python reproduce.py --tiny     # a few steps and images: the CI smoke run
  python reproduce.py --full --dataset=mnist --data_dir=mnist_dataset   # the paper's settings

Every stage is one of the README's commands (train.py, test_nor.py, test_adv.py, t_sne.py)
run as a subprocess; the exact command lines, their wall times, the TensorFlow version and
the devices go into the report. A stage is skipped when it ran before with the same command
line and inputs (data checksums, the model's step and fingerprint, upstream run ids) and its
output is still the one it wrote, so an interrupted run continues where it stopped and a
changed flag or --steps reruns exactly the stages it affects. Stopping the driver (Ctrl-C,
SIGTERM, even SIGKILL on Linux) stops its running stage too.
"""
import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import attack_names
import dataset_table
import io_utils

HERE = os.path.dirname(os.path.abspath(__file__))
# TensorFlow's C++ start-up notices (oneDNN, CUDA probing) would drown the stage logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# Each preset says plainly how it departs from the paper's settings. `lr_decay`: the steps
# (as fractions of the run) where a short run divides its learning rate by 10; None keeps
# the data set's (the paper's) schedule.
PRESETS = {
    'tiny': dict(
        units=1, steps=dict(mnist=60, cifar10=60, cifar100=60), lr_decay=(0.6, 0.85),
        checkpoint_steps=30, attack_batches=1,
        attack_batch_size=40, kernel_batches=15, cw=dict(iterations=20, search=2, batch=40),
        jsma_max_iter=20, eps_round=2, tsne=('fgsm',),
        note='CI smoke run: ResNet-8, 60 training steps, 40 attacked images, C&W runs capped '
             'at 20 iterations and 2 binary-search steps, JSMA 20 pixels (the original: 100); '
             'numbers are not meaningful, only complete.'),
    'digits': dict(
        units=1, steps=dict(mnist=1000, cifar10=1000, cifar100=1000), lr_decay=(0.6, 0.85),
        checkpoint_steps=500, attack_batches=1, attack_batch_size=200, kernel_batches=15,
        cw=dict(iterations=100, search=5, batch=100), jsma_max_iter=100, eps_round=1,
        tsne=('fgsm', 'carliniL2'),
        note='bundled digits data (1438 train / 359 test images of 8x8 upsampled to 28x28), '
             'ResNet-8 (num_residual_units=1), 1000 steps with the learning rate 0.1 / 0.01 / '
             '0.001 from 60 % / 85 % of them, 200 attacked images, C&W runs capped at 100 '
             'iterations and 5 binary-search steps, detection at eps round 1 (eps 0.02): at '
             'larger eps every attack saturates on this small data set (SPEC.md section 11).'),
    'full': dict(
        units=5, steps=dict(mnist=20000, cifar10=90000, cifar100=90000), lr_decay=None,
        checkpoint_steps=2500,
        attack_batches=5, attack_batch_size=200, kernel_batches=500,
        cw=dict(iterations=None, search=None, batch=100), jsma_max_iter=100, eps_round=8,
        tsne=('fgsm', 'carliniL2'),
        note="the paper's settings: ResNet-32, 20000 (mnist) / 90000 (cifar) steps with the "
             "paper's learning-rate schedule, clean error on all test images, kernel points "
             'from the first 50000 training images, 1000 attacked images, the original\'s C&W '
             'settings (abort early per example), eps round 8 (0.16).'),
}


class StageError(RuntimeError):
  pass


def _die_with_parent():
  """In the child, before exec: get SIGTERM when the driver dies, even by SIGKILL (Linux)."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _stop(proc):
  """Terminates a running stage, and kills it if it does not go within 10 s."""
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _as_json(value):
  """`value` as it reads back from stages.json (tuples become lists), for comparisons."""
  return json.loads(json.dumps(value))


def _data_files(pattern):
  return sorted(f for part in pattern.split(',') for f in glob.glob(part))


class Driver(object):
  """Runs the stages in order, skipping those whose inputs and outputs are unchanged.

  Each stage's record in stages.json holds its key (the command line and the identities of
  what it reads: data checksums, the model's step and fingerprint, upstream run ids) and the
  identity of its output (a run id, a checkpoint, a checksum). A stage is skipped only when
  the key it would run with now equals the recorded one and its output still has the recorded
  identity, so changing a flag or --steps reruns exactly the stages it affects.
  """

  def __init__(self, args):
    self.args = args
    self.preset = PRESETS[args.preset]
    self.out = os.path.abspath(args.out_dir or 'reproduce_%s' % args.preset)
    self.results = os.path.join(self.out, 'results')
    self.state_path = os.path.join(self.out, 'stages.json')
    io_utils.makedirs(os.path.join(self.out, 'logs'))
    io_utils.makedirs(self.results)
    self.state = {}
    if os.path.exists(self.state_path):
      with open(self.state_path) as f:
        self.state = json.load(f)
    self.order = []
    self.data_ids = {}

  # -- stage plumbing
  @staticmethod
  def _identity(output):
    """The stage output's identity, or None when it is missing, incomplete or corrupt."""
    import result_files  # pylint: disable=g-import-not-at-top
    try:
      return _as_json(output())
    except (result_files.ResultsError, ValueError, KeyError, OSError):
      return None

  def run(self, name, cmd, inputs, output, prepare=None, cwd=None):
    """Runs `cmd` unless it ran before with the same key and its output is unchanged.

    Args:
      name: stage name (stages.json, logs/{name}.log).
      cmd: the command (sys.executable, script, flags...).
      inputs: JSON-able identities of what the stage reads (with the command: its key).
      output: callable -> the identity of the stage's output, None if missing or incomplete.
      prepare: callable run just before the command (only when it runs).
      cwd: working directory (default the results folder).
    """
    self.order.append(name)
    display = ' '.join(shlex.quote(c) for c in ['python'] + cmd[1:])
    key = _as_json({'command': display, 'inputs': inputs})
    record = self.state.get(name)
    if record and record.get('key') == key and self._identity(output) == record['output']:
      print('[skip] %s (complete, inputs unchanged)' % name, flush=True)
      record['skipped'] = True
      return record
    if record:
      why = 'its inputs changed' if record.get('key') != key else 'its output is gone or changed'
      print('[redo] %s: %s since it last ran' % (name, why), flush=True)
    if prepare:
      prepare()
    print('[run ] %s: %s' % (name, display), flush=True)
    log = os.path.join(self.out, 'logs', name + '.log')
    self.state.pop(name, None)
    io_utils.atomic_write_json(self.state_path, self.state)
    start = time.time()
    with open(log, 'w') as f:
      proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd or self.results,
                              preexec_fn=_die_with_parent)
      try:
        rc = proc.wait()
      except BaseException:  # the driver is stopped (SIGTERM, Ctrl-C): so is the stage
        _stop(proc)
        raise
    wall = time.time() - start
    identity = self._identity(output) if rc == 0 else None
    if identity is None:
      with open(log) as f:
        tail = ''.join(f.readlines()[-15:])
      raise StageError('stage %s failed (exit %d%s); log %s:\n%s' % (
          name, rc, ', output incomplete' if rc == 0 else '', log, tail))
    with open(log) as f:
      output_tail = f.read()[-2000:]
    self.state[name] = {'command': display, 'key': key, 'output': identity,
                        'wall_s': round(wall, 1), 'output_tail': output_tail}
    io_utils.atomic_write_json(self.state_path, self.state)
    print('[done] %s in %.1f s' % (name, wall), flush=True)
    return self.state[name]

  def outputs(self, *names):
    """{stage: output identity} of finished upstream stages: a downstream stage's inputs."""
    return {n: self.state[n]['output'] for n in names}

  def script(self, name, *flags):
    return [sys.executable, os.path.join(HERE, name)] + list(flags)

  # -- the pipeline
  def data(self):
    """The data files (converting the bundled digits if needed) and their checksums."""
    import provenance  # pylint: disable=g-import-not-at-top
    args = self.args
    if args.preset != 'full' and args.dataset == 'mnist' and not args.data_dir:
      data_dir = os.path.join(self.out, 'digits_dataset')
      paths = [os.path.join(data_dir, n) for n in ('data_train.bin', 'data_test.bin')]
      self.run('data', self.script('dataset_input.py', '--convert=digits',
                                   '--out_dir=%s' % data_dir), {},
               lambda: [io_utils.sha256_file(p) for p in paths])
    else:
      data_dir = os.path.abspath(args.data_dir or '%s_dataset' % args.dataset)
    spec = dataset_table.get_spec(args.dataset)
    paths = (os.path.join(data_dir, spec.train_files), os.path.join(data_dir, spec.test_file))
    for part, pattern in zip(('train', 'test'), paths):
      files = _data_files(pattern)
      if not files:
        raise StageError('no data file matches %s (--data_dir=%s)' % (pattern, data_dir))
      self.data_ids[part] = provenance.data_identity(provenance.data_record(files))
    return paths

  def model_flags(self, rce):
    return ['--dataset=%s' % self.args.dataset, '--num_gpus=%d' % self.args.num_gpus,
            '--num_residual_units=%d' % self.preset['units'], '--RCE_train=%s' % rce,
            '--log_root=%s' % self.log_root(rce)]

  def log_root(self, rce):
    return os.path.join(self.out, 'models_%s' % self.args.dataset, 'RCE' if rce else 'CE')

  def train(self, rce, train_path):
    import checkpoints  # pylint: disable=g-import-not-at-top
    steps = self.args.steps or self.preset['steps'][self.args.dataset]
    name = 'train_%s' % ('RCE' if rce else 'CE')
    log_root = self.log_root(rce)
    flags = ['--train_data_path=%s' % train_path,
             '--train_dir=%s' % os.path.join(log_root, 'train'), '--mode=train',
             '--Optimizer=mom', '--checkpoint_steps=%d' % self.preset['checkpoint_steps'],
             '--test_every_steps=%d' % self.preset['checkpoint_steps']] + self.model_flags(rce)
    if self.preset['lr_decay']:
      boundaries = [max(1, int(round(f * steps))) for f in self.preset['lr_decay']]
      flags += ['--lr_boundaries=%s' % ','.join(str(b) for b in boundaries),
                '--lr_values=0.1,0.01,0.001']
    # What the checkpoints in log_root depend on, besides how far they went.
    lineage = _as_json({'flags': flags, 'data': self.data_ids})
    lineage_path = os.path.join(log_root, 'lineage.json')

    def output():
      ckpt = checkpoints.latest_checkpoint(log_root)
      info = checkpoints.inspect(ckpt) if ckpt else None
      if info is None or info.step != steps or info.nonfinite:
        return None
      return {'step': info.step, 'fingerprint': info.fingerprint}

    def prepare():
      """Training resumes from the checkpoints in log_root only if they are on its way: made
      with these flags and data (log_root/lineage.json) and not past the steps asked for."""
      ckpt = checkpoints.latest_checkpoint(log_root)
      if ckpt is not None:
        step = checkpoints.checkpoint_step(ckpt)
        recorded = None
        if os.path.exists(lineage_path):
          with open(lineage_path) as f:
            recorded = json.load(f)
        if step > steps or recorded != lineage:
          print('[note] %s: removing %s (step %d, %s): it cannot be resumed to step %d'
                % (name, log_root, step, 'past the steps asked for' if recorded == lineage
                   else 'made with other flags or data', steps), flush=True)
          shutil.rmtree(log_root)
      io_utils.atomic_write_json(lineage_path, lineage)

    self.run(name, self.script('train.py', '--total_steps=%d' % steps, *flags),
             {'data': self.data_ids}, output, prepare)

  def eval_dir(self, rce):
    return os.path.join(self.log_root(rce), 'eval')

  def test_nor(self, rce, test_path):
    import result_files  # pylint: disable=g-import-not-at-top
    model = 'RCE' if rce else 'CE'
    eval_dir = self.eval_dir(rce)
    self.run('test_nor_%s' % model, self.script(
        'test_nor.py', '--eval_data_path=%s' % test_path, '--eval_dir=%s' % eval_dir,
        '--mode=eval', '--eval_once',
        '--eval_batch_count=%d' % (100 if self.args.preset == 'full' else 50),
        *self.model_flags(rce)),
             dict(self.outputs('train_%s' % model), data=self.data_ids['test']),
             lambda: result_files.run_id(result_files.load_verified_summary(
                 eval_dir, result_files.CLEAN_RESULT)))

  def clean_result(self, rce):
    """test_nor's precision.json of one model (verified)."""
    import result_files  # pylint: disable=g-import-not-at-top
    return result_files.load_verified_summary(self.eval_dir(rce), result_files.CLEAN_RESULT)

  def attack_flags(self, attack):
    """The preset's attack flags; C&W runs keep the original's settings, only capped (never
    raised) by the preset's iterations and binary-search steps, and run at the preset's batch
    (results do not depend on it)."""
    p = self.preset
    flags = ['--results_dir=%s' % self.results, '--eval_batch_count=%d' % p['attack_batches'],
             '--attack_batch_size=%d' % p['attack_batch_size'],
             '--jsma_max_iter=%d' % p['jsma_max_iter']]
    stages = attack_names.info(attack).cw_stages
    if stages:
      flags.append('--cw_batch_size=%d' % p['cw']['batch'])
      cap = p['cw']['iterations']
      if cap and cap < max(s.max_iterations for s in stages):
        flags.append('--cw_max_iterations=%d' % cap)
      cap = p['cw']['search']
      if cap and cap < min(s.binary_search_steps for s in stages):
        flags.append('--cw_binary_search_steps=%d' % cap)
    return flags

  def attack(self, attack, rce, test_path):
    import result_files  # pylint: disable=g-import-not-at-top
    model = 'RCE' if rce else 'CE'
    directory = result_files.attack_dir(attack, self.args.dataset, rce,
                                        results_dir=self.results)
    flags = [] if attack != 'jsma' else ['--eps=%g' % (0.02 * self.preset['eps_round'])]
    upstream = ['train_%s' % model]
    if attack == 'carliniL2_specific':
      upstream.append('kernel_para_%s' % model)
    self.run('attack_%s_%s' % (attack, model), self.script(
        'test_adv.py', '--eval_data_path=%s' % test_path, '--Optimizer=mom', '--mode=attack',
        '--attack_method=%s' % attack,
        *(self.model_flags(rce) + self.attack_flags(attack) + flags)),
             dict(self.outputs(*upstream), data=self.data_ids['test']),
             lambda: result_files.run_id(result_files.load_verified_summary(directory)))

  def kernel_para(self, rce, train_path):
    import result_files  # pylint: disable=g-import-not-at-top
    model = 'RCE' if rce else 'CE'
    directory = result_files.kernel_dir(self.args.dataset, self.results)
    self.run('kernel_para_%s' % model, self.script(
        'test_adv.py', '--train_data_path=%s' % train_path, '--mode=kernel_para',
        '--results_dir=%s' % self.results,
        '--eval_batch_count=%d' % self.preset['kernel_batches'], *self.model_flags(rce)),
             dict(self.outputs('train_%s' % model), data=self.data_ids['train']),
             lambda: result_files.run_id(result_files.load_verified_summary(
                 directory, result_files.kernel_summary_name(rce))))

  def detect(self, attack_stages):
    import result_files  # pylint: disable=g-import-not-at-top
    directory = os.path.join(self.results, 'detect_%s' % self.args.dataset)
    return self.run('detect', self.script(
        'test_adv.py', '--mode=detect', '--dataset=%s' % self.args.dataset,
        '--results_dir=%s' % self.results, '--eps_round=%d' % self.preset['eps_round']),
                    self.outputs(*(attack_stages + ['kernel_para_CE', 'kernel_para_RCE'])),
                    lambda: result_files.run_id(result_files.load_verified_summary(directory)))

  def tsne(self, attack):
    out = os.path.join(self.results, 'detect_%s' % self.args.dataset, 'tsne_%s.png' % attack)
    self.run('tsne_%s' % attack, self.script(
        't_sne.py', '--dataset=%s' % self.args.dataset, '--attack_method=%s' % attack,
        '--results_dir=%s' % self.results, '--eps_round=%d' % self.preset['eps_round'],
        '--tsne_out=%s' % out),
             self.outputs('attack_%s_CE' % attack, 'attack_%s_RCE' % attack),
             lambda: io_utils.sha256_file(out))
    return out

  def pipeline(self):
    start = time.time()
    train_path, test_path = self.data()
    for rce in (False, True):
      self.train(rce, train_path)
      self.test_nor(rce, test_path)
    attack_stages = []
    for attack in attack_names.paper_attacks():
      for rce in (False, True):
        self.attack(attack, rce, test_path)
        attack_stages.append(self.order[-1])
    for rce in (False, True):
      self.kernel_para(rce, train_path)
    for attack in attack_names.paper_attacks(white_box=True):
      for rce in (False, True):
        self.attack(attack, rce, test_path)
        attack_stages.append(self.order[-1])
    self.detect(attack_stages)
    tsne = [self.tsne(a) for a in self.preset['tsne']]
    self.write_report(tsne, time.time() - start)

  # -- the report
  def table3(self):
    """Table 3 (C&W-wb) with its definitions and the C&W settings each run used."""
    import result_files  # pylint: disable=g-import-not-at-top
    lines = ['| Model | ratio of f2(x*) > 0 | distortion (RMS, the paper\'s) | mean L2 '
             'distortion | examples counted | target reached |', '|---|---|---|---|---|---|']
    settings = []
    for rce in (False, True):
      directory = result_files.attack_dir('carliniL2_specific', self.args.dataset, rce,
                                          results_dir=self.results)
      stats = result_files.load_verified_summary(directory)['attack_stats']
      fmt = lambda v: 'n/c' if v is None else '%.4f' % v
      model = 'RCE' if rce else 'CE'
      lines.append('| %s | %s | %s | %s | %d | %.4f |' % (
          model, fmt(stats['ratio_f2_positive']), fmt(stats['rms_distortion']),
          fmt(stats['mean_l2_distortion']), stats['table3_examples'],
          stats['target_reached_rate']))
      settings.append('%s: %s' % (model, '; then '.join(
          '%(binary_search_steps)d x %(max_iterations)d iterations, c %(initial_const)g, '
          'confidence %(confidence)g' % s for s in stats['cw_settings'])))
    return '\n'.join(lines) + (
        '\n\nCounted: the examples classified correctly when clean whose adversarial image is '
        'classified as its target (on the logits). Ratio of f2(x*) > 0: the fraction of them '
        'the K-density detector still flags (f2 = -log K-density of the target class + log of '
        'its training median; higher is better for the defense). Distortion (RMS): the mean '
        'over them of sqrt(mean((x - x*)^2)), the original\'s; mean L2: of ||x - x*||_2. '
        'n/c: no example counted. C&W runs used: %s.\n' % ' | '.join(settings))

  def write_report(self, tsne, total_wall):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    table1 = ['| Model | test error | images | checkpoint step | model fingerprint |',
              '|---|---|---|---|---|']
    for rce in (False, True):
      clean = self.clean_result(rce)
      table1.append('| %s | %.2f %% | %d | %d | %s |' % (
          'RCE' if rce else 'CE', 100.0 * (1.0 - clean['precision']), clean['images'],
          clean['checkpoint_step'], clean['provenance']['model']['fingerprint'][:16]))
    table1.append('\nImages: the first ones of the test file(s) %s, in file order (the '
                  "original's test_nor.py used the first 5000)."
                  % ', '.join(os.path.basename(d['path'])
                              for d in clean['provenance']['data']))
    detect_dir = os.path.join(self.results, 'detect_%s' % self.args.dataset)
    with open(os.path.join(detect_dir, 'table2.md')) as f:
      table2 = f.read()
    images = sorted(n for n in os.listdir(detect_dir) if n.endswith('.png'))
    timing = ['| Stage | wall time (s) | |', '|---|---|---|']
    commands = []
    for name in self.order:
      record = self.state[name]
      timing.append('| %s | %.1f | %s |' % (name, record['wall_s'],
                                             'from an earlier run' if record.get('skipped')
                                             else ''))
      commands.append(record['command'])
    devices = ', '.join('%s' % d.name for d in tf.config.list_physical_devices())
    text = '\n'.join([
        '# Reproduction of "Towards Robust Detection of Adversarial Examples" (RCE + K-density)',
        '', 'Preset **%s** on %s: %s' % (self.args.preset, self.args.dataset,
                                         self.preset['note']),
        '', 'TensorFlow %s; devices: %s; --num_gpus=%d; total wall time of this invocation '
        '%.0f s.' % (tf.__version__, devices, self.args.num_gpus, total_wall),
        '', '## Table 1: clean test error', ''] + table1 + [
        '', '## Table 2: ROC-AUC of detection', '', table2,
        '## Table 3: white-box attack on the K-density detector (C&W-wb)', '', self.table3(),
        '## Figures', ''] + ['![%s](results/detect_%s/%s)' % (n, self.args.dataset, n)
                             for n in images] + [
        '', '## Wall time per stage', ''] + timing + [
        '', '## Commands run', '', '```'] + commands + ['```', ''])
    io_utils.atomic_write_text(os.path.join(self.out, 'RESULTS.md'), text)
    print('wrote %s' % os.path.join(self.out, 'RESULTS.md'))


class _StrictParser(argparse.ArgumentParser):
  """argparse without abbreviations (--step is not --steps) and with one-line errors."""

  def __init__(self, **kwargs):
    super().__init__(allow_abbrev=False, **kwargs)

  def error(self, message):
    sys.exit('error: %s (see python reproduce.py --help)' % message)


def _count(text):
  """argparse type of the counts: an integer >= 0."""
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError('must be >= 0, got %d' % value)
  return value


def parse_args(argv):
  parser = _StrictParser(description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  group = parser.add_mutually_exclusive_group()
  group.add_argument('--tiny', dest='preset', action='store_const', const='tiny')
  group.add_argument('--full', dest='preset', action='store_const', const='full')
  parser.set_defaults(preset='digits')
  parser.add_argument('--dataset', default='mnist', choices=sorted(dataset_table.DATASETS))
  parser.add_argument('--data_dir', default='', help='Folder of the data files (default: '
                      'the bundled digits for mnist without --full, else {dataset}_dataset).')
  parser.add_argument('--out_dir', default='', help='Default reproduce_{preset}.')
  parser.add_argument('--num_gpus', type=_count, default=None,
                      help='Towers; default: every GPU present (0: the CPU).')
  parser.add_argument('--steps', type=_count, default=0,
                      help='Override the training steps (0: the preset\'s).')
  args = parser.parse_args(argv)
  if args.dataset != 'mnist' and args.preset != 'full' and not args.data_dir:
    parser.error('--dataset=%s needs --data_dir with its binary files (only mnist has a '
                 'bundled stand-in, the digits)' % args.dataset)
  if args.num_gpus is None:
    import tensorflow as tf
    args.num_gpus = len(tf.config.list_physical_devices('GPU'))
  return args


def _exit_on_signal(signum, frame):
  del frame
  sys.exit(128 + signum)  # unwinds through Driver.run, which stops the running stage


def main(argv=None):
  sys.path.insert(0, HERE)
  args = parse_args(argv)
  for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, _exit_on_signal)
  try:
    Driver(args).pipeline()
  except StageError as e:
    sys.exit('error: %s' % e)
  except OSError as e:
    sys.exit('error: %s: %s' % (e.strerror or e, e.filename))


if __name__ == '__main__':
  main()
