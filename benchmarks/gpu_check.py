"""One-command check of a GPU machine for this suite: devices, towers, speeds, reproduce.py.

    python -m benchmarks.gpu_check [--out gpu_check.md] [--smoke] [--skip_reproduce]
        [--gpu_memory_mb N] [--reproduce_timeout 330] [--set name=value ...]

from the repository root (benchmarks is a package; run as a file it says so and exits).

Six parts, each reported as rows of ONE Markdown table (check | result | figure / verdict),
printed and written atomically to --out; the header line names the device and the date:

  1. device and driver: TensorFlow's build (CUDA, cuDNN), the GPUs it sees, nvidia-smi.
  2. towers: ResNet-32 trained a few steps on one GPU and as 2 towers on 2 logical GPUs (the
     physical GPU split in two before anything initializes it), same weights, same global
     batch; the losses must agree within LOSS_TOL (each tower normalizes its own half-batch).
  3. training images/s of ours (training.build_train_graph) against Keras `model.fit`.
  4. training images/s in fp32 against mixed_float16 and mixed_bfloat16 (on a CPU: bfloat16
     only; float16 is emulated there and very slow).
  5. adversarial examples/s of FGSM, BIM and C&W (fixed iterations) at batch 100 and 1000.
  6. `reproduce.py --tiny` end to end in a subprocess (its wall time, RESULTS.md Tables 1-3).

Each part catches its own failure ('FAILED: <one line>' in its row) and the others still run;
the exit status is 1 when a part failed or a check did not pass. Without a GPU everything
runs on the CPU (the towers on two virtual CPU devices) and part 1 says so.

Budget on one GPU (H100; estimated): parts 1-5 about 2 minutes, part 6 about 3 (about 25
stages, each a TensorFlow process; killed and reported failed after --reproduce_timeout,
330 s), so the whole run stays under 8 minutes. On a CPU the full sizes take far longer
(ResNet-32, C&W at batch 1000): use --smoke (ResNet-8, a few steps, small batches: seconds)
or shrink single sizes with --set, e.g. `--set attack_batches=20,200 --set cw_iterations=10`.
"""
import argparse
import collections
import datetime
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

if not __package__:  # `python benchmarks/gpu_check.py`: the package imports below would fail
  sys.exit('run it from the repository root as: python -m benchmarks.gpu_check [flags]')

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

import attacks
from benchmarks import attack_throughput
from benchmarks import keras_resnet
from benchmarks import timing
from benchmarks import train_throughput
import dataset_input
from rce import placement
from rce.results import io_utils
from rce.training import training
import resnet_model
# pylint: enable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where reproduce.py is

tf1 = tf.compat.v1

SPEC = attack_throughput.SPEC  # mnist: 28x28x1, 10 classes
# Part 2: largest relative difference |loss_2towers - loss_1device| / loss_1device allowed
# over the compared steps. The runs differ by batch-norm statistics alone (each tower
# normalizes its own half-batch). Measured on the CPU from the same weights: 0.03 % for
# ResNet-32 at batch 128 over 5 momentum steps (the full check), 0.10 % for ResNet-8 at batch
# 32 over 3 steps (--smoke). Faults injected into the gradient averaging moved the full
# check by 3.7 % (tower 1's gradient dropped), 3.7 % (gradients summed, not averaged) and
# 5.9 % (half the gradient). 1 % sits between, 30x above the normal difference, leaving room
# for GPU rounding (TF32, cuDNN's algorithms), which perturbs far less than the half-batch
# statistics do.
LOSS_TOL = 0.01

# The sizes of every part; --smoke shrinks them all, --set name=value overrides one.
FULL = dict(units=5, tower_batch=128, tower_steps=5, batch=128, steps=20, blocks=5, warmup=3,
            attack_batches=(100, 1000), eps=0.1, bim_iter=10, cw_iterations=100,
            attack_repeats=3)
SMOKE = dict(FULL, units=1, tower_batch=32, tower_steps=3, batch=16, steps=2, blocks=2,
             warmup=1, attack_batches=(8, 32), bim_iter=3, cw_iterations=3, attack_repeats=1)

Row = collections.namedtuple('Row', ['check', 'result', 'verdict', 'ok'])


def info(check, result, verdict):
  """A row that reports, without a pass/fail condition."""
  return Row(check, result, verdict, True)


