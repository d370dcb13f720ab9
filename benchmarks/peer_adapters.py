"""How each attack library is called on our model: ours and ART, foolbox 3, cleverhans 4.

Ours runs attacks/ in the restored model's TF1 graph (`OursGraph`); the peers attack the
same network rebuilt in eager TF2 (`benchmarks.peers_model.EagerResNet`). Every library sits
behind one interface (`Library`: `load`, `runner`, `capped`, `full_iterations`, `note`), so
benchmarks.peers measures and reports without branching on a library's name. A peer is
imported by its `load` only: this module imports, and its helpers work, without any of them.
The settings each library gets and why: benchmarks/README.md ("What is compared").
"""
import collections
import contextlib
import functools
import io
import types
import warnings

import numpy as np
import tensorflow as tf

import attacks
from benchmarks import peer_workarounds
from rce.model import restored_model

tf1 = tf.compat.v1

ATTACKS = ('fgsm', 'bim', 'ilcm', 'jsma', 'cw')
OURS = 'ours'  # the library every peer is compared with
CLIP_MIN, CLIP_MAX = -0.5, 0.5
WARMUP_IMAGES = 4  # ours' warm-up call of its batch-agnostic graph ops
TARGETED = {'fgsm': False, 'bim': False, 'ilcm': True, 'jsma': True}


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
  """One attack library behind the interface benchmarks.peers times.

  A subclass names its library (`name`, the --libraries value), imports it (`_import`), says
  what its attacks take as the model (`_wrap`) and builds the calls (`runner`); `capped`,
  `full_iterations` and `note` say what is special about it. Images are float32
  [N, H, W, C] in [CLIP_MIN, CLIP_MAX]; labels and targets int [N].
  """
  name = None
  is_peer = True  # listed among the peers (versions) and compared with ours

  def __init__(self, setup):
    self.setup = setup
    self.version = None
    self.lib = None  # what `_import` found for the runners, as attributes
    a = self.args = setup.args
    self.eps, self.steps, self.step = a.eps, a.bim_steps, a.eps / a.bim_steps
    self.bss, self.iters = a.cw_binary_search_steps, a.cw_max_iterations
    self.cw_targeted = not a.cw_untargeted

  # -------------------------------------------------------------------- loading
  def _import(self):
    """Imports the library; returns (its version text, {name: what the runners use})."""
    raise NotImplementedError

  def _quiet_import(self):
    """`_import` with its warnings and stderr silenced (ART: "PyTorch not found")."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
      warnings.simplefilter('ignore')
      version, found = self._import()
    self.lib = types.SimpleNamespace(**found)
    return version

  def load(self):
    """Imports the library, retrying once with NumPy 1 aliases (numpy2_aliases).

    Returns:
      '' or, after a retry, a note saying why it was needed; `version` and `lib` are set.

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
    peer_workarounds.numpy2_aliases()
    try:
      self.version = self._quiet_import()
    except Exception as e:  # pylint: disable=broad-except
      raise Unavailable('%s: %s' % (type(e).__name__, e))
    return 'needed NumPy 1 aliases (%s)' % first

  # -------------------------------------------------------------------- the model
  @functools.cached_property
  def model(self):
    """The model as this library's attacks take it (`_wrap`), built on first use."""
    return self._wrap()

  def _wrap(self):
    """The eager model as it is; a library with its own model class wraps it."""
    return self.setup.model

  # -------------------------------------------------------------------- the calls
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

  def full_iterations(self, attack):
    """Iterations of a full run, the unit of a capped run's linear extrapolation."""
    if attack in ('bim', 'ilcm'):
      return self.steps
    if attack == 'cw':
      return self.bss * self.iters
    return 1

  def note(self, attack, targets):
    """Text added to the result's note (after the warm-up time)."""
    del attack, targets
    return ''

  # -------------------------------------------------------------------- shared by the runners
  def onehot(self, labels):
    return onehot(labels, self.setup.num_classes)

  def aim(self, attack, labels, targets):
    """The classes `attack` goes for (targets) or away from (labels): int [N]."""
    return targets if is_targeted(attack, self.args) else labels

  def iterations(self, scale):
    """BIM / ILCM steps of a call at `scale`: its cap (iteration_cap) or --bim_steps."""
    return iteration_cap(scale) or self.steps

  def cw_schedule(self, scale):
    """(binary-search steps, iterations) of a C&W call at `scale`: one step of its cap, or
    the flags' counts."""
    k = iteration_cap(scale)
    return (1, k) if k else (self.bss, self.iters)


