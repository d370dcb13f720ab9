"""Cost of one step of the adaptive PGD attacks (attacks/adaptive.py) against a plain PGD step.

Builds ResNet-32 (num_residual_units=5, freshly initialized: the cost does not depend on the
weights) on [B, 28, 28, 1], 10 classes, and the detectors' differentiable scores
(rce.detection.detector_graphs.score_graph) with random parameters of the real sizes:
K-density with 1000 kernel points per class (10000 x 64, sigma2 = 1 / 0.26), Mahalanobis
(random class means, a positive-definite precision) and LID (a 100-row reference, k = 20).
For each (method, detector) one `adaptive.build_pgd` graph is built; its number of steps is
fed. A run of S steps also holds one forward pass and the score after the loop, so each
measurement is a run of S steps minus a run of 0 steps of the same graph, divided by S and
the batch: ms per example per step. Every graph is run once untimed first; then the graphs
are timed in interleaved rounds (A B C D ..., the order rotated each round) so that a slow
spell of the shared machine hits them all alike. The table gives the medians over the
rounds, and the ratio to the oblivious step (plain PGD on the classifier, the baseline)
measured in the same run, by wall and by process-CPU time.

Targets (the issue): lagrangian and selective at most 1.3x the plain step (one backward pass
of a per-example mixed loss: selective differentiates where(success, score, L_cls)),
orthogonal at most 2x (two gradients). The verdicts (PASS / MISS, by the wall ratio) are
printed only: the script never asserts and exits 0.

    python -m benchmarks.adaptive_step              # ResNet-32, batch 100, ~2.5 min on 2 cores
    python -m benchmarks.adaptive_step --quick      # ResNet-8, batch 20, well under a minute
    python -m benchmarks.adaptive_step --detectors=k_density --methods=oblivious,selective
"""
import argparse
import os
import statistics
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from attacks import adaptive  # pylint: disable=g-import-not-at-top
from benchmarks import timing  # pylint: disable=g-import-not-at-top
import dataset_input  # pylint: disable=g-import-not-at-top
from rce.detection import detector_graphs  # pylint: disable=g-import-not-at-top
from rce.detection import final_feature_detectors as ffd  # pylint: disable=g-import-not-at-top
import resnet_model  # pylint: disable=g-import-not-at-top

tf1 = tf.compat.v1

SHAPE = (28, 28, 1)
NUM_CLASSES = 10
EPS = 0.3
METHODS = adaptive.METHODS
TARGETS = {'lagrangian': 1.3, 'selective': 1.3, 'orthogonal': 2.0}
KD_POINTS_PER_CLASS = 1000
KD_SIGMA2 = 1.0 / 0.26
LID_REFERENCE, LID_K = 100, 20
DEFAULTS = {'batch': 100, 'steps': 5, 'repeats': 3, 'units': 5}
QUICK = {'batch': 20, 'steps': 3, 'repeats': 2, 'units': 1}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.adaptive_step',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, help='examples per run (default %d)'
                      % DEFAULTS['batch'])
  parser.add_argument('--steps', type=int, help='PGD steps per timed run (default %d)'
                      % DEFAULTS['steps'])
  parser.add_argument('--repeats', type=int, help='timed rounds (default %d)'
                      % DEFAULTS['repeats'])
  parser.add_argument('--units', type=int, help='num_residual_units, 5 = ResNet-32 (default %d)'
                      % DEFAULTS['units'])
  parser.add_argument('--detectors', default=','.join(ffd.DETECTOR_NAMES),
                      help='comma-separated subset of: %s' % ', '.join(ffd.DETECTOR_NAMES))
  parser.add_argument('--methods', default=','.join(METHODS),
                      help='comma-separated subset of: %s (oblivious, the baseline, is always '
                      'run)' % ', '.join(METHODS))
  parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                      help='intra-op threads (inter-op is 1)')
  parser.add_argument('--quick', action='store_true',
                      help='units %(units)d, batch %(batch)d, steps %(steps)d, repeats '
                      '%(repeats)d unless given' % QUICK)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  for key, value in (QUICK if args.quick else DEFAULTS).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.detectors = [d for d in args.detectors.split(',') if d]
  args.methods = [m for m in args.methods.split(',') if m]
  for values, choices, what in ((args.detectors, ffd.DETECTOR_NAMES, 'detector'),
                                (args.methods, METHODS, 'method')):
    unknown = [v for v in values if v not in choices]
    if unknown:
      parser.error('unknown %s(s) %s; choose from %s' % (what, unknown, ', '.join(choices)))
  if 'oblivious' not in args.methods:
    args.methods.insert(0, 'oblivious')
  if min(args.batch, args.steps, args.repeats, args.units) < 1:
    parser.error('--batch, --steps, --repeats and --units must be >= 1')
  return args


