"""Our attacks (attacks/, TF1 graph mode) against ART, foolbox 3 and cleverhans 4 (TF2 eager).

Same trained ResNet (read from one checkpoint), same images (digits test images in
[-0.5, 0.5], box [-0.5, 0.5]), same labels and targets, equal iteration counts:

  fgsm   eps 0.1, one step, untargeted (away from the model's own label)
  bim    eps 0.1, 10 steps of 0.01, no random start, untargeted
  ilcm   eps 0.1, 10 steps of 0.01 towards the least-likely class (targeted BIM)
  jsma   theta 1.0, at most 100 changed pixels, towards the least-likely class. Ours is
         Papernot's one-pixel saliency map on log-softmax, one pixel per iteration; ART's
         SaliencyMapMethod is ART's simplified variant (two pixels per iteration, ranked by
         the gradient of the target logit alone), with gamma = 98/784 so that it also changes
         at most 100 pixels. foolbox 3 and cleverhans 4 (tf2) have no JSMA.
  cw     Carlini-Wagner L2, targeted at a random class other than the true one (or
         --cw_untargeted for everybody), 5 binary-search steps x 100 iterations, lr 0.01,
         initial const 1.0, confidence 0, abort early where the library has it (ART has none:
         it replaces Adam by a line search of up to 5 halvings + 5 doublings per iteration).

Every library gets the labels (the model's own predictions) or targets precomputed, so none
spends a forward pass guessing them, and runs its whole batch in one call: ours (attacks/*.py
in a tf.Graph + tf.compat.v1.Session), ART (TensorFlowV2Classifier; FastGradientMethod,
BasicIterativeMethod, which ART runs through its TF2 PGD code, SaliencyMapMethod,
CarliniL2Method), foolbox 3 (TensorFlowModel; LinfFastGradientAttack,
LinfBasicIterativeAttack, L2CarliniWagnerAttack) and cleverhans 4 (cleverhans.tf2.attacks:
fast_gradient_method, projected_gradient_descent with rand_init=False, carlini_wagner_l2).
The process stays in eager mode; ours runs inside `with graph.as_default()` and a Session.
JSMA uses the first --jsma_num_images (30) images and C&W the first --cw_num_images (10)
for every library, because ART's versions need minutes for more.

The peers call `peers_model.EagerResNet`: the same eval-mode network rebuilt in eager TF2 (one
tf.function with a dynamic-batch signature, traced once) from the checkpoint's variables; its
flipped logits are checked against ours (graph mode, restored checkpoint) to 1e-4 first. It
keeps every BN as its own op, as a user of those libraries would write the model, while ours
runs resnet_model's eval graph, which folds each unit's second BN into the conv before it:
about 5 % of ours' time per gradient step, and all of ours' lead on FGSM, BIM and ILCM, whose
attack loops are otherwise the same ops as cleverhans's (they tied before the fold).

Timing: ms per example = wall time of one call on all of the attack's images / images; the
process CPU time (all threads) is printed beside it, because on a shared machine the wall
time is noisy and CPU time much less so. Before timing, each library makes one untimed
warm-up call so that tracing, graph optimization and kernel set-up are not counted: on the
first 4 images with the real settings for ours' batch-agnostic graph ops; on the full batch
with iterations cut to 1 for the peers (cleverhans's tf.functions are traced per input shape
and, for C&W, per instance, so a smaller batch would leave a trace in the timed call); our
C&W (a fixed-batch graph whose first run pays ~1.5 s of graph optimization) runs one full
binary-search step of the real instance. Then --repeats rounds of one timed call per
library, the order rotated each round so that load from other processes hits all of them,
and the minimum is kept; a library stops repeating after a call of 10 s or more, and gets
4x --repeats rounds while its calls take under 2 s (FGSM: ~0.25 s a call, the noisiest).
Success rate: untargeted = prediction != true label, targeted = prediction == target, both
among the images the model classifies correctly; mean L2 over the successful ones; max L-inf
as a sanity check. All predictions come from the same eager model on the returned images.

ART's C&W needs minutes per image (per iteration, one forward + backward pass of the batch
per distinct target class and per distinct runner-up class, plus up to 10 forward passes of
line search, and no abort early): when a 1-iteration run predicts more than --peer_time_cap
seconds, it runs fewer iterations and its time is extrapolated linearly (marked "~", no
success rate or L2). Attacks that stop early (JSMA, the other C&Ws) always run in full.

  /tmp/peers-venv/bin/python benchmarks/peers.py --log_root=/tmp/peers_model --rce
      [--train_steps 300] [--num_residual_units 5] [--num_images 100] [--jsma_num_images 30]
      [--cw_num_images 10] [--attacks fgsm,bim,ilcm,jsma,cw]
      [--libraries ours,art,foolbox,cleverhans] [--bim_steps 10] [--jsma_max_pixels 100]
      [--cw_binary_search_steps 5] [--cw_max_iterations 100] [--repeats 3]
      [--peer_time_cap 60] [--cleverhans_cw_as_is]

--log_root is trained first (train.py, a subprocess, on the digits data made with
dataset_input.convert_digits in --data_dir) when it has no checkpoint of at least
--train_steps steps; --rce says the model is (to be) trained with RCE, so that everything
uses the flipped logits. Setup (a separate virtualenv; the peers are never installed into
the main interpreter):

  python -m venv /tmp/peers-venv --system-site-packages
  /tmp/peers-venv/bin/pip install -r benchmarks/requirements-peers.txt

Pitfalls (ART 1.20.1, foolbox 3.3.4, cleverhans 4.0.0 on TF 2.21 / Keras 3.15 / NumPy 2.4)
and what this script does about them:
  * cleverhans 4 C&W, Keras 3: it builds `tf.keras.optimizers.Adam` and calls
    `self.optimizer.variables()` to restart Adam at each binary-search step; in Keras 3
    `variables` is a property (a list): "TypeError: 'list' object is not callable". Also, a
    Keras 3 optimizer lists its learning rate among its variables, so zeroing them all (what
    cleverhans does) would set lr to 0, and it holds only the iteration counter before its
    first apply. Workaround: `_KerasAdamShim` replaces the attack's optimizer: a Keras 3 Adam
    built for the modifier on first use, whose callable `variables()` returns the iteration
    counter and the m/v slots, not the learning rate.
  * cleverhans 4 C&W bug: `const = tf.ones(shape) * initial_const` uses the IMAGE shape
    [B, H, W, C] instead of [B]; `reduce_sum(const * loss_1)` then broadcasts to
    [B, H, W, B] (C = 1) and weights the classification term by B*H*W*c (7840 here) instead
    of c, and the binary search's bounds broadcast the same way (the tf.function retraces
    as their shape changes). It runs, but optimises a different trade-off (mean L2 0.78 vs
    0.46 for the others in our runs). Workaround (default): `_per_example_const` swaps the
    module's `tf` for a proxy whose `ones` cuts a >1-D shape to [B] (tf.ones is called only
    there and for the [B] upper bounds). --cleverhans_cw_as_is runs it unpatched.
  * cleverhans 4 depends on tensorflow-probability (unpinned; pip resolves 0.25, which
    imports with TF 2.21; its tf2 attacks do not import it) and pulls in nose, pycodestyle and
    mnist (unused here). `cleverhans.tf2.utils.compute_gradient` is a module-level
    tf.function keyed on input shapes, and C&W's `gradient` a tf.function method traced per
    instance: see the warm-up above (one C&W instance per batch, iteration counts set on it).
  * ART TensorFlowV2Classifier: calls `self.model(x, training=...)`, so the model must take
    `training` (EagerResNet.__call__ does). Its compute_loss sets
    `tf.keras.losses.Reduction.NONE`, which Keras 3 no longer has; the attacks here only use
    loss_gradient/class_gradient/predict, which do not touch it (the Keras 3
    CategoricalCrossentropy's mean reduction only scales the gradient; FGSM/BIM take its
    sign). class_gradient with a per-example label array loops over the distinct labels, one
    forward + backward pass of the whole batch each, and calls tape.gradient inside a
    persistent tape's context (TF warns "significantly less efficient"); its first call takes
    ~20-30 s (the warm-up, not timed).
  * ART defaults: batch_size=1 (JSMA, C&W) or 32 (FGSM, PGD), set to the whole batch here;
    CarliniL2Method defaults to initial_const 0.01, 10 binary-search steps, 10 iterations,
    set explicitly. ART's import warns "PyTorch not found" (silenced).
  * foolbox 3: TensorFlowModel calls the deprecated `tf.test.is_gpu_available()` when no
    device is given, so the device is passed. L2CarliniWagnerAttack starts from
    best_advs = zeros and returns an all-zero image (not the input) for every example it
    never made adversarial, and its own `success` is computed on that zero image, so an
    untargeted run reports those as successes with L2 ~8 (seen here). Workaround: all-zero
    rows are put back to the input before the uniform success check. Labels and target
    classes must be int tensors of shape (N,).
  * NumPy 2: nothing needed a shim on these code paths (ART 1.20, foolbox 3.3.4 with eagerpy
    0.30, cleverhans 4.0.0's tf2 attacks use no removed alias). Should a peer import fail on
    one, it is retried once with np.float/np.int/np.bool/... restored (`_numpy2_aliases`);
    a library that still fails to import is reported as "not available: <reason>" and the
    others run.
"""
import argparse
import contextlib
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

