"""One command reproduces the paper: train CE and RCE, attack, detect, report in RESULTS.md.

  python reproduce.py            # digits preset: bundled data, 2-core CPU, ~15 minutes
  python reproduce.py --tiny     # a few steps and images: the CI smoke run
  python reproduce.py --full --dataset=mnist --data_dir=mnist_dataset   # the paper's settings

Every stage is one of the README's commands (train.py, test_nor.py, test_adv.py, t_sne.py)
run as a subprocess; the exact command lines, their wall times, the TensorFlow version and
the devices go into the report. A stage whose outputs exist and are complete is skipped, so
an interrupted run continues where it stopped.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

import io_utils

HERE = os.path.dirname(os.path.abspath(__file__))
# TensorFlow's C++ start-up notices (oneDNN, CUDA probing) would drown the stage logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
SWEPT = ('fgsm', 'bim', 'tgsm', 'jsma')
CW = ('carliniL2', 'carliniL2_highcon')
ALL_ATTACKS = SWEPT + CW + ('carliniL2_specific',)

# Each preset says plainly how it departs from the paper's settings.
PRESETS = {
    'tiny': dict(
        units=1, steps={'mnist': 60, 'cifar10': 60}, checkpoint_steps=30, attack_batches=1,
        attack_batch_size=40, kernel_batches=15, cw=dict(iterations=20, search=2, batch=40),
        jsma_max_iter=20, eps_round=2, tsne=('fgsm',),
        note='CI smoke run: ResNet-8, 60 training steps, 40 attacked images, C&W 2x20 '
             'iterations, JSMA 20 pixels; numbers are not meaningful, only complete.'),
    'digits': dict(
        units=1, steps={'mnist': 1000, 'cifar10': 1000}, checkpoint_steps=500,
        attack_batches=1, attack_batch_size=200, kernel_batches=15,
        cw=dict(iterations=100, search=5, batch=100), jsma_max_iter=100, eps_round=1,
        tsne=('fgsm', 'carliniL2'),
        note='bundled digits data (1438 train / 359 test images of 8x8 upsampled to 28x28), '
             'ResNet-8 (num_residual_units=1), 1000 steps, 200 attacked images, C&W 5x100 '
             'iterations, detection at eps round 1 (eps 0.02): at larger eps every attack '
             'saturates on this small data set (SPEC.md section 11).'),
    'full': dict(
        units=5, steps={'mnist': 20000, 'cifar10': 90000}, checkpoint_steps=2500,
        attack_batches=5, attack_batch_size=200, kernel_batches=600,
        cw=dict(iterations=10000, search=9, batch=100), jsma_max_iter=100, eps_round=8,
        tsne=('fgsm', 'carliniL2'),
        note="the paper's settings: ResNet-32, 20000 (mnist) / 90000 (cifar10) steps, 1000 "
             'attacked images, C&W 9x10000 iterations with abort-early, eps round 8 (0.16).'),
}


class StageError(RuntimeError):
  pass


class Driver(object):
  """Runs the stages in order, skipping complete ones, and keeps a record for the report."""

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

  # -- stage plumbing
  def run(self, name, cmd, done=None, cwd=None):
    """Runs `cmd` unless it ran before and `done()` (its outputs are complete).

    Records the command line, its wall time and the tail of its output in stages.json.
    """
    self.order.append(name)
    done = done or (lambda: True)
    display = ' '.join(shlex.quote(c) for c in ['python'] + cmd[1:])
    if name in self.state and done():
      print('[skip] %s (complete)' % name, flush=True)
      self.state[name]['skipped'] = True
      return self.state[name]
    print('[run ] %s: %s' % (name, display), flush=True)
    log = os.path.join(self.out, 'logs', name + '.log')
    start = time.time()
    with open(log, 'w') as f:
      rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd or self.results)
    wall = time.time() - start
    if rc != 0 or not done():
      with open(log) as f:
        tail = ''.join(f.readlines()[-15:])
      raise StageError('stage %s failed (exit %d); log %s:\n%s' % (name, rc, log, tail))
    with open(log) as f:
      output = f.read()
    self.state[name] = {'command': display, 'wall_s': round(wall, 1), 'output_tail':
                        output[-2000:]}
    io_utils.atomic_write_json(self.state_path, self.state)
    print('[done] %s in %.1f s' % (name, wall), flush=True)
    return self.state[name]

  def script(self, name, *flags):
    return [sys.executable, os.path.join(HERE, name)] + list(flags)

  # -- the pipeline
  def data(self):
    args = self.args
    if args.preset != 'full' and args.dataset == 'mnist' and not args.data_dir:
      data_dir = os.path.join(self.out, 'digits_dataset')
      self.run('data', self.script('dataset_input.py', '--convert=digits',
                                   '--out_dir=%s' % data_dir),
               lambda: os.path.exists(os.path.join(data_dir, 'data_test.bin')))
    else:
      data_dir = os.path.abspath(args.data_dir or '%s_dataset' % args.dataset)
    if args.dataset == 'mnist':
      return (os.path.join(data_dir, 'data_train.bin'), os.path.join(data_dir, 'data_test.bin'))
    return (os.path.join(data_dir, 'data_batch_*.bin'), os.path.join(data_dir, 'test_batch.bin'))

  def model_flags(self, rce):
    return ['--dataset=%s' % self.args.dataset, '--num_gpus=%d' % self.args.num_gpus,
            '--num_residual_units=%d' % self.preset['units'], '--RCE_train=%s' % rce,
            '--log_root=%s' % self.log_root(rce)]

  def log_root(self, rce):
    return os.path.join(self.out, 'models_%s' % self.args.dataset, 'RCE' if rce else 'CE')

  def train(self, rce, train_path):
    import checkpoints
    steps = self.preset['steps'][self.args.dataset]
    if self.args.steps:
      steps = self.args.steps

    def done():
      ckpt = checkpoints.latest_checkpoint(self.log_root(rce))
      return ckpt is not None and checkpoints.checkpoint_step(ckpt) >= steps

    self.run('train_%s' % ('RCE' if rce else 'CE'), self.script(
        'train.py', '--train_data_path=%s' % train_path,
        '--train_dir=%s' % os.path.join(self.log_root(rce), 'train'), '--mode=train',
        '--Optimizer=mom', '--total_steps=%d' % steps,
        '--checkpoint_steps=%d' % self.preset['checkpoint_steps'],
        '--test_every_steps=%d' % self.preset['checkpoint_steps'],
        *self.model_flags(rce)), done)

  def test_nor(self, rce, test_path):
    name = 'test_nor_%s' % ('RCE' if rce else 'CE')
    record = self.run(name, self.script(
        'test_nor.py', '--eval_data_path=%s' % test_path,
        '--eval_dir=%s' % os.path.join(self.log_root(rce), 'eval'), '--mode=eval',
        '--eval_once', '--eval_batch_count=%d' % (100 if self.args.preset == 'full' else 50),
        *self.model_flags(rce)))
    match = re.search(r'precision: ([0-9.]+).*images: (\d+)', record['output_tail'])
    return float(match.group(1)), int(match.group(2))

  def attack_flags(self):
    p = self.preset
    return ['--results_dir=%s' % self.results, '--eval_batch_count=%d' % p['attack_batches'],
            '--attack_batch_size=%d' % p['attack_batch_size'],
            '--cw_max_iterations=%d' % p['cw']['iterations'],
            '--cw_binary_search_steps=%d' % p['cw']['search'],
            '--cw_batch_size=%d' % p['cw']['batch'], '--jsma_max_iter=%d' % p['jsma_max_iter']]

  def attack(self, attack, rce, test_path):
    import result_files
    directory = result_files.attack_dir(attack, self.args.dataset, rce,
                                        results_dir=self.results)
    flags = [] if attack != 'jsma' else ['--eps=%g' % (0.02 * self.preset['eps_round'])]
    self.run('attack_%s_%s' % (attack, 'RCE' if rce else 'CE'), self.script(
        'test_adv.py', '--eval_data_path=%s' % test_path, '--Optimizer=mom', '--mode=attack',
        '--attack_method=%s' % attack, *(self.model_flags(rce) + self.attack_flags() + flags)),
        lambda: result_files.is_complete(directory))

  def kernel_para(self, rce, train_path):
    import result_files
    path = os.path.join(result_files.kernel_dir(self.args.dataset, self.results),
                        'kernel_%s.npz' % ('RCE' if rce else 'CE'))
    self.run('kernel_para_%s' % ('RCE' if rce else 'CE'), self.script(
        'test_adv.py', '--train_data_path=%s' % train_path, '--mode=kernel_para',
        '--results_dir=%s' % self.results,
        '--eval_batch_count=%d' % self.preset['kernel_batches'], *self.model_flags(rce)),
        lambda: os.path.exists(path))

  def detect(self):
    self.state.pop('detect', None)  # cheap, and must reflect every attack present
    return self.run('detect', self.script(
        'test_adv.py', '--mode=detect', '--dataset=%s' % self.args.dataset,
        '--results_dir=%s' % self.results, '--eps_round=%d' % self.preset['eps_round']))

  def tsne(self, attack):
    out = os.path.join(self.results, 'detect_%s' % self.args.dataset, 'tsne_%s.png' % attack)
    self.run('tsne_%s' % attack, self.script(
        't_sne.py', '--dataset=%s' % self.args.dataset, '--attack_method=%s' % attack,
        '--results_dir=%s' % self.results, '--eps_round=%d' % self.preset['eps_round'],
        '--tsne_out=%s' % out), lambda: os.path.exists(out))
    return out

  def pipeline(self):
    start = time.time()
    train_path, test_path = self.data()
    clean = {}
    for rce in (False, True):
      self.train(rce, train_path)
      clean['RCE' if rce else 'CE'] = self.test_nor(rce, test_path)
    for attack in SWEPT + CW:
      for rce in (False, True):
        self.attack(attack, rce, test_path)
    for rce in (False, True):
      self.kernel_para(rce, train_path)
    for rce in (False, True):
      self.attack('carliniL2_specific', rce, test_path)
    self.detect()
    tsne = [self.tsne(a) for a in self.preset['tsne']]
    self.write_report(clean, tsne, time.time() - start)

  # -- the report
  def table3(self):
    import result_files
    lines = ['| Model | ratio of f2(x*) > 0 | mean minimal L2 distortion | target reached |',
             '|---|---|---|---|']
    for rce in (False, True):
      directory = result_files.attack_dir('carliniL2_specific', self.args.dataset, rce,
                                          results_dir=self.results)
      stats = result_files.load_summary(directory)['attack_stats']
      fmt = lambda v: 'n/c (no example reached its target)' if v is None else '%.4f' % v
      lines.append('| %s | %s | %s | %.4f |' % (
          'RCE' if rce else 'CE', fmt(stats['ratio_f2_positive']),
          fmt(stats['mean_l2_distortion']), stats['target_reached_rate']))
    return '\n'.join(lines) + '\n'

  def write_report(self, clean, tsne, total_wall):
    import tensorflow as tf
    table1 = ['| Model | test error | images |', '|---|---|---|']
    for model in ('CE', 'RCE'):
      precision, n = clean[model]
      table1.append('| %s | %.2f %% | %d |' % (model, 100.0 * (1.0 - precision), n))
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


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  group = parser.add_mutually_exclusive_group()
  group.add_argument('--tiny', dest='preset', action='store_const', const='tiny')
  group.add_argument('--full', dest='preset', action='store_const', const='full')
  parser.set_defaults(preset='digits')
  parser.add_argument('--dataset', default='mnist', choices=['mnist', 'cifar10'])
  parser.add_argument('--data_dir', default='', help='Folder of the data files (default: '
                      'the bundled digits for mnist without --full, else {dataset}_dataset).')
  parser.add_argument('--out_dir', default='', help='Default reproduce_{preset}.')
  parser.add_argument('--num_gpus', type=int, default=None,
                      help='Towers; default: every GPU present (0: the CPU).')
  parser.add_argument('--steps', type=int, default=0, help='Override the training steps.')
  args = parser.parse_args(argv)
  if args.dataset == 'cifar10' and args.preset != 'full' and not args.data_dir:
    parser.error('--dataset=cifar10 needs --data_dir with the CIFAR-10 binary files')
  if args.num_gpus is None:
    import tensorflow as tf
    args.num_gpus = len(tf.config.list_physical_devices('GPU'))
  return args


def main(argv=None):
  sys.path.insert(0, HERE)
  driver = Driver(parse_args(argv))
  try:
    driver.pipeline()
  except StageError as e:
    sys.exit('error: %s' % e)


if __name__ == '__main__':
  main()
