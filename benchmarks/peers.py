"""Our attacks (attacks/, TF1 graph mode) against ART, foolbox 3 and cleverhans 4 (TF2 eager).

The main of the peer benchmark: trains the model if needed, then measures every library on
every attack and prints the report. Every library attacks the same trained ResNet (one
checkpoint; the peers through `peers_model.EagerResNet`) on the same images, labels and
targets with equal iteration counts; how each is called is in benchmarks.peer_adapters, the
workarounds for their quirks in benchmarks.peer_workarounds. What is compared, the settings,
how it is timed and scored: benchmarks/README.md. From the repository root:

  /tmp/peers-venv/bin/python -m benchmarks.peers --log_root=/tmp/peers_model --rce
      [--train_steps 300] [--num_images 100] [--attacks fgsm,bim,ilcm,jsma,cw]
      [--libraries ours,art,foolbox,cleverhans] [--repeats 3] [...]  (--help lists all)
"""
import argparse
import functools
import os
import subprocess
import sys
import time
import traceback

import numpy as np
import tensorflow as tf

import attacks
from benchmarks import peer_adapters
from benchmarks import peers_model
from benchmarks import timing
import dataset_input
from rce.attacking import attack_runner
from rce.model import checkpoints
import resnet_model

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train.py is

SHORT_CALL_S = 2.0  # calls shorter than this get 4x --repeats timed rounds
LONG_CALL_S = 10.0  # a library stops repeating after a call this long
# The targets beyond "ours no slower than the fastest peer": ours' JSMA this many times faster
# per example than that peer's, ours' C&W mean L2 no worse than that peer's.
JSMA_SPEED_TARGET = ('art', 10.0)
CW_L2_TARGET = 'foolbox'


def parse_args(argv=None):
  names, adapters = peer_adapters.ATTACKS, peer_adapters.ADAPTERS
  p = argparse.ArgumentParser(prog='python -m benchmarks.peers',
                              description=__doc__.split('\n')[0])
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
  p.add_argument('--attacks', default=','.join(names))
  p.add_argument('--libraries', default=','.join(adapters))
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
    if name not in names:
      p.error('unknown attack %r; expected some of %s' % (name, ','.join(names)))
  for name in args.libraries:
    if name not in adapters:
      p.error('unknown library %r; expected some of %s' % (name, ','.join(adapters)))
  return args


# ---------------------------------------------------------------------------- data and checkpoint
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


# ---------------------------------------------------------------------------- measuring
class Result(object):
  """One (library, attack) row of the report."""

  def __init__(self, lib, attack, status='ok', ms=None, cpu_ms=None, success=None, l2=None,
               linf=None, note=''):
    self.lib, self.attack, self.status = lib, attack, status
    self.ms, self.cpu_ms, self.success, self.l2, self.linf = ms, cpu_ms, success, l2, linf
    self.note = note


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
  peer_adapters.Library.capped) if a full call would take over --peer_time_cap."""
  args = library.args
  warm = timing.warm_up(lambda: run(x, labels, targets, 'warmup'))
  scale, note = 'full', 'warm-up %.1f s' % warm
  full = library.full_iterations(attack)
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
    except peer_adapters.Skip as e:
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
                              peer_adapters.is_targeted(attack, args))
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
  ours_name, summary = peer_adapters.OURS, {}
  for attack in args.attacks:
    rows = [r for r in results if r.attack == attack]
    ours = next((r for r in rows if r.lib == ours_name and r.ms is not None), None)
    peers = [r for r in rows if r.lib != ours_name and r.ms is not None]
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
  ours_j, peer_j = rows.get((ours_name, 'jsma')), rows.get((peer, 'jsma'))
  if ours_j and peer_j and ours_j.ms and peer_j.ms:
    ratio = peer_j.ms / ours_j.ms
    print('- jsma: ours %.1fx faster per example than %s (CPU: %.1fx) (target >= %gx: %s)'
          % (ratio, peer.upper(), peer_j.cpu_ms / ours_j.cpu_ms, factor,
             'met' if ratio >= factor else 'NOT met'))
  ours_c, peer_c = rows.get((ours_name, 'cw')), rows.get((CW_L2_TARGET, 'cw'))
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
    library = peer_adapters.ADAPTERS[name](setup)
    try:
      reason = library.load()
    except peer_adapters.Unavailable as e:
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
            n, min(args.jsma_num_images, n), min(args.cw_num_images, n),
            peer_adapters.CLIP_MIN, peer_adapters.CLIP_MAX,
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
  ours = peer_adapters.OursGraph(hps, args.log_root, args)
  model = peers_model.EagerResNet.from_checkpoint(ckpt, hps, x.shape[1:])
  logits_ours = check_eager_model(args, ckpt, ours, model, x, true)
  labels = np.argmax(logits_ours, 1)
  least_likely = np.argmin(logits_ours, 1)
  # A random class != the true label.
  cw_targets = attack_runner.random_targets(true, args.seed, num_classes=hps.num_classes)

  setup = peer_adapters.Setup(args, model, ours, hps.num_classes)
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