import attack_runner  # pylint: disable=g-import-not-at-top
import attacks  # pylint: disable=g-import-not-at-top
import checkpoints  # pylint: disable=g-import-not-at-top
import dataset_input  # pylint: disable=g-import-not-at-top
import peers_model  # pylint: disable=g-import-not-at-top
import resnet_model  # pylint: disable=g-import-not-at-top
import restored_model  # pylint: disable=g-import-not-at-top

tf1 = tf.compat.v1

ATTACKS = ('fgsm', 'bim', 'ilcm', 'jsma', 'cw')
LIBRARIES = ('ours', 'art', 'foolbox', 'cleverhans')
CLIP_MIN, CLIP_MAX = -0.5, 0.5
WARMUP_IMAGES = 4
SHORT_CALL_S = 2.0  # calls shorter than this get 4x --repeats timed rounds
TARGETED = {'fgsm': False, 'bim': False, 'ilcm': True, 'jsma': True}


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
  p.add_argument('--libraries', default=','.join(LIBRARIES))
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
                      'Pitfalls)')
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
    if name not in LIBRARIES:
      p.error('unknown library %r; expected some of %s' % (name, ','.join(LIBRARIES)))
  return args


# ---------------------------------------------------------------------------- data and model
def ensure_data(data_dir):
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
    self.logits_fn = lambda x: self.model.model_fn(x)[0]
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
    return self.sess.run(self.logits, {self.x: x})

  def run(self, attack, x, labels, targets):
    feed = {self.x: x}
    if is_targeted(attack, self.args):
      feed[self.target] = onehot(targets)
    else:
      feed[self.label] = onehot(labels)
    return self.sess.run(self.ops[attack], feed)

  def carlini(self, batch_size, bss, iters):
    a = self.args
    with self.graph.as_default():
      return attacks.CarliniWagnerL2(
          self.sess, self.logits_fn, self.image_shape, batch_size, confidence=0.0,
          learning_rate=a.cw_learning_rate, binary_search_steps=bss, max_iterations=iters,
          abort_early=True, initial_const=a.cw_initial_const, targeted=not a.cw_untargeted,
          clip_min=CLIP_MIN, clip_max=CLIP_MAX, num_classes=self.hps.num_classes)


