"""Our attacks (attacks/, TF1 graph mode) against ART, foolbox 3 and cleverhans 4 (TF2 eager).

Same trained ResNet (read from one checkpoint), same images (digits test images in
[-0.5, 0.5], box [-0.5, 0.5]), same targets, equal iteration counts:

  fgsm   eps 0.1, one step (untargeted, the model's own label)
  bim    eps 0.1, 10 steps of 0.01, no random start (untargeted)
  ilcm   eps 0.1, 10 steps of 0.01 towards the least-likely class (targeted BIM)
  jsma   theta 1.0, at most 100 changed pixels, towards the least-likely class. Ours is
         Papernot's one-pixel saliency map on log-softmax; ART's SaliencyMapMethod is ART's
         simplified variant (two pixels per iteration, ranked by the gradient of the target
         logit alone), with gamma = 98/784 so that it also changes at most 100 pixels.
  cw     Carlini-Wagner L2, targeted at a random class other than the true one (or --cw_untargeted),
         5 binary-search steps x 100 iterations, lr 0.01, initial const 1.0, confidence 0,
         abort early where the library has it (ART has no abort early; it takes a line search
         of up to 5 halvings + 5 doublings per iteration instead of Adam).

Libraries: ours (attacks/*.py in a tf.Graph + tf.compat.v1.Session, the whole batch at once),
ART (TensorFlowV2Classifier around the eager model; FastGradientMethod, BasicIterativeMethod,
which ART runs through its TF2 PGD code, SaliencyMapMethod, CarliniL2Method), foolbox 3
(TensorFlowModel; LinfFastGradientAttack, LinfBasicIterativeAttack, L2CarliniWagnerAttack; no
JSMA in foolbox 3) and cleverhans 4 (cleverhans.tf2.attacks: fast_gradient_method,
projected_gradient_descent with rand_init=False, carlini_wagner_l2; no TF2 JSMA). Every
library's batch size is the whole set of images. The process stays in eager mode; ours runs
inside `with graph.as_default()` and a Session.

The peers call `peers_model.EagerResNet`: the same eval-mode network rebuilt in eager TF2 (one
tf.function with a dynamic-batch signature, traced once) from the checkpoint's variables; its
flipped logits are checked against ours (graph mode, restored checkpoint) to 1e-4 first.

Timing: ms per example = wall time of one call on all images / number of images. Before it,
each (library, attack) makes one untimed warm-up call so that tracing, graph optimization and
kernel set-up are not counted: on the first 4 images with the real settings where the code is
batch-size agnostic (ours: one graph with a dynamic batch; ART/foolbox: the traced model), and
with iterations cut to 1 on the full batch where a library's tf.functions or graph are
specialised to the batch shape (cleverhans's tf.functions; our C&W, whose graph has a fixed
batch, uses a 1-step x 1-iteration instance in the same session; ART/foolbox do the same,
harmlessly). Success rate: untargeted = prediction != true label among the images the model
classifies correctly; targeted = prediction == target among the same images. Mean L2 is over
the successful ones. All predictions are made by the same eager model on the returned images.
The machine may be shared: absolute timings are noisy, ratios less so.

Peer runs that would take far longer than the rest (ART's JSMA and C&W make one forward and
backward pass per distinct target class per iteration, and ART's C&W also up to 10 forward
passes of line search) are capped by --peer_time_cap seconds: such a run is done with fewer
iterations and its time extrapolated linearly to the full count (marked "~" and "extrapolated";
no success rate / L2 then). --peer_time_cap=0 runs everything in full.

  /tmp/peers-venv/bin/python benchmarks/peers.py --log_root=/tmp/peers_model --rce
      [--train_steps 300] [--num_residual_units 5] [--num_images 100] [--cw_num_images 20]
      [--attacks fgsm,bim,ilcm,jsma,cw] [--libraries ours,art,foolbox,cleverhans]
      [--bim_steps 10] [--jsma_max_pixels 100] [--cw_binary_search_steps 5]
      [--cw_max_iterations 100]

Setup (a separate virtualenv; the peers are never installed into the main interpreter):

  python -m venv /tmp/peers-venv --system-site-packages
  /tmp/peers-venv/bin/pip install -r benchmarks/requirements-peers.txt

Pitfalls (ART 1.20.1, foolbox 3.3.4, cleverhans 4.0.0 on TF 2.21 / Keras 3 / NumPy 2) and what
this script does about them:
  * Keras 3 is tf.keras in TF 2.21. cleverhans 4's CarliniWagnerL2 builds
    `tf.keras.optimizers.Adam` and calls `self.optimizer.variables()` to reset Adam between
    binary-search steps; in Keras 3 `variables` is a property (a list), so the call raises
    "TypeError: 'list' object is not callable" (and before the first step the list holds only
    the iteration counter and learning rate). Workaround here: `_KerasAdamShim` replaces the
    attack's optimizer after construction: the same Keras 3 Adam, with a callable
    `variables()` that builds the optimizer for the modifier first.
  * cleverhans 4's CarliniWagnerL2 sets `const = tf.ones(shape) * initial_const` with the
    IMAGE shape [B, H, W, C] instead of [B]; multiplied with the per-example loss [B] it
    broadcasts to [B, H, W, B] (for a 1-channel image) and the binary search mixes examples.
    It still runs (the loss is wrong); we report what it returns, as it is, and say so.
  * cleverhans 4 depends on tensorflow-probability (unpinned) which pip resolves to 0.25, the
    one that imports with TF 2.21; its tf2 attacks do not import it. It also pulls in nose,
    pycodestyle and mnist (unused here). `cleverhans.tf2.utils.compute_gradient` is a module
    tf.function keyed on the input shape: warming it up on a smaller batch would leave the
    trace inside the timed call, hence the full-batch 1-iteration warm-up.
  * ART's TensorFlowV2Classifier calls `self.model(x, training=...)`, so a plain function
    does not do; EagerResNet.__call__ accepts `training`. ART's compute_loss sets
    `tf.keras.losses.Reduction.NONE`, which Keras 3 no longer has; the attacks used here only
    call loss_gradient/class_gradient/predict, which do not touch it. ART's class_gradient
    with a per-example label array loops over the distinct labels, one forward + backward
    pass of the whole batch each: that is the cost of its JSMA and C&W.
  * ART defaults batch_size=1 (JSMA, C&W) or 32 (FGSM, PGD): set to the whole batch here.
    ART's CarliniL2Method defaults to initial_const 0.01 and 10 iterations; set explicitly.
    ART imports print "PyTorch not found" warnings, silenced.
  * foolbox 3's TensorFlowModel calls the deprecated `tf.test.is_gpu_available()` when no
    device is given; we pass the device. foolbox's L2CarliniWagnerAttack returns zeros (not
    the input) for the examples it never made adversarial; we put the input back for those
    (using foolbox's own success flags) so that the uniform success check cannot count an
    all-zero image. foolbox wants int labels / target classes as tensors of shape (N,).
  * NumPy 2: nothing here needed a shim (ART 1.20, foolbox 3.3.4 / eagerpy 0.30 and cleverhans
    4 use no removed aliases on these code paths); should an import fail anyway, the library
    is reported as "not available: <reason>" and the others still run. `_numpy2_aliases()`
    restores np.float/np.int/np.bool/np.complex/np.object/np.str only if a peer import fails
    on them.
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

import attacks  # pylint: disable=g-import-not-at-top
import checkpoints  # pylint: disable=g-import-not-at-top
import dataset_input  # pylint: disable=g-import-not-at-top
import peers_model  # pylint: disable=g-import-not-at-top
import resnet_model  # pylint: disable=g-import-not-at-top

tf1 = tf.compat.v1

ATTACKS = ('fgsm', 'bim', 'ilcm', 'jsma', 'cw')
LIBRARIES = ('ours', 'art', 'foolbox', 'cleverhans')
CLIP_MIN, CLIP_MAX = -0.5, 0.5
WARMUP_IMAGES = 4
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
                      'takes about 2 s per image at 30)')
  p.add_argument('--cw_num_images', type=int, default=20,
                 help='the first N of those images for C&W (every library the same)')
  p.add_argument('--repeats', type=int, default=3,
                 help='timed calls per (library, attack); the minimum is reported. Calls '
                      'after the first are made only while one takes under 10 s')
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
  p.add_argument('--peer_time_cap', type=float, default=60.0,
                 help='seconds; a peer run estimated to take longer runs fewer iterations '
                      'and is extrapolated (0: no cap)')
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
    os.makedirs(data_dir, exist_ok=True)
    subprocess.check_call([sys.executable, os.path.join(_ROOT, 'dataset_input.py'),
                           '--convert=digits', '--out_dir=%s' % data_dir], cwd=_ROOT)
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
    subprocess.check_call(cmd, cwd=_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print('trained in %.0f s' % (time.time() - t0), flush=True)
    path = checkpoints.latest_checkpoint(args.log_root)
  if path is None:
    raise SystemExit('no checkpoint in %s and --train_steps=0' % args.log_root)
  return path


class OursGraph(object):
  """Our model and attacks in one tf.Graph + Session (the checkpoint restored once)."""

  def __init__(self, hps, ckpt, image_shape, args):
    self.hps, self.args = hps, args
    self.image_shape = tuple(image_shape)
    self.graph = tf.Graph()
    with self.graph.as_default():
      self.logits_fn = resnet_model.make_logits_fn(hps)
      shape = [None] + list(image_shape)
      self.x = tf1.placeholder(tf.float32, shape, name='x')
      self.target = tf1.placeholder(tf.float32, [None, hps.num_classes], name='target')
      self.logits = self.logits_fn(self.x)
      self.sess = tf1.Session(graph=self.graph)
      self.step = checkpoints.restore(self.sess, ckpt)
      eps = args.eps
      self.ops = {
          'fgsm': attacks.fgsm(self.logits_fn, self.x, eps),
          'bim': attacks.bim(self.logits_fn, self.x, eps, nb_iter=args.bim_steps),
          'ilcm': attacks.ilcm(self.logits_fn, self.x, eps, y_target=self.target,
                               nb_iter=args.bim_steps),
          'jsma': attacks.jsma(self.logits_fn, self.x, eps=args.jsma_theta,
                               y_target=self.target, max_iter=args.jsma_max_pixels),
      }

  def predict(self, x):
    return self.sess.run(self.logits, {self.x: x})

  def run(self, attack, x, target_onehot):
    feed = {self.x: x}
    if TARGETED[attack]:
      feed[self.target] = target_onehot
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
      if name == 'art':
        import art  # pylint: disable=g-import-not-at-top
        from art.attacks import evasion  # pylint: disable=g-import-not-at-top
        from art.estimators.classification import TensorFlowV2Classifier  # pylint: disable=g-import-not-at-top
        return {'version': art.__version__, 'evasion': evasion,
                'TensorFlowV2Classifier': TensorFlowV2Classifier}
      if name == 'foolbox':
        import foolbox  # pylint: disable=g-import-not-at-top
        return {'version': foolbox.__version__, 'fb': foolbox}
      if name == 'cleverhans':
        from importlib import metadata  # pylint: disable=g-import-not-at-top
        from cleverhans.tf2.attacks import carlini_wagner_l2  # pylint: disable=g-import-not-at-top
        from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method  # pylint: disable=g-import-not-at-top
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent  # pylint: disable=g-import-not-at-top
        return {'version': metadata.version('cleverhans'), 'cw': carlini_wagner_l2,
                'fgm': fast_gradient_method, 'pgd': projected_gradient_descent}
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
        # The graph has a fixed batch and baked-in iteration counts: the warm-up builds the
        # real instance (untimed) and runs a 1 x 1 instance of the same structure.
        n = len(x)
        if n not in cache:
          cache[n] = (ours.carlini(n, 1, 1), ours.carlini(n, bss, iters))
        y = targets if cw_targeted else labels
        return cache[n][0 if scale == 'warmup' else 1].attack(x, onehot(y))
      return run_cw

    def run_eps(x, labels, targets, scale):
      if scale == 'warmup':
        x, targets = x[:WARMUP_IMAGES], targets[:WARMUP_IMAGES]
      return ours.run(attack, x, onehot(targets))
    return run_eps

  if lib == 'art':
    ev = ctx.peers['art']['evasion']
    clf = ctx.art_classifier()

    def make(scale, n):
      k = {'warmup': 1}.get(scale, scale[1] if isinstance(scale, tuple) else None)
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
      y = targets if (TARGETED.get(attack) or (attack == 'cw' and cw_targeted)) else labels
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return make(scale, len(x)).generate(x, y=onehot(y))
    return run_art

  if lib == 'foolbox':
    fb = ctx.peers['foolbox']['fb']
    if attack == 'jsma':
      raise Skip('foolbox 3 has no JSMA')
    fmodel = ctx.fmodel()

    def make(scale):
      k = {'warmup': 1}.get(scale, scale[1] if isinstance(scale, tuple) else None)
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
      targeted = TARGETED.get(attack) or (attack == 'cw' and cw_targeted)
      if targeted:
        criterion = fb.criteria.TargetedMisclassification(tf.constant(targets, tf.int64))
      else:
        criterion = fb.criteria.Misclassification(tf.constant(labels, tf.int64))
      epsilons = None if attack == 'cw' else eps
      _, clipped, success = make(scale)(fmodel, xt, criterion, epsilons=epsilons)
      adv = clipped.numpy()
      if attack == 'cw':  # foolbox returns zeros where it failed: put the input back
        ok = success.numpy().reshape(-1)
        adv[~ok] = x[~ok]
      return adv
    return run_fb

  if lib == 'cleverhans':
    ch = ctx.peers['cleverhans']
    model = ctx.model
    if attack == 'jsma':
      raise Skip('cleverhans 4 has no TF2 JSMA')
    if attack == 'cw':
      def run_ch_cw(x, labels, targets, scale):
        k = {'warmup': 1}.get(scale, scale[1] if isinstance(scale, tuple) else None)
        y = onehot(targets if cw_targeted else labels)
        cw = ch['cw'].CarliniWagnerL2(
            model, y=y if cw_targeted else None, targeted=cw_targeted, batch_size=len(x),
            clip_min=CLIP_MIN, clip_max=CLIP_MAX, binary_search_steps=1 if k else bss,
            max_iterations=k or iters, abort_early=True, confidence=0.0,
            initial_const=a.cw_initial_const, learning_rate=a.cw_learning_rate)
        cw.optimizer = _KerasAdamShim(a.cw_learning_rate)
        return cw.attack(x)
      return run_ch_cw

    def run_ch(x, labels, targets, scale):
      xt = tf.constant(x)
      if attack == 'fgsm':
        return ch['fgm'](model, xt, eps, np.inf, clip_min=CLIP_MIN, clip_max=CLIP_MAX,
                         y=None, targeted=False).numpy()
      k = 1 if scale == 'warmup' else (scale[1] if isinstance(scale, tuple) else steps)
      y = tf.constant(targets, tf.int64) if attack == 'ilcm' else None
      return ch['pgd'](model, xt, eps, step, k, np.inf, clip_min=CLIP_MIN,
                       clip_max=CLIP_MAX, y=y, targeted=attack == 'ilcm', rand_init=False,
                       sanity_checks=False).numpy()
    return run_ch
  raise ValueError(lib)


# ---------------------------------------------------------------------------- measuring
class Result(object):

  def __init__(self, lib, attack, status='ok', ms=None, success=None, l2=None, linf=None,
               note=''):
    self.lib, self.attack, self.status = lib, attack, status
    self.ms, self.success, self.l2, self.linf, self.note = ms, success, l2, linf, note


def full_iterations(args, attack):
  if attack in ('bim', 'ilcm'):
    return args.bim_steps
  if attack == 'jsma':
    return args.jsma_max_pixels // 2  # ART: two pixels per iteration
  if attack == 'cw':
    return args.cw_binary_search_steps * args.cw_max_iterations
  return 1


def evaluate(ctx, attack, x, adv, true, targets, targeted):
  """(success rate, mean L2 of successes, max L-inf) on the initially correct images."""
  preds_clean = np.argmax(ctx.model(x).numpy(), 1)
  preds = np.argmax(ctx.model(adv).numpy(), 1)
  correct = preds_clean == true
  hit = (preds == targets) if targeted else (preds != true)
  hit = hit & correct
  l2 = np.sqrt(np.sum(np.square(adv - x).reshape(len(x), -1), 1))
  rate = hit.sum() / max(1, correct.sum())
  mean_l2 = float(l2[hit].mean()) if hit.any() else float('nan')
  return rate, mean_l2, float(np.abs(adv - x).max())


def measure(ctx, lib, attack, x, true, labels, targets):
  targeted = TARGETED.get(attack, not ctx.args.cw_untargeted)
  n = len(x)
  try:
    run = runner(ctx, lib, attack)
  except Skip as e:
    return Result(lib, attack, 'n/a', note=str(e))
  try:
    t0 = time.perf_counter()
    run(x, labels, targets, 'warmup')
    warm = time.perf_counter() - t0
    cap = ctx.args.peer_time_cap
    full = full_iterations(ctx.args, attack)
    scale, note = 'full', ''
    if lib != 'ours' and cap > 0 and full > 1:
      # Estimate from a 1-iteration run on the full batch (the warm-up, for most).
      t0 = time.perf_counter()
      run(x, labels, targets, ('iters', 1))
      one = time.perf_counter() - t0
      if one * full > cap:
        k = max(1, int(cap / 2 / one))
        scale = ('iters', k)
        note = 'extrapolated from %d of %d iterations (1 iteration: %.1f s)' % (k, full, one)
    seconds = None
    for _ in range(max(1, ctx.args.repeats)):
      t0 = time.perf_counter()
      adv = np.asarray(run(x, labels, targets, scale), np.float32)
      took = time.perf_counter() - t0
      seconds = took if seconds is None else min(seconds, took)
      if took >= 10.0:
        break
    if scale != 'full':
      seconds *= full / float(scale[1])
      return Result(lib, attack, 'extrapolated', ms=1000.0 * seconds / n, note=note)
    rate, l2, linf = evaluate(ctx, attack, x, adv, true, targets, targeted)
    return Result(lib, attack, ms=1000.0 * seconds / n, success=rate, l2=l2, linf=linf,
                  note='warm-up %.1f s' % warm)
  except Exception as e:  # pylint: disable=broad-except
    tb = traceback.format_exc().strip().splitlines()
    where = next((l.strip() for l in reversed(tb) if l.strip().startswith('File ')), '')
    return Result(lib, attack, 'failed', note='%s: %s (%s)' % (
        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else '', where[:160]))


# ---------------------------------------------------------------------------- report
def fmt_ms(r):
  if r.ms is None:
    return '-'
  return ('~%.1f' if r.status == 'extrapolated' else '%.1f') % r.ms


def print_results(results, args):
  print('\n## Results per (attack, library)\n')
  print('| attack | library | status | ms / example | success rate | mean L2 (successes) '
        '| max L-inf | note |')
  print('|---|---|---|---:|---:|---:|---:|---|')
  for r in results:
    succ = '-' if r.success is None else '%.1f%%' % (100 * r.success)
    l2 = '-' if r.l2 is None else '%.3f' % r.l2
    linf = '-' if r.linf is None else '%.3f' % r.linf
    print('| %s | %s | %s | %s | %s | %s | %s | %s |' % (
        r.attack, r.lib, r.status, fmt_ms(r), succ, l2, linf, r.note.replace('|', '/')))

  print('\n## Ours vs the fastest peer (ms per example, equal iterations)\n')
  print('| attack | ours | fastest peer | peer ms / example | peer / ours |')
  print('|---|---:|---|---:|---:|')
  summary = {}
  for attack in args.attacks:
    rows = [r for r in results if r.attack == attack]
    ours = next((r for r in rows if r.lib == 'ours' and r.ms is not None), None)
    peers = [r for r in rows if r.lib != 'ours' and r.ms is not None]
    best = min(peers, key=lambda r: r.ms) if peers else None
    summary[attack] = (ours, best)
    print('| %s | %s | %s | %s | %s |' % (
        attack, fmt_ms(ours) if ours else '-', best.lib if best else '-',
        fmt_ms(best) if best else '-',
        '%.2fx' % (best.ms / ours.ms) if ours and best else '-'))

  print('\n## Targets\n')
  for attack, (ours, best) in summary.items():
    if ours and best:
      print('- %s: ours %s the fastest peer (%s): %.1f vs %s ms/example'
            % (attack, 'no slower than' if ours.ms <= best.ms else 'SLOWER than',
               best.lib, ours.ms, fmt_ms(best)))
  rows = {(r.lib, r.attack): r for r in results}
  ours_j, art_j = rows.get(('ours', 'jsma')), rows.get(('art', 'jsma'))
  if ours_j and art_j and ours_j.ms and art_j.ms:
    ratio = art_j.ms / ours_j.ms
    print('- jsma: ours %.1fx faster per example than ART%s (target >= 10x: %s)'
          % (ratio, ' (ART extrapolated)' if art_j.status == 'extrapolated' else '',
             'met' if ratio >= 10 else 'NOT met'))
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
  ours = OursGraph(hps, ckpt, image_shape, args)
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
  rng = np.random.RandomState(args.seed)
  cw_targets = (true + rng.randint(1, 10, size=n)) % 10  # random class != true label

  peers, availability = {}, []
  for lib in args.libraries:
    if lib == 'ours':
      continue
    mod, reason = import_peer(lib)
    if mod is None:
      availability.append('%s: not available: %s' % (lib, reason))
    else:
      peers[lib] = mod
      availability.append('%s %s%s' % (lib, mod['version'], ' (%s)' % reason if reason else ''))
  print('peers: ' + '; '.join(availability))
  print('images: %d digits test images (JSMA: the first %d, C&W: the first %d), box [%g, %g]; eps %g, %d steps '
        'of %g; JSMA theta %g, <= %d pixels; C&W %s, %d x %d iterations, lr %g, c0 %g'
        % (n, min(args.jsma_num_images, n), min(args.cw_num_images, n), CLIP_MIN, CLIP_MAX, args.eps, args.bim_steps,
           args.eps / args.bim_steps, args.jsma_theta, args.jsma_max_pixels,
           'untargeted' if args.cw_untargeted else 'targeted (random class != true)',
           args.cw_binary_search_steps, args.cw_max_iterations, args.cw_learning_rate,
           args.cw_initial_const))
  print('timing: wall time of one call on all the attack\'s images / images, the minimum of '
        'up to %d calls (more only while a call takes < 10 s), after one untimed warm-up call '
        '(tracing and graph set-up excluded); peer runs estimated over %gs run fewer '
        'iterations and are extrapolated (~)' % (args.repeats, args.peer_time_cap), flush=True)

  ctx = Context(args, model, ours, peers)
  results = []
  for attack in args.attacks:
    if attack == 'cw':
      m = min(args.cw_num_images, n)
      xa, ta, la, tg = x[:m], true[:m], labels[:m], (
          cw_targets[:m] if not args.cw_untargeted else true[:m])
    elif attack == 'jsma':
      m = min(args.jsma_num_images, n)
      xa, ta, la, tg = x[:m], true[:m], labels[:m], least_likely[:m]
    else:
      xa, ta, la, tg = x, true, labels, least_likely
    for lib in args.libraries:
      if lib != 'ours' and lib not in peers:
        results.append(Result(lib, attack, 'not available',
                              note=next(s for s in availability if s.startswith(lib))))
        continue
      t0 = time.time()
      r = measure(ctx, lib, attack, xa, ta, la, tg)
      results.append(r)
      print('  %-5s %-10s %-12s %8s ms/example  (%.0f s) %s' % (
          attack, lib, r.status, fmt_ms(r), time.time() - t0, r.note), flush=True)
  print_results(results, args)
  print('\ntotal %.0f s; eager model traced %d time(s)' % (time.time() - t_start,
                                                           model.trace_count))


if __name__ == '__main__':
  main()