# ---------------------------------------------------------------------------- devices
def nvidia_smi():
  """The `nvidia-smi --query-gpu=name,driver_version,memory.total` line(s), or None."""
  exe = shutil.which('nvidia-smi')
  if not exe:
    return None
  try:
    out = subprocess.run([exe, '--query-gpu=name,driver_version,memory.total',
                          '--format=csv,noheader'], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired) as e:
    return 'nvidia-smi failed: %s' % e
  return '; '.join(line.strip() for line in out.stdout.splitlines() if line.strip()) or (
      'nvidia-smi exited %d with no output' % out.returncode)


def default_memory_mb(smi_line):
  """Memory of each logical GPU: 40 % of the first GPU's (2 x 40 % held by this process,
  the rest left to reproduce.py's subprocesses), at most 16 GiB; 4 GiB when unknown."""
  match = re.search(r'(\d+)\s*MiB', smi_line or '')
  if not match:
    return 4096
  return min(16384, int(0.4 * int(match.group(1))))


class Machine(object):
  """The devices of this run: the GPUs TensorFlow sees, the first one split into two logical
  GPUs (so that one GPU can run the 2-tower check), or the CPU when there is none.

  Must be built before anything initializes the GPU: the logical split cannot be changed
  afterwards. Graph-mode sessions take their own ConfigProto, which would otherwise see one
  GPU, so `towers` copies the split into it (as the eager context's own config does).
  """

  def __init__(self, memory_mb=None):
    self.smi = nvidia_smi()
    self.physical = tf.config.list_physical_devices('GPU')
    self.memory_mb = memory_mb or default_memory_mb(self.smi)
    self.split_error = None
    if self.physical:
      try:
        tf.config.set_logical_device_configuration(
            self.physical[0], [tf.config.LogicalDeviceConfiguration(memory_limit=self.memory_mb)
                               for _ in range(2)])
      except (RuntimeError, ValueError) as e:  # part 1 reports it, part 2 then fails
        self.split_error = str(e).strip().splitlines()[0]
    self.logical = tf.config.list_logical_devices('GPU')  # initializes the runtime

  @property
  def gpu(self):
    return bool(self.physical)

  def details(self, index=0):
    """(name, 'compute capability x.y') of physical GPU `index`."""
    found = tf.config.experimental.get_device_details(self.physical[index])
    cc = found.get('compute_capability')
    return (found.get('device_name', self.physical[index].name),
            'compute capability %s' % ('%d.%d' % cc if cc else 'unknown'))

  def name(self):
    """The device in words, for the table's header."""
    if not self.gpu:
      return 'CPU only (no GPU found), %d cores' % os.cpu_count()
    return '%s (GPU 0 of %d, as %d logical GPUs)' % (self.details()[0], len(self.physical),
                                                      len(self.logical))

  def towers(self, n):
    """(devices, session ConfigProto) for n towers: logical GPUs 0..n-1, or virtual CPUs."""
    if not self.gpu:
      return placement.tower_devices(n if n > 1 else 0, gpus_present=0)
    devices, config = placement.tower_devices(n, gpus_present=len(self.logical))
    if self.split_error:
      return devices, config
    options = config.gpu_options
    options.allow_growth = False  # not allowed with virtual devices
    options.visible_device_list = ','.join(str(i) for i in range(len(self.physical)))
    for i in range(len(self.physical)):
      options.experimental.virtual_devices.add(
          memory_limit_mb=[self.memory_mb] * 2 if i == 0 else [])
    return devices, config


def part_device(machine):
  """Part 1: TensorFlow's build, the GPUs it sees, CUDA/cuDNN, nvidia-smi."""
  build = tf.sysconfig.get_build_info()
  rows = [info('1. TensorFlow build', 'TensorFlow %s, %s build, compiled for %s'
               % (tf.__version__, 'CUDA' if build.get('is_cuda_build') else 'non-CUDA',
                  ' '.join(build.get('cuda_compute_capabilities', [])) or 'n/a'),
               tf.__version__)]
  rows.append(info('1. CUDA / cuDNN', 'built against CUDA %s, cuDNN %s'
                   % (build.get('cuda_version', 'n/a'), build.get('cudnn_version', 'n/a')),
                   'CUDA %s / cuDNN %s' % (build.get('cuda_version', '-'),
                                           build.get('cudnn_version', '-'))))
  if machine.gpu:
    gpus = ', '.join('%s: %s, %s' % ((dev.name,) + machine.details(i))
                     for i, dev in enumerate(machine.physical))
    split = ('split into 2 logical GPUs of %d MB' % machine.memory_mb if not machine.split_error
             else 'NOT split: %s' % machine.split_error)
    rows.append(info('1. GPUs TensorFlow sees', '%s; GPU 0 %s; logical: %s'
                     % (gpus, split, ', '.join(d.name for d in machine.logical)),
                     '%d GPU(s), %d logical' % (len(machine.physical), len(machine.logical))))
  else:
    rows.append(info('1. GPUs TensorFlow sees', 'none; %d CPU cores' % os.cpu_count(),
                     'no GPU found: every check runs on the CPU'))
  rows.append(info('1. nvidia-smi', machine.smi or 'nvidia-smi not found',
                   'found' if machine.smi else 'absent'))
  return rows