def make_detectors(names, seed):
  """The detectors of final_feature_detectors.py with random parameters of the real sizes."""
  rng = np.random.RandomState(seed)
  dim = resnet_model.FEATURE_DIM
  made = {}
  if 'k_density' in names:
    points = np.abs(rng.randn(NUM_CLASSES * KD_POINTS_PER_CLASS, dim))
    labels = np.repeat(np.arange(NUM_CLASSES), KD_POINTS_PER_CLASS)
    made['k_density'] = ffd.KDensityDetector(points, labels, KD_SIGMA2)
  if 'mahalanobis' in names:
    a = rng.randn(dim, dim)
    made['mahalanobis'] = ffd.MahalanobisDetector(rng.randn(NUM_CLASSES, dim),
                                                  a @ a.T / dim + np.eye(dim))
  if 'lid' in names:
    made['lid'] = ffd.LIDDetector(np.abs(rng.randn(LID_REFERENCE, dim)), LID_K)
  return made


class Bench(object):
  """The model, the detectors' scores and one build_pgd graph per (method, detector)."""

  def __init__(self, args):
    self.graph = tf.Graph()
    hps = resnet_model.default_hparams(num_residual_units=args.units,
                                       num_classes=NUM_CLASSES)
    model_fn = resnet_model.make_model_fn(hps)
    detectors = make_detectors(args.detectors, args.seed)
    with self.graph.as_default():
      tf1.set_random_seed(args.seed)
      shape = [None] + list(SHAPE)
      self.x = tf1.placeholder(tf.float32, shape, name='x')
      self.x_init = tf1.placeholder(tf.float32, shape, name='x_init')
      self.labels = tf1.placeholder(tf.int32, [None], name='labels')
      self.steps = tf1.placeholder(tf.int32, [], name='steps')
      self.threshold = tf1.placeholder(tf.float32, [], name='threshold')
      self.lam = tf1.placeholder(tf.float32, [None], name='lam')
      self.results = {}
      for method in args.methods:
        for name in (['-'] if method == 'oblivious' else args.detectors):
          score_fn = None if name == '-' else self._score_fn(detectors[name])
          self.results[method, name] = self._pgd(model_fn, score_fn, method)
      self.params = int(sum(np.prod(v.shape) for v in tf1.trainable_variables()))
      init = tf1.global_variables_initializer()
    self.graph.finalize()
    config = tf1.ConfigProto(intra_op_parallelism_threads=args.threads,
                             inter_op_parallelism_threads=1)
    self.sess = tf1.Session(graph=self.graph, config=config)
    self.sess.run(init)

  @staticmethod
  def _score_fn(detector):
    return lambda logits, feature, classes: detector_graphs.score_graph(detector, feature,
                                                                        classes)

  def _pgd(self, model_fn, score_fn, method):
    return adaptive.build_pgd(model_fn, score_fn, self.x, self.x_init, self.labels, EPS,
                              self.steps, EPS / 10, EPS / 20, method, 'ce', False,
                              self.threshold, self.lam)

  def feed(self, images, labels, x_init, steps):
    return {self.x: images, self.x_init: x_init, self.labels: labels, self.steps: steps,
            self.threshold: 0.0, self.lam: np.ones(len(images), np.float32)}

  def runner(self, key, feed):
    return lambda: self.sess.run(self.results[key].x_adv, feed)