def onehot(labels, k=10):
  return np.eye(k, dtype=np.float32)[np.asarray(labels)]


def is_targeted(attack, args):
  """ILCM and JSMA go for the least-likely class; C&W is targeted unless --cw_untargeted."""
  return TARGETED.get(attack, not args.cw_untargeted)


def iteration_cap(scale):
  """The iterations a capped call runs: 1 for the warm-up, k for ('iters', k), else None."""
  if scale == 'warmup':
    return 1
  return scale[1] if isinstance(scale, tuple) else None


# ---------------------------------------------------------------------------- peer imports
def _numpy2_aliases():
  """Restores NumPy 1 aliases removed in NumPy 2 (only used if a peer import needs them)."""
  for name, value in (('float', float), ('int', int), ('bool', bool), ('complex', complex),
                      ('object', object), ('str', str)):
    if name not in np.__dict__:
      setattr(np, name, value)


def import_peer(name):
  """(module dict, None) or (None, reason). Retries once with NumPy 1 aliases."""
  def load():
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
      warnings.simplefilter('ignore')
      # pylint: disable=g-import-not-at-top
      if name == 'art':
        import art
        from art.attacks import evasion
        from art.estimators.classification import TensorFlowV2Classifier
        return {'version': art.__version__, 'evasion': evasion,
                'TensorFlowV2Classifier': TensorFlowV2Classifier}
      if name == 'foolbox':
        import foolbox
        return {'version': foolbox.__version__, 'fb': foolbox}
      if name == 'cleverhans':
        from importlib import metadata
        from cleverhans.tf2.attacks import carlini_wagner_l2
        from cleverhans.tf2.attacks import fast_gradient_method as fgm
        from cleverhans.tf2.attacks import projected_gradient_descent as pgd
        return {'version': metadata.version('cleverhans'), 'cw': carlini_wagner_l2,
                'fgm': fgm.fast_gradient_method, 'pgd': pgd.projected_gradient_descent}
      # pylint: enable=g-import-not-at-top
    raise ValueError(name)

  try:
    return load(), None
  except AttributeError as e:  # e.g. np.float on NumPy 2
    first = e
    _numpy2_aliases()
    try:
      return load(), 'needed NumPy 1 aliases (%s)' % first
    except Exception as e2:  # pylint: disable=broad-except
      return None, '%s: %s' % (type(e2).__name__, e2)
  except Exception as e:  # pylint: disable=broad-except
    return None, '%s: %s' % (type(e).__name__, str(e).splitlines()[0] if str(e) else '')


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


