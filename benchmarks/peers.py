"""Our attacks (attacks/, TF1 graph mode) against ART, foolbox 3 and cleverhans 4 (TF2 eager).

Every library attacks the same trained ResNet (one checkpoint; the peers through
`peers_model.EagerResNet`) on the same images, labels and targets with equal iteration
counts, each behind a small adapter class (`Library`). What is compared, the settings, how it
is timed and scored, and the workarounds for the peers' pitfalls: benchmarks/README.md.

  /tmp/peers-venv/bin/python benchmarks/peers.py --log_root=/tmp/peers_model --rce
      [--train_steps 300] [--num_images 100] [--attacks fgsm,bim,ilcm,jsma,cw]
      [--libraries ours,art,foolbox,cleverhans] [--repeats 3] [...]  (--help lists all)
"""
import argparse
import collections
import contextlib
import functools
import io
import os
import subprocess
import sys
import time
import traceback
import warnings

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path.insert(0, _ROOT)
sys.path.insert(0, _HERE)

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from rce.attacking import attack_runner  # pylint: disable=g-import-not-at-top
import attacks  # pylint: disable=g-import-not-at-top
from rce.model import checkpoints  # pylint: disable=g-import-not-at-top
import dataset_input  # pylint: disable=g-import-not-at-top
import peers_model  # pylint: disable=g-import-not-at-top
import resnet_model  # pylint: disable=g-import-not-at-top
from rce.model import restored_model  # pylint: disable=g-import-not-at-top
import timing  # pylint: disable=g-import-not-at-top

tf1 = tf.compat.v1

ATTACKS = ('fgsm', 'bim', 'ilcm', 'jsma', 'cw')
OURS = 'ours'  # the library every peer is compared with
CLIP_MIN, CLIP_MAX = -0.5, 0.5
WARMUP_IMAGES = 4
SHORT_CALL_S = 2.0  # calls shorter than this get 4x --repeats timed rounds
LONG_CALL_S = 10.0  # a library stops repeating after a call this long
TARGETED = {'fgsm': False, 'bim': False, 'ilcm': True, 'jsma': True}
# The targets beyond "ours no slower than the fastest peer": ours' JSMA this many times faster
# per example than that peer's, ours' C&W mean L2 no worse than that peer's.
JSMA_SPEED_TARGET = ('art', 10.0)
CW_L2_TARGET = 'foolbox'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--log_root', default='/tmp/peers_model',
                 help='checkpoint directory; trained there first if it has no checkpoint '
                      'at --train_steps or later')
  p.add_argument('--train_steps', type=int, default=300,
                 help='train.py --total_steps when --log_root needs training (0: never)')
  p.add_argument('--data_dir', default='/tmp/peers_data',
                 help='digits data (made with dataset_input.py --convert=digits if missing)')
  p.add_argument('--num_residual_units', type=int, default=5, help='5 = ResNet-32')
  p.add_argument('--rce', action='store_true', help='the model is (to be) trained with RCE; '
                 'everything uses the flipped logits')
  p.add_argument('--num_images', type=int, default=100,
                 help='test images for fgsm/bim/ilcm/jsma (at most 359)')
  p.add_argument('--jsma_num_images', type=int, default=30,
                 help='the first N of those images for JSMA (every library the same; ART '
                      'takes 1-3 s per image)')
  p.add_argument('--cw_num_images', type=int, default=10,
                 help='the first N of those images for C&W (every library the same)')
  p.add_argument('--repeats', type=int, default=3,
                 help='timed rounds per (library, attack), the minimum is reported; none '
                      'after a call of 10 s, 4x as many while calls take under 2 s')
  p.add_argument('--attacks', default=','.join(ATTACKS))
  p.add_argument('--libraries', default=','.join(ADAPTERS))
  p.add_argument('--eps', type=float, default=0.1, help='L-inf budget of fgsm/bim/ilcm')
  p.add_argument('--bim_steps', type=int, default=10, help='steps of bim and ilcm (eps/steps)')
  p.add_argument('--jsma_theta', type=float, default=1.0)
  p.add_argument('--jsma_max_pixels', type=int, default=100)
  p.add_argument('--cw_binary_search_steps', type=int, default=5)
  p.add_argument('--cw_max_iterations', type=int, default=100)
  p.add_argument('--cw_learning_rate', type=float, default=0.01)
  p.add_argument('--cw_initial_const', type=float, default=1.0)
  p.add_argument('--cw_untargeted', action='store_true',
                 help='untargeted C&W for everybody (default: a random target != true label)')
  p.add_argument('--cleverhans_cw_as_is', action='store_true',
                 help='run cleverhans 4 C&W with its const-shape bug (default: fixed, see '
                      'Pitfalls in benchmarks/README.md)')
  p.add_argument('--peer_time_cap', type=float, default=60.0,
                 help='seconds; ART\'s C&W, if estimated to take longer, runs fewer '
                      'iterations and is extrapolated linearly (0: no cap)')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  args.attacks = [a.strip() for a in args.attacks.split(',') if a.strip()]
  args.libraries = [a.strip() for a in args.libraries.split(',') if a.strip()]
  for name in args.attacks:
    if name not in ATTACKS:
      p.error('unknown attack %r; expected some of %s' % (name, ','.join(ATTACKS)))
  for name in args.libraries:
    if name not in ADAPTERS:
      p.error('unknown library %r; expected some of %s' % (name, ','.join(ADAPTERS)))
  return args