# ---------------------------------------------------------------------------- training
def random_batch(size, seed=0):
  """A fixed random batch: float32 images in [-0.5, 0.5] and one-hot labels."""
  rng = np.random.RandomState(seed)
  shape = dataset_input.image_shape(SPEC)
  images = rng.uniform(-0.5, 0.5, (size,) + shape).astype(np.float32)
  labels = rng.randint(0, SPEC.num_classes, size)
  return images, np.eye(SPEC.num_classes, dtype=np.float32)[labels]


def build_ours(sz, batch, devices, precision_mode='fp32'):
  """train_throughput.TrainModel of training.build_train_graph (ResNet of `sz.units`, graph
  seed 0, the batch as graph constants) on `devices`; its `logits` slot holds the precision."""
  hps = resnet_model.default_hparams(num_residual_units=sz.units)

  def build_step(images, labels):
    tg = training.build_train_graph(hps, SPEC, images, labels, devices,
                                    precision_mode=precision_mode)
    return tg.train_op, tg.loss, tg.precision

  return train_throughput.build_graph(0, batch[0], batch[1], build_step)


def open_session(model, config):
  sess = tf1.Session(graph=model.graph, config=config)
  sess.run(model.init)
  return sess


def devices_run(sess, fetches):
  """Runs `fetches` once, traced; returns (its value, the devices ops ran on, e.g. 'GPU:1').

  SOFTWARE_TRACE: the executor's own per-op records, which need no GPU profiler (CUPTI).
  """
  metadata = tf1.RunMetadata()
  value = sess.run(fetches, options=tf1.RunOptions(trace_level=tf1.RunOptions.SOFTWARE_TRACE),
                   run_metadata=metadata)
  names = set()
  for dev in metadata.step_stats.dev_stats:
    match = re.search(r'device:([A-Z]+:\d+)', dev.device)
    if match and dev.node_stats:
      names.add(match.group(1))
  return value, names


def part_towers(machine, sz):
  """Part 2: the same training on 1 device and as 2 towers on 2 devices; losses compared."""
  batch = random_batch(sz.tower_batch)
  towers = {n: machine.towers(n) for n in (1, 2)}  # n: (devices, session config)
  models, sessions, losses, used = {}, {}, {}, {}
  try:
    for n, (devices, config) in towers.items():
      models[n] = build_ours(sz, batch, devices)
      sessions[n] = open_session(models[n], config)
    # The 1-device run's initial weights (and zero momentum), matched by name and order.
    train_throughput.copy_weights(sessions[1], models[1], sessions[2], models[2])
    for n, sess in sessions.items():
      fetches = [models[n].train_op, models[n].loss]
      (_, first), used[n] = devices_run(sess, fetches)
      losses[n] = [first] + [sess.run(fetches)[1] for _ in range(sz.tower_steps - 1)]
  finally:
    for sess in sessions.values():
      sess.close()
  rel = max(abs(b - a) / abs(a) for a, b in zip(losses[1], losses[2]))
  want = set(d.split('/')[-1].upper() for d in towers[2][0])  # e.g. {'GPU:0', 'GPU:1'}
  placed = want <= used[2]
  ok = rel <= LOSS_TOL and placed and all(np.isfinite(losses[1] + losses[2]))
  kind = 'logical GPUs' if machine.gpu else 'virtual CPU devices'
  result = ('ResNet-%d, global batch %d, %d momentum steps from the same weights; loss '
            '1 device: %s; 2 towers on 2 %s: %s; ops ran on %s'
            % (6 * sz.units + 2, sz.tower_batch, sz.tower_steps,
               ' '.join('%.4f' % v for v in losses[1]), kind,
               ' '.join('%.4f' % v for v in losses[2]), ', '.join(sorted(used[2]))))
  verdict = '%s: max relative loss difference %.3f %% (tolerance %g %%)%s' % (
      'PASS' if ok else 'FAIL', 100 * rel, 100 * LOSS_TOL,
      '' if placed else '; tower devices %s not all used' % ', '.join(sorted(want)))
  return [Row('2. towers: loss 1 vs 2 devices', result, verdict, ok)]