def _median_ratio(samples, base):
  """Median over the rounds of samples[r] / base[r]."""
  return statistics.median(s / b for s, b in zip(samples, base))


def main(argv=None):
  args = parse_args(argv)
  images, labels = dataset_input.digits_arrays()[:2]
  rng = np.random.RandomState(args.seed)
  rows = rng.randint(0, len(images), args.batch)
  x = images[rows][..., None] - 0.5  # NHWC in [-0.5, 0.5], as the model reads them
  y = labels[rows].astype(np.int32)
  x_init = np.clip(x + EPS * rng.uniform(-1, 1, x.shape), -0.5, 0.5).astype(np.float32)

  bench, build_s, _ = timing.timed(lambda: Bench(args))
  keys = list(bench.results)
  feeds = {s: bench.feed(x, y, x_init, s) for s in (0, args.steps)}
  warm_s = timing.warm_up(lambda: [bench.sess.run(bench.results[k].x_adv,
                                                  bench.feed(x, y, x_init, 1)) for k in keys])
  # Per round and key: wall and CPU seconds of one step for the whole batch.
  wall = {k: [] for k in keys}
  cpu = {k: [] for k in keys}
  load = []
  for r in range(args.repeats):
    for key in timing.rotated(keys, r):
      full = timing.timed(bench.runner(key, feeds[args.steps]))[1:]
      empty = timing.timed(bench.runner(key, feeds[0]))[1:]
      wall[key].append(max(full[0] - empty[0], timing.MIN_SECONDS) / args.steps)
      cpu[key].append(max(full[1] - empty[1], timing.MIN_SECONDS) / args.steps)
    load.append(timing.load_average())

  bench.sess.close()

  print('\none attack step, ResNet-%d (num_residual_units=%d, %d parameters, random init), '
        '[B, %s], %d classes, batch %d, %d steps per run (minus a 0-step run), %d rounds, '
        '%d intra-op threads on %d CPU cores, TensorFlow %s'
        % (6 * args.units + 2, args.units, bench.params, ', '.join(map(str, SHAPE)),
           NUM_CLASSES, args.batch, args.steps, args.repeats, args.threads,
           os.cpu_count() or 1, tf.__version__))
  print('graphs built in %.1fs, warm-up %.1fs; 1-min load average per round: %s\n'
        % (build_s, warm_s, ', '.join('%.1f' % v for v in load)))
  base = ('oblivious', '-')
  per_example = 1000.0 / args.batch
  print('| method | detector | ms / example / step | x oblivious (wall) | x oblivious (CPU) '
        '| target | |')
  print('|---|---|---|---|---|---|---|')
  verdicts = []
  for key in keys:
    method, name = key
    ms = statistics.median(wall[key]) * per_example
    if key == base:
      print('| %s | %s | %.2f | 1.00 | 1.00 | baseline | |' % (method, name, ms))
      continue
    ratio = _median_ratio(wall[key], wall[base])
    ratio_cpu = _median_ratio(cpu[key], cpu[base])
    target = TARGETS[method]
    verdict = 'PASS' if ratio <= target else 'MISS'
    verdicts.append((method, name, ratio, target, verdict))
    print('| %s | %s | %.2f | %.2f | %.2f | <= %.1fx | %s |'
          % (method, name, ms, ratio, ratio_cpu, target, verdict))
  print('\nratios: median over the rounds of the step time over the oblivious step of the same '
        'round; verdict by the wall ratio.')
  missed = [v for v in verdicts if v[4] == 'MISS']
  print('targets met: %d of %d%s' % (len(verdicts) - len(missed), len(verdicts),
                                     '' if not missed else '; missed: ' + ', '.join(
                                         '%s/%s %.2fx > %.1fx' % v[:4] for v in missed)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