# ---------------------------------------------------------------------------- data and model
def ensure_data(data_dir):
  """The digits test file in `data_dir`, written there first when missing."""
  test = os.path.join(data_dir, 'data_test.bin')
  if not os.path.exists(test):
    dataset_input.convert_digits(data_dir)
  return test


def ensure_checkpoint(args):
  """The checkpoint to benchmark; runs train.py (a subprocess) when one is missing or short."""
  path = checkpoints.latest_checkpoint(args.log_root)
  step = checkpoints.checkpoint_step(path) if path else -1
  if args.train_steps > 0 and step < args.train_steps:
    ensure_data(args.data_dir)
    cmd = [sys.executable, os.path.join(_ROOT, 'train.py'), '--dataset=mnist',
           '--train_data_path=%s' % os.path.join(args.data_dir, 'data_train.bin'),
           '--log_root=%s' % args.log_root, '--num_residual_units=%d' % args.num_residual_units,
           '--RCE_train=%s' % args.rce, '--total_steps=%d' % args.train_steps,
           '--checkpoint_steps=%d' % args.train_steps, '--test_every_steps=0']
    print('training: %s' % ' '.join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    if proc.returncode:
      raise SystemExit('training failed (exit %d):\n%s' % (
          proc.returncode, '\n'.join(proc.stdout.splitlines()[-20:])))
    print('trained in %.0f s' % (time.time() - t0), flush=True)
    path = checkpoints.latest_checkpoint(args.log_root)
  if path is None:
    raise SystemExit('no checkpoint in %s and --train_steps=0' % args.log_root)
  return path


class OursGraph(object):
  """Our model (restored_model.RestoredModel) and the requested attacks in its graph."""

  def __init__(self, hps, log_root, args):
    self.hps, self.args = hps, args
    self.model = restored_model.RestoredModel(hps, 'mnist', log_root)
    self.graph, self.sess, self.step = self.model.graph, self.model.sess, self.model.step
    self.x, self.logits = self.model.images, self.model.logits
    self.image_shape = tuple(self.x.shape[1:])
    self.logits_fn = lambda x: self.model.model_fn(x)[0]  # prediction logits
    with self.graph.as_default():
      self.target = tf1.placeholder(tf.float32, [None, hps.num_classes], name='target')
      self.label = tf1.placeholder(tf.float32, [None, hps.num_classes], name='label')
      eps, fn, x = args.eps, self.logits_fn, self.x
      build = {
          'fgsm': lambda: attacks.fgsm(fn, x, eps, y=self.label),
          'bim': lambda: attacks.bim(fn, x, eps, y=self.label, nb_iter=args.bim_steps),
          'ilcm': lambda: attacks.ilcm(fn, x, eps, y_target=self.target,
                                       nb_iter=args.bim_steps),
          'jsma': lambda: attacks.jsma(fn, x, eps=args.jsma_theta, y_target=self.target,
                                       max_iter=args.jsma_max_pixels),
      }
      self.ops = {name: op() for name, op in build.items() if name in args.attacks}

  def predict(self, x):
    """Prediction logits [N, K] of images x."""
    return self.sess.run(self.logits, {self.x: x})

  def run(self, attack, x, labels, targets):
    """Adversarial images of one of the eps attacks or JSMA (the graph ops built above)."""
    feed = {self.x: x}
    if is_targeted(attack, self.args):
      feed[self.target] = onehot(targets, self.hps.num_classes)
    else:
      feed[self.label] = onehot(labels, self.hps.num_classes)
    return self.sess.run(self.ops[attack], feed)

  def carlini(self, batch_size, bss, iters):
    """A CarliniWagnerL2 of the flags' settings for a fixed batch size."""
    a = self.args
    with self.graph.as_default():
      return attacks.CarliniWagnerL2(
          self.sess, self.logits_fn, self.image_shape, batch_size, confidence=0.0,
          learning_rate=a.cw_learning_rate, binary_search_steps=bss, max_iterations=iters,
          abort_early=True, initial_const=a.cw_initial_const, targeted=not a.cw_untargeted,
          clip_min=CLIP_MIN, clip_max=CLIP_MAX, num_classes=self.hps.num_classes)


def onehot(labels, k):
  """float32 one-hot [N, k] of int labels [N]."""
  return np.eye(k, dtype=np.float32)[np.asarray(labels)]


def is_targeted(attack, args):
  """ILCM and JSMA go for the least-likely class; C&W is targeted unless --cw_untargeted."""
  return TARGETED.get(attack, not args.cw_untargeted)


def iteration_cap(scale):
  """The iterations a capped call runs: 1 for the warm-up, k for ('iters', k), else None."""
  if scale == 'warmup':
    return 1
  return scale[1] if isinstance(scale, tuple) else None



# ---------------------------------------------------------------------------- peer workarounds
def _numpy2_aliases():
  """Restores NumPy 1 aliases removed in NumPy 2 (only used if a peer import needs them)."""
  for name, value in (('float', float), ('int', int), ('bool', bool), ('complex', complex),
                      ('object', object), ('str', str)):
    if name not in np.__dict__:
      setattr(np, name, value)


class _KerasAdamShim(object):
  """A Keras 3 Adam with the Keras 2 `variables()` method that cleverhans 4's C&W calls.

  cleverhans zeroes `optimizer.variables()` at every binary-search step to restart Adam. Here
  that is the iteration counter and the m/v slots of the variable the optimizer was last
  applied to (built on first use, as Keras 2 did), never the learning rate, which Keras 3
  also lists among its variables.
  """

  def __init__(self, learning_rate):
    self._learning_rate = learning_rate
    self._opt = None
    self._var = None

  def variables(self):
    if self._opt is None:
      return []
    return [v for v in self._opt.variables if 'learning_rate' not in v.name]

  def apply_gradients(self, grads_and_vars):
    grads_and_vars = list(grads_and_vars)
    var = grads_and_vars[0][1]
    if self._var is not var:
      self._opt = tf.keras.optimizers.Adam(self._learning_rate)
      self._opt.build([var])
      self._var = var
    return self._opt.apply_gradients(grads_and_vars)


class _TfWithPerExampleOnes(object):
  """`tf` for cleverhans's carlini_wagner_l2 module, with tf.ones(shape) cut to shape[:1].

  In that module tf.ones is called twice: `tf.ones(shape[:1]) * 1e10` (the upper bounds,
  already [B]) and `const = tf.ones(shape) * initial_const` with the image shape, the bug.
  """

  def __getattr__(self, name):
    return getattr(tf, name)

  @staticmethod
  def ones(shape, *args, **kwargs):
    shape = tf.TensorShape(shape)
    if shape.rank is not None and shape.rank > 1:
      shape = shape[:1]
    return tf.ones(shape, *args, **kwargs)


@contextlib.contextmanager
def _per_example_const(cw_module):
  """Runs cleverhans's C&W with one constant c per example (see _TfWithPerExampleOnes)."""
  saved = cw_module.tf
  cw_module.tf = _TfWithPerExampleOnes()
  try:
    yield
  finally:
    cw_module.tf = saved


# ---------------------------------------------------------------------------- the adapters
class Skip(Exception):
  """The library has no such attack (reported as n/a)."""


class Unavailable(Exception):
  """The library cannot be imported; the message says why."""


Setup = collections.namedtuple('Setup', [
    'args',  # the parsed flags
    'model',  # peers_model.EagerResNet: what the peers attack, and what scores everybody
    'ours',  # OursGraph: our model and attack graphs
    'num_classes',  # K, the width of the logits
])


class Library(object):
  """One attack library behind the interface `measure_attack` times.

  A subclass names its library (`name`, the --libraries value), imports it (`_import`) and
  builds the calls (`runner`); `capped` and `note` say what is special about it. Images are
  float32 [N, H, W, C] in [CLIP_MIN, CLIP_MAX]; labels and targets int [N].
  """
  name = None
  is_peer = True  # listed among the peers (versions) and compared with ours

  def __init__(self, setup):
    self.setup = setup
    self.version = None
    a = self.args = setup.args
    self.eps, self.steps, self.step = a.eps, a.bim_steps, a.eps / a.bim_steps
    self.bss, self.iters = a.cw_binary_search_steps, a.cw_max_iterations
    self.cw_targeted = not a.cw_untargeted

  def onehot(self, labels):
    return onehot(labels, self.setup.num_classes)

  def _import(self):
    """Imports the library's modules (kept on self); returns its version text."""
    raise NotImplementedError

  def _quiet_import(self):
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
      warnings.simplefilter('ignore')
      return self._import()

  def load(self):
    """Imports the library, retrying once with NumPy 1 aliases (see _numpy2_aliases).

    Returns:
      '' or, after a retry, a note saying why it was needed; `version` is set.

    Raises:
      Unavailable: the import failed; its message is the reason.
    """
    try:
      self.version = self._quiet_import()
      return ''
    except AttributeError as e:  # e.g. np.float on NumPy 2
      first = e
    except Exception as e:  # pylint: disable=broad-except
      raise Unavailable('%s: %s' % (type(e).__name__,
                                    str(e).splitlines()[0] if str(e) else ''))
    _numpy2_aliases()
    try:
      self.version = self._quiet_import()
    except Exception as e:  # pylint: disable=broad-except
      raise Unavailable('%s: %s' % (type(e).__name__, e))
    return 'needed NumPy 1 aliases (%s)' % first

  def runner(self, attack):
    """Returns run(x, labels, targets, scale) -> adversarial images (numpy) of `attack`.

    labels: the model's own predictions on x (int [N]); targets: int [N] (targeted attacks).
    scale: 'full', 'warmup' (iterations cut to 1 on the full batch, or the first images with
    the real settings where nothing is batch-shape specialised), or ('iters', k) for a capped
    run with k iterations instead of the full count (see `capped`).

    Raises:
      Skip: the library has no such attack.
    """
    raise NotImplementedError

  def capped(self, attack):
    """Whether a call that would take over --peer_time_cap may run fewer iterations and be
    extrapolated linearly: only where the time per iteration is about constant (no abort
    early), never for attacks that stop early."""
    del attack
    return False

  def note(self, attack, targets):
    """Text added to the result's note (after the warm-up time)."""
    del attack, targets
    return ''


class Ours(Library):
  """attacks/ in our restored model's graph and Session (OursGraph)."""
  name = OURS
  is_peer = False

  def load(self):
    self.version = 'this repository'
    return ''

  def runner(self, attack):
    ours = self.setup.ours
    if attack == 'cw':
      return self._cw_runner()

    def run_eps(x, labels, targets, scale):
      if scale == 'warmup':
        x, labels, targets = (x[:WARMUP_IMAGES], labels[:WARMUP_IMAGES],
                              targets[:WARMUP_IMAGES])
      return ours.run(attack, x, labels, targets)
    return run_eps

  def _cw_runner(self):
    cache = {}

    def run_cw(x, labels, targets, scale):
      # The graph has a fixed batch and a baked-in iteration count, and its first run pays
      # graph optimization (about 1.5 s here). The warm-up builds the real instance and runs
      # one binary-search step of it on the full batch (binary_search_steps is read by the
      # numpy loop of `attack`, so setting it on the instance changes no graph).
      n = len(x)
      if n not in cache:
        cache[n] = self.setup.ours.carlini(n, self.bss, self.iters)
      cw = cache[n]
      y = self.onehot(targets if self.cw_targeted else labels)
      if scale != 'warmup':
        return cw.attack(x, y)
      saved = cw.binary_search_steps, cw.repeat
      cw.binary_search_steps, cw.repeat = 1, False
      try:
        return cw.attack(x, y)
      finally:
        cw.binary_search_steps, cw.repeat = saved
    return run_cw


class Art(Library):
  """adversarial-robustness-toolbox: TensorFlowV2Classifier and its evasion attacks."""
  name = 'art'

  def __init__(self, setup):
    super(Art, self).__init__(setup)
    self._evasion = self._classifier_class = self._classifier = None

  def _import(self):
    # pylint: disable=g-import-not-at-top
    import art
    from art.attacks import evasion
    from art.estimators.classification import TensorFlowV2Classifier
    # pylint: enable=g-import-not-at-top
    self._evasion, self._classifier_class = evasion, TensorFlowV2Classifier
    return art.__version__

  def classifier(self):
    """The TensorFlowV2Classifier of the eager model, built once."""
    if self._classifier is None:
      self._classifier = self._classifier_class(
          model=self.setup.model, nb_classes=self.setup.num_classes,
          input_shape=self.setup.model.image_shape,
          loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
          clip_values=(CLIP_MIN, CLIP_MAX))
    return self._classifier

  def capped(self, attack):
    # C&W: no abort early, and a line search per iteration.
    return attack == 'cw'

  def note(self, attack, targets):
    if attack in ('jsma', 'cw'):
      return '; %d distinct target classes' % len(np.unique(targets))
    return ''

  def _attack(self, attack, scale, n):
    ev, clf, a = self._evasion, self.classifier(), self.args
    k = iteration_cap(scale)
    if attack == 'fgsm':
      return ev.FastGradientMethod(clf, norm=np.inf, eps=self.eps, targeted=False,
                                   num_random_init=0, batch_size=n)
    if attack in ('bim', 'ilcm'):
      return ev.BasicIterativeMethod(clf, eps=self.eps, eps_step=self.step,
                                     max_iter=k or self.steps, targeted=attack == 'ilcm',
                                     batch_size=n, verbose=False)
    if attack == 'jsma':
      # ART changes two pixels per iteration and stops once the fraction gamma of the pixels
      # has changed: (max - 2) / pixels lets it change at most --jsma_max_pixels, and
      # (2k - 1) / pixels stops a capped run after k iterations.
      pixels = a.jsma_max_pixels - 2 if k is None else 2 * k - 1
      gamma = pixels / float(np.prod(self.setup.model.image_shape))
      return ev.SaliencyMapMethod(clf, theta=a.jsma_theta, gamma=gamma, batch_size=n,
                                  verbose=False)
    if attack == 'cw':
      return ev.CarliniL2Method(clf, confidence=0.0, targeted=self.cw_targeted,
                                learning_rate=a.cw_learning_rate,
                                binary_search_steps=1 if k else self.bss,
                                max_iter=k or self.iters, initial_const=a.cw_initial_const,
                                batch_size=n, verbose=False)
    raise ValueError(attack)

  def runner(self, attack):
    self.classifier()  # built before the warm-up call

    def run_art(x, labels, targets, scale):
      y = targets if is_targeted(attack, self.args) else labels
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return self._attack(attack, scale, len(x)).generate(x, y=self.onehot(y))
    return run_art


class Foolbox(Library):
  """foolbox 3: TensorFlowModel and its Linf / L2 attacks (no JSMA)."""
  name = 'foolbox'

  def __init__(self, setup):
    super(Foolbox, self).__init__(setup)
    self._fb = self._fmodel = None

  def _import(self):
    import foolbox  # pylint: disable=g-import-not-at-top
    self._fb = foolbox
    return foolbox.__version__

  def fmodel(self):
    """The TensorFlowModel of the eager model, built once (with its device: see README)."""
    if self._fmodel is None:
      device = '/GPU:0' if tf.config.list_physical_devices('GPU') else '/CPU:0'
      self._fmodel = self._fb.TensorFlowModel(self.setup.model, bounds=(CLIP_MIN, CLIP_MAX),
                                              device=device)
    return self._fmodel

  def _attack(self, attack, scale):
    fb, a = self._fb, self.args
    k = iteration_cap(scale)
    if attack == 'fgsm':
      return fb.attacks.LinfFastGradientAttack(random_start=False)
    if attack in ('bim', 'ilcm'):
      return fb.attacks.LinfBasicIterativeAttack(abs_stepsize=self.step, steps=k or self.steps,
                                                 random_start=False)
    if attack == 'cw':
      return fb.attacks.L2CarliniWagnerAttack(
          binary_search_steps=1 if k else self.bss, steps=k or self.iters,
          stepsize=a.cw_learning_rate, confidence=0.0, initial_const=a.cw_initial_const,
          abort_early=True)
    raise ValueError(attack)

  def runner(self, attack):
    if attack == 'jsma':
      raise Skip('foolbox 3 has no JSMA')
    fb, fmodel = self._fb, self.fmodel()

    def run_fb(x, labels, targets, scale):
      xt = tf.constant(x)
      if is_targeted(attack, self.args):
        criterion = fb.criteria.TargetedMisclassification(tf.constant(targets, tf.int64))
      else:
        criterion = fb.criteria.Misclassification(tf.constant(labels, tf.int64))
      epsilons = None if attack == 'cw' else self.eps
      _, clipped, _ = self._attack(attack, scale)(fmodel, xt, criterion, epsilons=epsilons)
      adv = clipped.numpy()
      if attack == 'cw':
        # foolbox starts C&W from best_advs = zeros and returns zeros where it never found an
        # adversarial; its `success` is then re-evaluated on that zero image (an untargeted
        # run can count it). An all-zero row never comes out of the tanh-space optimisation:
        # put the input back there.
        never = np.all(adv.reshape(len(x), -1) == 0, axis=1)
        never &= ~np.all(x.reshape(len(x), -1) == 0, axis=1)
        adv[never] = x[never]
      return adv
    return run_fb


class Cleverhans(Library):
  """cleverhans 4: the tf2 attack functions and CarliniWagnerL2 (no TF2 JSMA)."""
  name = 'cleverhans'

  def __init__(self, setup):
    super(Cleverhans, self).__init__(setup)
    self._cw_module = self._fgm = self._pgd = None

  def _import(self):
    # pylint: disable=g-import-not-at-top
    from importlib import metadata
    from cleverhans.tf2.attacks import carlini_wagner_l2
    from cleverhans.tf2.attacks import fast_gradient_method as fgm
    from cleverhans.tf2.attacks import projected_gradient_descent as pgd
    # pylint: enable=g-import-not-at-top
    self._cw_module = carlini_wagner_l2
    self._fgm, self._pgd = fgm.fast_gradient_method, pgd.projected_gradient_descent
    return metadata.version('cleverhans')

  def runner(self, attack):
    if attack == 'jsma':
      raise Skip('cleverhans 4 has no TF2 JSMA')
    if attack == 'cw':
      return self._cw_runner()
    model = self.setup.model

    def run_ch(x, labels, targets, scale):
      xt = tf.constant(x)
      if attack == 'fgsm':
        return self._fgm(model, xt, self.eps, np.inf, clip_min=CLIP_MIN, clip_max=CLIP_MAX,
                         y=tf.constant(labels, tf.int64), targeted=False).numpy()
      k = iteration_cap(scale) or self.steps
      y = tf.constant(targets if attack == 'ilcm' else labels, tf.int64)
      return self._pgd(model, xt, self.eps, self.step, k, np.inf, clip_min=CLIP_MIN,
                       clip_max=CLIP_MAX, y=y, targeted=attack == 'ilcm', rand_init=False,
                       sanity_checks=False).numpy()
    return run_ch

  def _cw_runner(self):
    a, instances = self.args, {}

    def run_ch_cw(x, labels, targets, scale):
      # One instance per batch: its `gradient` is a tf.function method, traced per instance
      # (at the warm-up); the iteration counts are plain attributes its Python loop reads.
      k = iteration_cap(scale)
      y = self.onehot(targets if self.cw_targeted else labels)
      if len(x) not in instances:
        instances[len(x)] = self._cw_module.CarliniWagnerL2(
            self.setup.model, y=y if self.cw_targeted else None, targeted=self.cw_targeted,
            batch_size=len(x), clip_min=CLIP_MIN, clip_max=CLIP_MAX,
            binary_search_steps=self.bss, max_iterations=self.iters, abort_early=True,
            confidence=0.0, initial_const=a.cw_initial_const,
            learning_rate=a.cw_learning_rate)
      cw = instances[len(x)]
      cw.binary_search_steps, cw.max_iterations = (1, k) if k else (self.bss, self.iters)
      cw.optimizer = _KerasAdamShim(a.cw_learning_rate)
      if a.cleverhans_cw_as_is:
        return cw.attack(x)
      with _per_example_const(self._cw_module):
        return cw.attack(x)
    return run_ch_cw


# --libraries name -> adapter class, in the default order of --libraries and the report.
ADAPTERS = collections.OrderedDict((cls.name, cls) for cls in (Ours, Art, Foolbox, Cleverhans))


# ---------------------------------------------------------------------------- measuring
class Result(object):
  """One (library, attack) row of the report."""

  def __init__(self, lib, attack, status='ok', ms=None, cpu_ms=None, success=None, l2=None,
               linf=None, note=''):
    self.lib, self.attack, self.status = lib, attack, status
    self.ms, self.cpu_ms, self.success, self.l2, self.linf = ms, cpu_ms, success, l2, linf
    self.note = note


def full_iterations(args, attack):
  """Iterations of a full run, the unit of a capped run's linear extrapolation."""
  if attack in ('bim', 'ilcm'):
    return args.bim_steps
  if attack == 'jsma':
    return args.jsma_max_pixels // 2  # ART: two pixels per iteration
  if attack == 'cw':
    return args.cw_binary_search_steps * args.cw_max_iterations
  return 1


def evaluate(model, x, adv, true, correct, targets, targeted):
  """(success rate, mean L2 of successes, max L-inf) on the initially `correct` images."""
  preds = np.argmax(model(adv).numpy(), 1)
  hit = (preds == targets) if targeted else (preds != true)
  hit = hit & correct
  l2 = attacks.l2_per_example(adv, x)
  rate = hit.sum() / max(1, correct.sum())
  mean_l2 = float(l2[hit].mean()) if hit.any() else float('nan')
  return rate, mean_l2, float(np.abs(adv - x).max())


def _failure(lib, attack, e):
  tb = traceback.format_exc().strip().splitlines()
  where = next((l.strip() for l in reversed(tb) if l.strip().startswith('File ')), '')
  return Result(lib, attack, 'failed', note='%s: %s (%s)' % (
      type(e).__name__, str(e).splitlines()[0][:200] if str(e) else '', where[:160]))


class Contender(object):
  """One library's timed calls of one attack.

  Attributes:
    name: the library; run: its runner; scale: 'full' or ('iters', k) for a capped run.
    full: the iterations of a full run; note: the report note.
    samples: timing.Samples of the timed calls; adv: the last call's images; done: no more
      calls (the last one took LONG_CALL_S or more).
  """

  def __init__(self, name, run, scale, full, note):
    self.name, self.run, self.scale, self.full, self.note = name, run, scale, full, note
    self.samples = timing.Samples()
    self.adv = None
    self.done = False

  def factor(self):
    """Full iterations / timed iterations: 1 unless capped."""
    return 1.0 if self.scale == 'full' else self.full / float(self.scale[1])


def prepare(library, attack, run, x, labels, targets):
  """A Contender of the library's runner `run` after its untimed warm-up call, capped (see
  Library.capped) if a full call would take over --peer_time_cap."""
  args = library.args
  warm = timing.warm_up(lambda: run(x, labels, targets, 'warmup'))
  scale, note = 'full', 'warm-up %.1f s' % warm
  full = full_iterations(args, attack)
  if library.capped(attack) and args.peer_time_cap > 0:
    _, one, _ = timing.timed(lambda: run(x, labels, targets, ('iters', 1)))
    if one * full > args.peer_time_cap:
      k = max(1, int(args.peer_time_cap / 2 / one))
      scale = ('iters', k)
      note = ('timed %d of %d iterations, extrapolated linearly (1 iteration: %.1f s)'
              % (k, full, one))
  return Contender(library.name, run, scale, full, note + library.note(attack, targets))


def time_rounds(contenders, results, attack, repeats, x, labels, targets):
  """`repeats` rounds of one timed call per contender, the order rotated each round; 4x as
  many for contenders whose calls take under SHORT_CALL_S. A call that raises puts a failure
  into `results`."""
  for rnd in range(4 * repeats):
    for c in timing.rotated(contenders, rnd):
      if c.done or c.name in results:
        continue
      if rnd >= repeats and c.samples.best()[0] >= SHORT_CALL_S:
        continue  # extra rounds only for short calls, whose timings are the noisiest
      try:
        adv, wall, cpu = timing.timed(functools.partial(c.run, x, labels, targets, c.scale))
      except Exception as e:  # pylint: disable=broad-except
        results[c.name] = _failure(c.name, attack, e)
        continue
      c.adv = np.asarray(adv, np.float32)
      c.samples.add(wall, cpu)
      c.done = wall >= LONG_CALL_S


def measure_attack(setup, attack, libraries, x, true, labels, targets, log):
  """Results of every library on one attack.

  Warm-up of every library first (`prepare`), then timed rounds (`time_rounds`) so that load
  from other processes hits all of them; the minimum wall and CPU times are kept.
  """
  args = setup.args
  results, contenders = {}, []
  for library in libraries:
    try:
      run = library.runner(attack)
    except Skip as e:
      results[library.name] = Result(library.name, attack, 'n/a', note=str(e))
      continue
    try:
      contenders.append(prepare(library, attack, run, x, labels, targets))
    except Exception as e:  # pylint: disable=broad-except
      results[library.name] = _failure(library.name, attack, e)
  time_rounds(contenders, results, attack, max(1, args.repeats), x, labels, targets)
  correct = np.argmax(setup.model(x).numpy(), 1) == true  # of the clean images
  n = len(x)
  for c in contenders:
    if c.name in results:
      continue
    wall, cpu = c.samples.best()
    ms, cpu_ms = 1000.0 * wall * c.factor() / n, 1000.0 * cpu * c.factor() / n
    if c.scale != 'full':
      results[c.name] = Result(c.name, attack, 'extrapolated', ms=ms, cpu_ms=cpu_ms,
                               note=c.note)
      continue
    rate, l2, linf = evaluate(setup.model, x, c.adv, true, correct, targets,
                              is_targeted(attack, args))
    results[c.name] = Result(c.name, attack, ms=ms, cpu_ms=cpu_ms, success=rate, l2=l2,
                             linf=linf, note=c.note)
  out = [results[library.name] for library in libraries]
  for r in out:
    log(r)
  return out


# ---------------------------------------------------------------------------- report
def fmt_ms(r, cpu=False):
  value = r.cpu_ms if cpu else r.ms
  if value is None:
    return '-'
  text = ('%.2f' if value < 10 else '%.1f') % value
  return '~' + text if r.status == 'extrapolated' else text


def print_results(results, args):
  print('\n## Results per (attack, library)\n')
  print('| attack | library | status | ms / example (wall) | CPU ms / example | success rate '
        '| mean L2 (successes) | max L-inf | note |')
  print('|---|---|---|---:|---:|---:|---:|---:|---|')
  for r in results:
    succ = '-' if r.success is None else '%.1f%%' % (100 * r.success)
    l2 = '-' if r.l2 is None else '%.3f' % r.l2
    linf = '-' if r.linf is None else '%.3f' % r.linf
    print('| %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
        r.attack, r.lib, r.status, fmt_ms(r), fmt_ms(r, cpu=True), succ, l2, linf,
        r.note.replace('|', '/')))

  print('\n## Ours vs the fastest peer (ms per example, equal iterations)\n')
  print('| attack | ours ms / example | fastest peer | peer ms / example | peer / ours (wall) '
        '| peer / ours (CPU) |')
  print('|---|---:|---|---:|---:|---:|')
  summary = {}
  for attack in args.attacks:
    rows = [r for r in results if r.attack == attack]
    ours = next((r for r in rows if r.lib == OURS and r.ms is not None), None)
    peers = [r for r in rows if r.lib != OURS and r.ms is not None]
    best = min(peers, key=lambda r: r.ms) if peers else None
    summary[attack] = (ours, best)
    both = ours is not None and best is not None
    print('| %s | %s | %s | %s | %s | %s |' % (
        attack, fmt_ms(ours) if ours else '-', best.lib if best else '-',
        fmt_ms(best) if best else '-',
        '%.2fx' % (best.ms / ours.ms) if both else '-',
        '%.2fx' % (best.cpu_ms / ours.cpu_ms) if both else '-'))

  print('\n## Targets\n')
  for attack, (ours, best) in summary.items():
    if ours and best:
      if ours.ms <= best.ms:
        verdict = 'no slower than'
      else:
        verdict = 'SLOWER (by %.1f%%) than' % (100.0 * (ours.ms / best.ms - 1.0))
      print('- %s: ours %s the fastest peer (%s): %s vs %s ms/example (CPU %s vs %s)'
            % (attack, verdict, best.lib, fmt_ms(ours), fmt_ms(best), fmt_ms(ours, cpu=True),
               fmt_ms(best, cpu=True)))
  rows = {(r.lib, r.attack): r for r in results}
  peer, factor = JSMA_SPEED_TARGET
  ours_j, peer_j = rows.get((OURS, 'jsma')), rows.get((peer, 'jsma'))
  if ours_j and peer_j and ours_j.ms and peer_j.ms:
    ratio = peer_j.ms / ours_j.ms
    print('- jsma: ours %.1fx faster per example than %s (CPU: %.1fx) (target >= %gx: %s)'
          % (ratio, peer.upper(), peer_j.cpu_ms / ours_j.cpu_ms, factor,
             'met' if ratio >= factor else 'NOT met'))
  ours_c, peer_c = rows.get((OURS, 'cw')), rows.get((CW_L2_TARGET, 'cw'))
  if ours_c and peer_c and ours_c.l2 is not None and peer_c.l2 is not None:
    print('- cw: mean L2 ours %.3f (success %.0f%%) vs %s %.3f (success %.0f%%) '
          '(target: no worse: %s)' % (ours_c.l2, 100 * ours_c.success, CW_L2_TARGET,
                                      peer_c.l2, 100 * peer_c.success,
                                      'met' if ours_c.l2 <= peer_c.l2 else 'NOT met'))