def interleaved(runs, sz):
  """Times `runs` ({name: fn doing sz.steps training steps}) in sz.blocks rotated rounds
  after sz.warmup untimed calls each; returns {name: timing.Samples}."""
  for fn in runs.values():
    timing.warm_up(fn, sz.warmup)
  samples = {name: timing.Samples() for name in runs}
  for block in range(sz.blocks):
    for name in timing.rotated(list(runs), block):
      samples[name].add(*timing.time_calls(runs[name], 1))
  return samples


def step_fn(sess, model, steps):
  """A call that runs `steps` training steps of `model`."""
  def run():
    for _ in range(steps):
      sess.run(model.train_op)
  return run


def part_keras(machine, sz):
  """Part 3: training images/s of ours against Keras model.fit, same network, device, batch.

  Timed as train_throughput.py does: each Keras fit epoch (sz.steps steps) is one block and
  a block of ours runs at each epoch end (train_throughput.InterleavedFit); epoch 0 (tracing,
  XLA compilation where Keras turns it on) is not counted.
  """
  batch = random_batch(sz.batch)
  devices, config = machine.towers(1)
  ours = build_ours(sz, batch, devices)
  samples = {'ours': timing.Samples(), 'keras': timing.Samples()}
  sess = open_session(ours, config)  # not `with sess`: Keras must not see its graph
  try:
    run_ours = step_fn(sess, ours, sz.steps)

    def warm_up():
      timing.warm_up(run_ours, sz.warmup)

    def block(_):
      samples['ours'].add(*timing.time_calls(run_ours, 1))

    with tf.device(devices[0]):
      hps = resnet_model.default_hparams(num_residual_units=sz.units)
      model, _ = keras_resnet.build(sz.units, dataset_input.image_shape(SPEC), SPEC.num_classes,
                                    hps.relu_leakiness, hps.weight_decay_rate)
      keras_resnet.compile_for_training(model, hps.lrn_rate)
      data = tf.data.Dataset.from_tensors(batch).repeat()
      model.fit(data, epochs=sz.blocks + 1, steps_per_epoch=sz.steps, verbose=0,
                shuffle=False, callbacks=[train_throughput.InterleavedFit(
                    samples['keras'], warm_up, block)])
  finally:
    sess.close()
  images = sz.steps * sz.batch
  ours_rate, keras_rate = (samples[k].median_rate(images) for k in ('ours', 'keras'))
  result = ('ResNet-%d, batch %d on %s, median of %d blocks of %d steps: ours %.0f images/s, '
            'Keras %s model.fit (jit_compile=%s) %.0f images/s'
            % (6 * sz.units + 2, sz.batch, devices[0], sz.blocks, sz.steps, ours_rate,
               keras_resnet.keras.__version__, model.jit_compile, keras_rate))
  return [info('3. training: ours vs Keras fit', result,
               'ours/Keras %.2fx' % (ours_rate / keras_rate))]


def part_precision(machine, sz):
  """Part 4: training images/s of our graph in fp32 and mixed precision, timed interleaved."""
  modes = ['fp32', 'mixed_float16', 'mixed_bfloat16'] if machine.gpu else [
      'fp32', 'mixed_bfloat16']
  batch = random_batch(sz.batch)
  devices, config = machine.towers(1)
  models = {mode: build_ours(sz, batch, devices, mode) for mode in modes}
  sessions = {mode: open_session(model, config) for mode, model in models.items()}
  try:
    samples = interleaved({mode: step_fn(sessions[mode], models[mode], sz.steps)
                           for mode in modes}, sz)
    finite = all(np.isfinite(sessions[m].run(models[m].loss)) for m in modes)
  finally:
    for sess in sessions.values():
      sess.close()
  rate = {mode: samples[mode].median_rate(sz.steps * sz.batch) for mode in modes}
  result = ('ResNet-%d, batch %d on %s, median of %d interleaved blocks of %d steps: %s%s'
            % (6 * sz.units + 2, sz.batch, devices[0], sz.blocks, sz.steps,
               ', '.join('%s %.0f images/s' % (m, rate[m]) for m in modes),
               '' if machine.gpu else '; mixed_float16 skipped (emulated on CPUs, very slow)'))
  verdict = ', '.join('%s %.2fx fp32' % (m, rate[m] / rate['fp32']) for m in modes[1:])
  return [Row('4. training: fp32 vs mixed precision', result,
              verdict + ('' if finite else '; NON-FINITE loss'), finite)]