class Ours(Library):
  """attacks/ in our restored model's graph and Session (OursGraph)."""
  name = OURS
  is_peer = False

  def load(self):
    self.version = 'this repository'
    return ''

  def _wrap(self):
    return self.setup.ours

  def runner(self, attack):
    if attack == 'cw':
      return self._cw_runner()
    ours = self.model

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
        cache[n] = self.model.carlini(n, self.bss, self.iters)
      cw = cache[n]
      y = self.onehot(self.aim('cw', labels, targets))
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

  def _import(self):
    # pylint: disable=g-import-not-at-top
    import art
    from art.attacks import evasion
    from art.estimators.classification import TensorFlowV2Classifier
    # pylint: enable=g-import-not-at-top
    return art.__version__, dict(evasion=evasion, classifier=TensorFlowV2Classifier)

  def _wrap(self):
    """The TensorFlowV2Classifier of the eager model."""
    return self.lib.classifier(
        model=self.setup.model, nb_classes=self.setup.num_classes,
        input_shape=self.setup.model.image_shape,
        loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(CLIP_MIN, CLIP_MAX))

  def capped(self, attack):
    # C&W: no abort early, and a line search per iteration.
    return attack == 'cw'

  def full_iterations(self, attack):
    if attack == 'jsma':
      return self.args.jsma_max_pixels // 2  # two pixels per iteration
    return super(Art, self).full_iterations(attack)

  def note(self, attack, targets):
    if attack in ('jsma', 'cw'):
      return '; %d distinct target classes' % len(np.unique(targets))
    return ''

  def _attack(self, clf, attack, scale, n):
    ev, a = self.lib.evasion, self.args
    if attack == 'fgsm':
      return ev.FastGradientMethod(clf, norm=np.inf, eps=self.eps, targeted=False,
                                   num_random_init=0, batch_size=n)
    if attack in ('bim', 'ilcm'):
      return ev.BasicIterativeMethod(clf, eps=self.eps, eps_step=self.step,
                                     max_iter=self.iterations(scale),
                                     targeted=is_targeted(attack, a), batch_size=n,
                                     verbose=False)
    if attack == 'jsma':
      # ART changes two pixels per iteration and stops once the fraction gamma of the pixels
      # has changed: (max - 2) / pixels lets it change at most --jsma_max_pixels, and
      # (2k - 1) / pixels stops a capped run after k iterations.
      k = iteration_cap(scale)
      pixels = a.jsma_max_pixels - 2 if k is None else 2 * k - 1
      gamma = pixels / float(np.prod(self.setup.model.image_shape))
      return ev.SaliencyMapMethod(clf, theta=a.jsma_theta, gamma=gamma, batch_size=n,
                                  verbose=False)
    if attack == 'cw':
      bss, iters = self.cw_schedule(scale)
      return ev.CarliniL2Method(clf, confidence=0.0, targeted=self.cw_targeted,
                                learning_rate=a.cw_learning_rate, binary_search_steps=bss,
                                max_iter=iters, initial_const=a.cw_initial_const,
                                batch_size=n, verbose=False)
    raise ValueError(attack)

  def runner(self, attack):
    clf = self.model  # built before the warm-up call

    def run_art(x, labels, targets, scale):
      y = self.onehot(self.aim(attack, labels, targets))
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return self._attack(clf, attack, scale, len(x)).generate(x, y=y)
    return run_art