# ---------------------------------------------------------------------------- main
def load_libraries(setup):
  """The adapters of --libraries, imported.

  Returns:
    (libraries that loaded, {name: 'not available: reason'} of the others).
  """
  loaded, unavailable, versions = [], {}, []
  for name in setup.args.libraries:
    library = ADAPTERS[name](setup)
    try:
      reason = library.load()
    except Unavailable as e:
      unavailable[name] = 'not available: %s' % e
      versions.append('%s %s' % (name, unavailable[name]))
      continue
    loaded.append(library)
    if library.is_peer:
      versions.append('%s %s%s' % (name, library.version, ' (%s)' % reason if reason else ''))
  print('peers: ' + '; '.join(versions))
  return loaded, unavailable


def check_eager_model(args, ckpt, ours, model, x, true):
  """Exits unless the eager model's prediction logits match ours'; returns ours' logits."""
  logits_ours = ours.predict(x)
  diff = float(np.abs(logits_ours - model(x).numpy()).max())
  print('checkpoint %s (step %d), ResNet-%d, %s: prediction logits of the eager copy vs ours '
        '(graph) on %d images: max |diff| = %.3g (%s, tolerance 1e-4); accuracy %.1f%%'
        % (ckpt, ours.step, 6 * args.num_residual_units + 2, 'RCE' if args.rce else 'CE',
           len(x), diff, 'OK' if diff <= 1e-4 else 'MISMATCH',
           100 * np.mean(np.argmax(logits_ours, 1) == true)))
  if diff > 1e-4:
    raise SystemExit('the eager model does not reproduce ours: not benchmarking')
  return logits_ours