# ---------------------------------------------------------------------------- runners
class Skip(Exception):
  """The library has no such attack (reported as n/a)."""


class Context(object):
  """Everything the runners share."""

  def __init__(self, args, model, ours, peers):
    self.args, self.model, self.ours, self.peers = args, model, ours, peers
    self.image_shape = model.image_shape
    self.num_features = int(np.prod(self.image_shape))
    self.device = '/GPU:0' if tf.config.list_physical_devices('GPU') else '/CPU:0'
    self._art_classifier = None
    self._fmodel = None

  def art_classifier(self):
    if self._art_classifier is None:
      p = self.peers['art']
      self._art_classifier = p['TensorFlowV2Classifier'](
          model=self.model, nb_classes=10, input_shape=self.image_shape,
          loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
          clip_values=(CLIP_MIN, CLIP_MAX))
    return self._art_classifier

  def fmodel(self):
    if self._fmodel is None:
      fb = self.peers['foolbox']['fb']
      self._fmodel = fb.TensorFlowModel(self.model, bounds=(CLIP_MIN, CLIP_MAX),
                                        device=self.device)
    return self._fmodel


def runner(ctx, lib, attack):
  """Returns run(x, labels, targets, scale) -> adv images (numpy).

  labels: the model's own predictions on x (int [N]); targets: int [N] (targeted attacks).
  scale: 'full', 'warmup' (iterations cut to 1 on the full batch, or the first images with
  the real settings where nothing is batch-shape specialised), or ('iters', k) for a capped
  run with k iterations instead of the full count (peers only).
  """
  a = ctx.args
  eps, steps, step = a.eps, a.bim_steps, a.eps / a.bim_steps
  bss, iters = a.cw_binary_search_steps, a.cw_max_iterations
  cw_targeted = not a.cw_untargeted
  jsma_gamma = (a.jsma_max_pixels - 2) / float(ctx.num_features)

  if lib == 'ours':
    ours = ctx.ours
    if attack == 'cw':
      cache = {}

      def run_cw(x, labels, targets, scale):
        # The graph has a fixed batch and a baked-in iteration count, and its first run pays
        # graph optimization (about 1.5 s here). The warm-up builds the real instance and runs
        # one binary-search step of it on the full batch (binary_search_steps is read by the
        # numpy loop of `attack`, so setting it on the instance changes no graph).
        n = len(x)
        if n not in cache:
          cache[n] = ours.carlini(n, bss, iters)
        cw = cache[n]
        y = onehot(targets if cw_targeted else labels)
        if scale != 'warmup':
          return cw.attack(x, y)
        saved = cw.binary_search_steps, cw.repeat
        cw.binary_search_steps, cw.repeat = 1, False
        try:
          return cw.attack(x, y)
        finally:
          cw.binary_search_steps, cw.repeat = saved
      return run_cw

    def run_eps(x, labels, targets, scale):
      if scale == 'warmup':
        x, labels, targets = (x[:WARMUP_IMAGES], labels[:WARMUP_IMAGES],
                              targets[:WARMUP_IMAGES])
      return ours.run(attack, x, labels, targets)
    return run_eps

  if lib == 'art':
    ev = ctx.peers['art']['evasion']
    clf = ctx.art_classifier()

    def make_art(scale, n):
      k = iteration_cap(scale)
      if attack == 'fgsm':
        return ev.FastGradientMethod(clf, norm=np.inf, eps=eps, targeted=False,
                                     num_random_init=0, batch_size=n)
      if attack in ('bim', 'ilcm'):
        return ev.BasicIterativeMethod(clf, eps=eps, eps_step=step, max_iter=k or steps,
                                       targeted=attack == 'ilcm', batch_size=n, verbose=False)
      if attack == 'jsma':
        gamma = jsma_gamma if k is None else (2 * k - 1) / float(ctx.num_features)
        return ev.SaliencyMapMethod(clf, theta=a.jsma_theta, gamma=gamma, batch_size=n,
                                    verbose=False)
      if attack == 'cw':
        return ev.CarliniL2Method(clf, confidence=0.0, targeted=cw_targeted,
                                  learning_rate=a.cw_learning_rate,
                                  binary_search_steps=1 if k else bss,
                                  max_iter=k or iters, initial_const=a.cw_initial_const,
                                  batch_size=n, verbose=False)
      raise ValueError(attack)

    def run_art(x, labels, targets, scale):
      y = targets if is_targeted(attack, a) else labels
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return make_art(scale, len(x)).generate(x, y=onehot(y))
    return run_art

  if lib == 'foolbox':
    fb = ctx.peers['foolbox']['fb']
    if attack == 'jsma':
      raise Skip('foolbox 3 has no JSMA')
    fmodel = ctx.fmodel()

    def make_fb(scale):
      k = iteration_cap(scale)
      if attack == 'fgsm':
        return fb.attacks.LinfFastGradientAttack(random_start=False)
      if attack in ('bim', 'ilcm'):
        return fb.attacks.LinfBasicIterativeAttack(abs_stepsize=step, steps=k or steps,
                                                   random_start=False)
      if attack == 'cw':
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=1 if k else bss, steps=k or iters,
            stepsize=a.cw_learning_rate, confidence=0.0, initial_const=a.cw_initial_const,
            abort_early=True)
      raise ValueError(attack)

    def run_fb(x, labels, targets, scale):
      xt = tf.constant(x)
      if is_targeted(attack, a):
        criterion = fb.criteria.TargetedMisclassification(tf.constant(targets, tf.int64))
      else:
        criterion = fb.criteria.Misclassification(tf.constant(labels, tf.int64))
      epsilons = None if attack == 'cw' else eps
      _, clipped, _ = make_fb(scale)(fmodel, xt, criterion, epsilons=epsilons)
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

  if lib == 'cleverhans':
    ch = ctx.peers['cleverhans']
    model = ctx.model
    if attack == 'jsma':
      raise Skip('cleverhans 4 has no TF2 JSMA')
    if attack == 'cw':
      instances = {}

      def run_ch_cw(x, labels, targets, scale):
        # One instance per batch: its `gradient` is a tf.function method, traced per instance
        # (at the warm-up); the iteration counts are plain attributes its Python loop reads.
        k = iteration_cap(scale)
        y = onehot(targets if cw_targeted else labels)
        if len(x) not in instances:
          instances[len(x)] = ch['cw'].CarliniWagnerL2(
              model, y=y if cw_targeted else None, targeted=cw_targeted, batch_size=len(x),
              clip_min=CLIP_MIN, clip_max=CLIP_MAX, binary_search_steps=bss,
              max_iterations=iters, abort_early=True, confidence=0.0,
              initial_const=a.cw_initial_const, learning_rate=a.cw_learning_rate)
        cw = instances[len(x)]
        cw.binary_search_steps, cw.max_iterations = (1, k) if k else (bss, iters)
        cw.optimizer = _KerasAdamShim(a.cw_learning_rate)
        if a.cleverhans_cw_as_is:
          return cw.attack(x)
        with _per_example_const(ch['cw']):
          return cw.attack(x)
      return run_ch_cw

    def run_ch(x, labels, targets, scale):
      xt = tf.constant(x)
      if attack == 'fgsm':
        return ch['fgm'](model, xt, eps, np.inf, clip_min=CLIP_MIN, clip_max=CLIP_MAX,
                         y=tf.constant(labels, tf.int64), targeted=False).numpy()
      k = iteration_cap(scale) or steps
      y = tf.constant(targets if attack == 'ilcm' else labels, tf.int64)
      return ch['pgd'](model, xt, eps, step, k, np.inf, clip_min=CLIP_MIN,
                       clip_max=CLIP_MAX, y=y, targeted=attack == 'ilcm', rand_init=False,
                       sanity_checks=False).numpy()
    return run_ch
  raise ValueError(lib)