class Foolbox(Library):
  """foolbox 3: TensorFlowModel and its Linf / L2 attacks (no JSMA)."""
  name = 'foolbox'

  def _import(self):
    import foolbox  # pylint: disable=g-import-not-at-top
    return foolbox.__version__, dict(foolbox=foolbox)

  def _wrap(self):
    """The TensorFlowModel of the eager model, with its device (see README)."""
    device = '/GPU:0' if tf.config.list_physical_devices('GPU') else '/CPU:0'
    return self.lib.foolbox.TensorFlowModel(self.setup.model, bounds=(CLIP_MIN, CLIP_MAX),
                                            device=device)

  def _attack(self, attack, scale):
    fb, a = self.lib.foolbox, self.args
    if attack == 'fgsm':
      return fb.attacks.LinfFastGradientAttack(random_start=False)
    if attack in ('bim', 'ilcm'):
      return fb.attacks.LinfBasicIterativeAttack(abs_stepsize=self.step,
                                                 steps=self.iterations(scale),
                                                 random_start=False)
    if attack == 'cw':
      bss, iters = self.cw_schedule(scale)
      return fb.attacks.L2CarliniWagnerAttack(
          binary_search_steps=bss, steps=iters, stepsize=a.cw_learning_rate, confidence=0.0,
          initial_const=a.cw_initial_const, abort_early=True)
    raise ValueError(attack)

  def runner(self, attack):
    if attack == 'jsma':
      raise Skip('foolbox 3 has no JSMA')
    criteria, fmodel = self.lib.foolbox.criteria, self.model
    targeted = is_targeted(attack, self.args)

    def run_fb(x, labels, targets, scale):
      y = tf.constant(self.aim(attack, labels, targets), tf.int64)
      criterion = (criteria.TargetedMisclassification(y) if targeted
                   else criteria.Misclassification(y))
      epsilons = None if attack == 'cw' else self.eps
      _, clipped, _ = self._attack(attack, scale)(fmodel, tf.constant(x), criterion,
                                                  epsilons=epsilons)
      adv = clipped.numpy()
      return peer_workarounds.zero_rows_to_input(adv, x) if attack == 'cw' else adv
    return run_fb


class Cleverhans(Library):
  """cleverhans 4: the tf2 attack functions and CarliniWagnerL2 (no TF2 JSMA)."""
  name = 'cleverhans'

  def _import(self):
    # pylint: disable=g-import-not-at-top
    from importlib import metadata
    from cleverhans.tf2.attacks import carlini_wagner_l2
    from cleverhans.tf2.attacks import fast_gradient_method as fgm
    from cleverhans.tf2.attacks import projected_gradient_descent as pgd
    # pylint: enable=g-import-not-at-top
    return metadata.version('cleverhans'), dict(
        cw_module=carlini_wagner_l2, fgm=fgm.fast_gradient_method,
        pgd=pgd.projected_gradient_descent)

  def runner(self, attack):
    if attack == 'jsma':
      raise Skip('cleverhans 4 has no TF2 JSMA')
    if attack == 'cw':
      return self._cw_runner()
    lib, model = self.lib, self.model
    targeted = is_targeted(attack, self.args)

    def run_ch(x, labels, targets, scale):
      xt = tf.constant(x)
      y = tf.constant(self.aim(attack, labels, targets), tf.int64)
      if attack == 'fgsm':
        return lib.fgm(model, xt, self.eps, np.inf, clip_min=CLIP_MIN, clip_max=CLIP_MAX,
                       y=y, targeted=targeted).numpy()
      return lib.pgd(model, xt, self.eps, self.step, self.iterations(scale), np.inf,
                     clip_min=CLIP_MIN, clip_max=CLIP_MAX, y=y, targeted=targeted,
                     rand_init=False, sanity_checks=False).numpy()
    return run_ch

  def _cw_runner(self):
    a, instances = self.args, {}

    def run_ch_cw(x, labels, targets, scale):
      # One instance per batch: its `gradient` is a tf.function method, traced per instance
      # (at the warm-up); the iteration counts are plain attributes its Python loop reads.
      y = self.onehot(self.aim('cw', labels, targets))
      if len(x) not in instances:
        instances[len(x)] = self.lib.cw_module.CarliniWagnerL2(
            self.model, y=y if self.cw_targeted else None, targeted=self.cw_targeted,
            batch_size=len(x), clip_min=CLIP_MIN, clip_max=CLIP_MAX,
            binary_search_steps=self.bss, max_iterations=self.iters, abort_early=True,
            confidence=0.0, initial_const=a.cw_initial_const,
            learning_rate=a.cw_learning_rate)
      cw = instances[len(x)]
      cw.binary_search_steps, cw.max_iterations = self.cw_schedule(scale)
      cw.optimizer = peer_workarounds.KerasAdamShim(a.cw_learning_rate)
      if a.cleverhans_cw_as_is:
        return cw.attack(x)
      with peer_workarounds.per_example_const(self.lib.cw_module):
        return cw.attack(x)
    return run_ch_cw


# --libraries name -> adapter class, in the default order of --libraries and the report.
ADAPTERS = collections.OrderedDict((cls.name, cls) for cls in (Ours, Art, Foolbox, Cleverhans))