# ---------------------------------------------------------------------------- attacks
def part_attacks(machine, sz):
  """Part 5: adversarial examples/s of FGSM, BIM and C&W at two batch sizes.

  An untrained ResNet (random initial weights; eval-mode BN with the initial moving
  statistics): the cost of these attacks does not depend on the weights. C&W runs exactly
  sz.cw_iterations Adam iterations and 1 binary-search step (abort early off), so its cost is
  bounded and the same at every batch size. Every measurement is one untimed warm-up run on
  the full batch (graph optimization, kernel autotuning), then the median of
  sz.attack_repeats timed runs.
  """
  hps = resnet_model.default_hparams(num_residual_units=sz.units)
  shape, k = dataset_input.image_shape(SPEC), SPEC.num_classes
  pool = (dataset_input.digits_arrays()[2] - 0.5)[..., None].astype(np.float32)
  devices, config = machine.towers(1)
  graph = tf.Graph()
  with graph.as_default(), tf.device(devices[0]):
    tf1.set_random_seed(0)
    logits_fn = resnet_model.make_logits_fn(hps)
    x = tf1.placeholder(tf.float32, [None] + list(shape))
    predictions = tf.argmax(logits_fn(x), 1)
    ops = {'FGSM': attacks.fgsm(logits_fn, x, sz.eps),
           'BIM': attacks.bim(logits_fn, x, sz.eps, nb_iter=sz.bim_iter)}
    sess = tf1.Session(graph=graph, config=config)
    sess.run(tf1.global_variables_initializer())
    cws = {n: attacks.CarliniWagnerL2(sess, logits_fn, shape, n, max_iterations=sz.cw_iterations,
                                      binary_search_steps=1, abort_early=False, num_classes=k)
           for n in sz.attack_batches}
  rng = np.random.RandomState(0)
  rates = collections.defaultdict(dict)
  with sess:
    for n in sz.attack_batches:
      images = attack_throughput.images_of(pool, n)
      targets = np.eye(k, dtype=np.float32)[
          (sess.run(predictions, {x: images}) + rng.randint(1, k, n)) % k]
      calls = {name: functools.partial(sess.run, op, {x: images}) for name, op in ops.items()}
      calls['C&W'] = functools.partial(cws[n].attack, images, targets)
      for name, call in calls.items():
        timing.warm_up(call)
        samples = timing.Samples()
        for _ in range(sz.attack_repeats):
          samples.add(*timing.time_calls(call, 1))
        rates[name][n] = samples.median_rate(n)
  small, large = sz.attack_batches
  what = {'FGSM': '1 step, eps %g' % sz.eps, 'BIM': '%d steps, eps %g' % (sz.bim_iter, sz.eps),
          'C&W': 'L2, %d iterations x 1 binary-search step' % sz.cw_iterations}
  rows = []
  for name in ('FGSM', 'BIM', 'C&W'):
    result = ('%s on untrained ResNet-%d, %s: batch %d %.1f adv/s, batch %d %.1f adv/s'
              % (name, 6 * sz.units + 2, what[name], small, rates[name][small], large,
                 rates[name][large]))
    rows.append(info('5. attack: %s' % name, result, 'batch %d/%d %.2fx' % (
        large, small, rates[name][large] / rates[name][small])))
  return rows


# ---------------------------------------------------------------------------- reproduce
def part_reproduce(machine, timeout):
  """Part 6: `reproduce.py --tiny` end to end in a subprocess; its wall time and RESULTS.md."""
  out = tempfile.mkdtemp(prefix='gpu_check_reproduce_')
  cmd = [sys.executable, os.path.join(REPO, 'reproduce.py'), '--tiny', '--out_dir=%s' % out]
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    output, status = proc.stdout, 'exit %d' % proc.returncode
  except subprocess.TimeoutExpired as e:
    output = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
    status = 'killed at the %d s limit' % timeout
  wall = time.perf_counter() - start
  path = os.path.join(out, 'RESULTS.md')
  text = open(path).read() if os.path.exists(path) else ''
  tables = [t for t in ('## Table 1', '## Table 2', '## Table 3') if t in text]
  ok = status == 'exit 0' and len(tables) == 3
  result = '`%s` (%s): %s in %.0f s; RESULTS.md %s' % (
      ' '.join(['python', 'reproduce.py'] + cmd[2:]), 'on the GPU' if machine.gpu else
      'on the CPU', status, wall, 'with Tables 1-3' if ok else
      'missing' if not text else 'has only %s' % (', '.join(tables) or 'no table'))
  if ok:
    shutil.rmtree(out, ignore_errors=True)
  else:
    tail = '\n'.join(output.splitlines()[-40:])
    print('reproduce.py failed (%s); its output is kept in %s; last lines:\n%s'
          % (status, out, tail))
  return [Row('6. reproduce.py --tiny', result, '%s: %.0f s' % ('PASS' if ok else 'FAIL', wall),
              ok)]