# ---------------------------------------------------------------------------- measuring
class Result(object):

  def __init__(self, lib, attack, status='ok', ms=None, cpu_ms=None, success=None, l2=None,
               linf=None, note=''):
    self.lib, self.attack, self.status = lib, attack, status
    self.ms, self.cpu_ms, self.success, self.l2, self.linf = ms, cpu_ms, success, l2, linf
    self.note = note


def full_iterations(args, attack):
  if attack in ('bim', 'ilcm'):
    return args.bim_steps
  if attack == 'jsma':
    return args.jsma_max_pixels // 2  # ART: two pixels per iteration
  if attack == 'cw':
    return args.cw_binary_search_steps * args.cw_max_iterations
  return 1


def evaluate(ctx, x, adv, true, correct, targets, targeted):
  """(success rate, mean L2 of successes, max L-inf) on the initially `correct` images."""
  preds = np.argmax(ctx.model(adv).numpy(), 1)
  hit = (preds == targets) if targeted else (preds != true)
  hit = hit & correct
  l2 = np.sqrt(np.sum(np.square(adv - x).reshape(len(x), -1), 1))
  rate = hit.sum() / max(1, correct.sum())
  mean_l2 = float(l2[hit].mean()) if hit.any() else float('nan')
  return rate, mean_l2, float(np.abs(adv - x).max())