def print_settings(args, n):
  print('images: %d digits test images (JSMA: the first %d, C&W: the first %d), box [%g, %g]; '
        'eps %g, %d steps of %g; JSMA theta %g, <= %d pixels; C&W %s, %d x %d iterations, '
        'lr %g, c0 %g' % (
            n, min(args.jsma_num_images, n), min(args.cw_num_images, n), CLIP_MIN, CLIP_MAX,
            args.eps, args.bim_steps, args.eps / args.bim_steps, args.jsma_theta,
            args.jsma_max_pixels,
            'untargeted' if args.cw_untargeted else 'targeted (random class != true)',
            args.cw_binary_search_steps, args.cw_max_iterations, args.cw_learning_rate,
            args.cw_initial_const))
  print('timing: one call on all of an attack\'s images, wall (and process CPU) time / images; '
        'one untimed warm-up call per library first (tracing and graph set-up not counted); '
        'then %d rounds of one timed call per library, order rotated, minimum kept (%d rounds '
        'for calls under %g s, none after a call of %g s); ART\'s C&W, when estimated over '
        '%g s, runs fewer iterations and is extrapolated (~)' % (
            args.repeats, 4 * args.repeats, SHORT_CALL_S, LONG_CALL_S, args.peer_time_cap),
        flush=True)