# ---------------------------------------------------------------------------- report
def run_part(number, title, fn):
  """fn() -> rows, or one 'FAILED: <one line>' row when it raises (traceback on stderr)."""
  print('[part %d] %s ...' % (number, title), flush=True)
  start = time.perf_counter()
  try:
    rows = fn()
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    line = ('%s: %s' % (type(e).__name__, e)).strip().splitlines()[0][:300]
    rows = [Row('%d. %s' % (number, title), 'FAILED: %s' % line, 'FAILED', False)]
  print('[part %d] done in %.1f s' % (number, time.perf_counter() - start), flush=True)
  return rows


def cell(text):
  return str(text).replace('|', '/').replace('\n', ' ')


def render(rows, device):
  """The Markdown table; its header line names the device and the date (UTC)."""
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  lines = ['| check (%s, %s) | result | figure / verdict |' % (cell(device), date),
           '|---|---|---|']
  lines += ['| %s | %s | %s |' % tuple(cell(c) for c in row[:3]) for row in rows]
  return '\n'.join(lines) + '\n'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.gpu_check',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='gpu_check.md', help='the table, written atomically')
  parser.add_argument('--smoke', action='store_true',
                      help='shrink every size (ResNet-8, a few steps, small batches)')
  parser.add_argument('--skip_reproduce', action='store_true', help='skip part 6')
  parser.add_argument('--reproduce_timeout', type=int, default=330,
                      help='seconds before reproduce.py --tiny counts as failed')
  parser.add_argument('--gpu_memory_mb', type=int, default=0,
                      help='memory of each of the 2 logical GPUs (default: 40 %% of the '
                      'GPU, at most 16384)')
  parser.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                      help='override one size: %s' % ', '.join(sorted(FULL)))
  args = parser.parse_args(argv)
  sizes = dict(SMOKE if args.smoke else FULL)
  for item in args.set:
    name, _, value = item.partition('=')
    if name not in sizes:
      parser.error('--set %s: unknown size; choose from %s' % (item, ', '.join(sorted(FULL))))
    kind = type(FULL[name])
    try:
      sizes[name] = (tuple(int(v) for v in value.split(',')) if kind is tuple else kind(value))
    except ValueError:
      parser.error('--set %s: expected %s' % (item, 'integers, comma-separated'
                                              if kind is tuple else 'a number'))
  if len(sizes['attack_batches']) != 2:
    parser.error('attack_batches takes two batch sizes, e.g. 100,1000')
  args.sizes = collections.namedtuple('Sizes', sorted(sizes))(**sizes)
  return args


def main(argv=None):
  args = parse_args(argv)
  machine = Machine(args.gpu_memory_mb)  # first: splits the GPU before anything uses it
  sz = args.sizes
  parts = [('device and driver', lambda: part_device(machine)),
           ('towers, 1 vs 2 devices', lambda: part_towers(machine, sz)),
           ('ours vs Keras fit', lambda: part_keras(machine, sz)),
           ('fp32 vs mixed precision', lambda: part_precision(machine, sz)),
           ('attack throughput', lambda: part_attacks(machine, sz))]
  if not args.skip_reproduce:
    parts.append(('reproduce.py --tiny', lambda: part_reproduce(machine,
                                                                args.reproduce_timeout)))
  rows = []
  for number, (title, fn) in enumerate(parts, start=1):
    rows += run_part(number, title, fn)
  table = render(rows, machine.name())
  print()
  print(table)
  io_utils.atomic_write_text(args.out, table)
  print('wrote %s' % args.out)
  failed = [row.check for row in rows if not row.ok]
  if failed:
    print('failed: %s' % ', '.join(failed))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