def _failure(lib, attack, e):
  tb = traceback.format_exc().strip().splitlines()
  where = next((l.strip() for l in reversed(tb) if l.strip().startswith('File ')), '')
  return Result(lib, attack, 'failed', note='%s: %s (%s)' % (
      type(e).__name__, str(e).splitlines()[0][:200] if str(e) else '', where[:160]))


def _timed(fn):
  """(result, wall seconds, process CPU seconds: all threads of this process)."""
  w0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - w0, time.process_time() - c0


def measure_attack(ctx, attack, libs, x, true, labels, targets, log):
  """Results of every library on one attack.

  Warm-up of every library first, then `--repeats` rounds in which each library makes one
  timed call (rotating the order), so that load from other processes hits all of them;
  the minimum wall and CPU times are kept. A library stops repeating once a call took 10 s;
  one whose calls take under SHORT_CALL_S gets 4x as many rounds.
  """
  args = ctx.args
  targeted = is_targeted(attack, args)
  n = len(x)
  results, state = {}, {}
  for lib in libs:
    try:
      run = runner(ctx, lib, attack)
    except Skip as e:
      results[lib] = Result(lib, attack, 'n/a', note=str(e))
      continue
    try:
      _, warm, _ = _timed(lambda: run(x, labels, targets, 'warmup'))
      scale, note = 'full', 'warm-up %.1f s' % warm
      full = full_iterations(args, attack)
      # Only ART's C&W (no abort early, a line search per iteration) is capped: its time per
      # iteration is about constant, so a shorter run extrapolates linearly. Attacks that stop
      # early (JSMA, C&W with abort early) always run in full.
      if lib == 'art' and attack == 'cw' and args.peer_time_cap > 0:
        _, one, _ = _timed(lambda: run(x, labels, targets, ('iters', 1)))
        if one * full > args.peer_time_cap:
          k = max(1, int(args.peer_time_cap / 2 / one))
          scale = ('iters', k)
          note = ('timed %d of %d iterations, extrapolated linearly (1 iteration: %.1f s)'
                  % (k, full, one))
      if lib == 'art' and attack in ('jsma', 'cw'):
        note += '; %d distinct target classes' % len(np.unique(targets))
      state[lib] = {'run': run, 'scale': scale, 'note': note, 'wall': None, 'cpu': None,
                    'adv': None, 'done': False, 'full': full}
    except Exception as e:  # pylint: disable=broad-except
      results[lib] = _failure(lib, attack, e)
  order = list(state)
  repeats = max(1, args.repeats)
  for rnd in range(4 * repeats):
    for lib in order[rnd % len(order):] + order[:rnd % len(order)] if order else []:
      st = state[lib]
      if st['done'] or lib in results:
        continue
      if rnd >= repeats and st['wall'] >= SHORT_CALL_S:
        continue  # extra rounds only for short calls, whose timings are the noisiest
      try:
        adv, wall, cpu = _timed(lambda: st['run'](x, labels, targets, st['scale']))
      except Exception as e:  # pylint: disable=broad-except
        results[lib] = _failure(lib, attack, e)
        continue
      st['adv'] = np.asarray(adv, np.float32)
      st['wall'] = wall if st['wall'] is None else min(st['wall'], wall)
      st['cpu'] = cpu if st['cpu'] is None else min(st['cpu'], cpu)
      st['done'] = wall >= 10.0
  correct = np.argmax(ctx.model(x).numpy(), 1) == true  # of the clean images
  for lib in order:
    if lib in results:
      continue
    st = state[lib]
    factor = 1.0 if st['scale'] == 'full' else st['full'] / float(st['scale'][1])
    ms, cpu_ms = 1000.0 * st['wall'] * factor / n, 1000.0 * st['cpu'] * factor / n
    if st['scale'] != 'full':
      results[lib] = Result(lib, attack, 'extrapolated', ms=ms, cpu_ms=cpu_ms, note=st['note'])
      continue
    rate, l2, linf = evaluate(ctx, x, st['adv'], true, correct, targets, targeted)
    results[lib] = Result(lib, attack, ms=ms, cpu_ms=cpu_ms, success=rate, l2=l2, linf=linf,
                          note=st['note'])
  out = [results[lib] for lib in libs]
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
    ours = next((r for r in rows if r.lib == 'ours' and r.ms is not None), None)
    peers = [r for r in rows if r.lib != 'ours' and r.ms is not None]
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
  ours_j, art_j = rows.get(('ours', 'jsma')), rows.get(('art', 'jsma'))
  if ours_j and art_j and ours_j.ms and art_j.ms:
    ratio = art_j.ms / ours_j.ms
    print('- jsma: ours %.1fx faster per example than ART (CPU: %.1fx) (target >= 10x: %s)'
          % (ratio, art_j.cpu_ms / ours_j.cpu_ms, 'met' if ratio >= 10 else 'NOT met'))
  ours_c, fb_c = rows.get(('ours', 'cw')), rows.get(('foolbox', 'cw'))
  if ours_c and fb_c and ours_c.l2 is not None and fb_c.l2 is not None:
    print('- cw: mean L2 ours %.3f (success %.0f%%) vs foolbox %.3f (success %.0f%%) '
          '(target: no worse: %s)' % (ours_c.l2, 100 * ours_c.success, fb_c.l2,
                                      100 * fb_c.success,
                                      'met' if ours_c.l2 <= fb_c.l2 else 'NOT met'))


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
  hps = resnet_model.default_hparams(num_residual_units=args.num_residual_units,
                                     RCE_train=args.rce)
  x_all, y_all = dataset_input.load_arrays('mnist', test)
  n = min(args.num_images, len(x_all))
  x, true = x_all[:n], y_all[:n]
  image_shape = x.shape[1:]

  # 1. The eager model and ours, on the same images.
  ours = OursGraph(hps, args.log_root, args)
  model = peers_model.EagerResNet.from_checkpoint(ckpt, hps, image_shape)
  logits_ours = ours.predict(x)
  logits_eager = model(x).numpy()
  diff = float(np.abs(logits_ours - logits_eager).max())
  labels = np.argmax(logits_ours, 1)
  print('checkpoint %s (step %d), ResNet-%d, %s: flipped logits of the eager copy vs ours '
        '(graph) on %d images: max |diff| = %.3g (%s, tolerance 1e-4); accuracy %.1f%%'
        % (ckpt, ours.step, 6 * args.num_residual_units + 2, 'RCE' if args.rce else 'CE', n,
           diff, 'OK' if diff <= 1e-4 else 'MISMATCH', 100 * np.mean(labels == true)))
  if diff > 1e-4:
    raise SystemExit('the eager model does not reproduce ours: not benchmarking')
  least_likely = np.argmin(logits_ours, 1)
  cw_targets = attack_runner.random_targets(true, args.seed)  # random class != true label

  peers, unavailable, versions = {}, {}, []
  for lib in args.libraries:
    if lib == 'ours':
      continue
    mod, reason = import_peer(lib)
    if mod is None:
      unavailable[lib] = 'not available: %s' % reason
      versions.append('%s %s' % (lib, unavailable[lib]))
    else:
      peers[lib] = mod
      versions.append('%s %s%s' % (lib, mod['version'], ' (%s)' % reason if reason else ''))
  print('peers: ' + '; '.join(versions))
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
        'for calls under %g s, none after a call of 10 s); ART\'s C&W, when estimated over '
        '%g s, runs fewer iterations and is extrapolated (~)' % (
            args.repeats, 4 * args.repeats, SHORT_CALL_S, args.peer_time_cap),
        flush=True)

  ctx = Context(args, model, ours, peers)
  results = []

  def log(r):
    print('  %-5s %-10s %-12s %9s ms/example (CPU %9s)  %s' % (
        r.attack, r.lib, r.status, fmt_ms(r), fmt_ms(r, cpu=True), r.note), flush=True)

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
    libs = [lib for lib in args.libraries if lib == 'ours' or lib in peers]
    t0 = time.time()
    done = {r.lib: r for r in measure_attack(ctx, attack, libs, x[:m], true[:m], labels[:m],
                                             tg, log)}
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