def log_result(r):
  print('  %-5s %-10s %-12s %9s ms/example (CPU %9s)  %s' % (
      r.attack, r.lib, r.status, fmt_ms(r), fmt_ms(r, cpu=True), r.note), flush=True)


def main(argv=None):
  args = parse_args(argv)
  t_start = time.time()
  print('# Attack benchmark: ours vs ART / foolbox / cleverhans\n')
  print('python %s, TensorFlow %s (eager: %s), Keras %s, NumPy %s; %d CPUs, load average '
        '%s' % (sys.version.split()[0], tf.__version__, tf.executing_eagerly(),
                tf.keras.__version__ if hasattr(tf.keras, '__version__') else '?',
                np.__version__, os.cpu_count(),
                ' '.join('%.1f' % v for v in os.getloadavg())))
  ckpt = ensure_checkpoint(args)
  test = ensure_data(args.data_dir)
  spec = dataset_input.get_spec('mnist')  # the digits are mnist-shaped
  hps = resnet_model.default_hparams(num_residual_units=args.num_residual_units,
                                     num_classes=spec.num_classes, RCE_train=args.rce)
  x_all, y_all = dataset_input.load_arrays(spec.name, test)
  n = min(args.num_images, len(x_all))
  x, true = x_all[:n], y_all[:n]

  # The eager model and ours, on the same images.
  ours = OursGraph(hps, args.log_root, args)
  model = peers_model.EagerResNet.from_checkpoint(ckpt, hps, x.shape[1:])
  logits_ours = check_eager_model(args, ckpt, ours, model, x, true)
  labels = np.argmax(logits_ours, 1)
  least_likely = np.argmin(logits_ours, 1)
  # A random class != the true label.
  cw_targets = attack_runner.random_targets(true, args.seed, num_classes=hps.num_classes)

  setup = Setup(args, model, ours, hps.num_classes)
  libraries, unavailable = load_libraries(setup)
  print_settings(args, n)

  results = []
  for attack in args.attacks:
    if attack == 'cw':
      m = min(args.cw_num_images, n)
      tg = cw_targets[:m] if not args.cw_untargeted else true[:m]
    elif attack == 'jsma':
      m = min(args.jsma_num_images, n)
      tg = least_likely[:m]
    else:
      m = n
      tg = least_likely
    t0 = time.time()
    done = {r.lib: r for r in measure_attack(setup, attack, libraries, x[:m], true[:m],
                                             labels[:m], tg, log_result)}
    for lib in args.libraries:
      if lib in unavailable:
        done[lib] = Result(lib, attack, 'not available', note=unavailable[lib])
      results.append(done[lib])
    print('  (%s: %.0f s)' % (attack, time.time() - t0), flush=True)
  print_results(results, args)
  print('\ntotal %.0f s; the eager model was traced %d time(s)' % (time.time() - t_start,
                                                                  model.trace_count))


if __name__ == '__main__':
  main()
