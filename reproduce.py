"""One command reproduces the paper: train CE and RCE, attack, detect, report in RESULTS.md.

  python reproduce.py            # digits preset: bundled data, 2-core CPU, ~8 minutes
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
import collections
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from rce.tables import attack_names
from rce.tables import dataset_table
from rce.results import io_utils
from rce.reports import report_tables

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
        jsma_max_iter=20, eps_round=2, tsne=('fgsm',), digits_only=False,
        note='CI smoke run: ResNet-8, 60 training steps, 40 attacked images, C&W runs capped '
             'at 20 iterations and 2 binary-search steps, JSMA 20 pixels (the original: 100); '
             'numbers are not meaningful, only complete.'),
    'digits': dict(
        units=1, steps=dict(mnist=1000, cifar10=1000, cifar100=1000), lr_decay=(0.6, 0.85),
        checkpoint_steps=500, attack_batches=1, attack_batch_size=200, kernel_batches=15,
        cw=dict(iterations=100, search=5, batch=100), jsma_max_iter=100, eps_round=1,
        tsne=('fgsm', 'carliniL2'), digits_only=True,
        note='bundled digits data (scikit-learn\'s 8x8 digits upsampled to 28x28), ResNet-8 '
             '(num_residual_units=1), 1000 steps with the learning rate 0.1 / 0.01 / 0.001 '
             'from 60 % / 85 % of them, 200 attacked images, C&W runs capped at 100 '
             'iterations and 5 binary-search steps, detection at eps round 1 (eps 0.02): on '
             'this small, easy data set every attack succeeds from eps 0.1 on and K-density\'s '
             'AUC saturates near 1 for CE and RCE alike, so only the small-eps rounds show '
             'a difference.'),
    'small': dict(
        units=2, steps=dict(mnist=3000, cifar10=3000, cifar100=3000), lr_decay=(0.6, 0.85),
        checkpoint_steps=500, attack_batches=5, attack_batch_size=200, kernel_batches=200,
        cw=dict(iterations=100, search=5, batch=100), jsma_max_iter=100, eps_round=8,
        tsne=('fgsm', 'carliniL2'), digits_only=False,
        note='real data on a CPU: ResNet-14 (num_residual_units=2), 3000 steps with the '
             'learning rate 0.1 / 0.01 / 0.001 from 60 % / 85 % of them, kernel points from '
             'the first 20000 training images, 1000 attacked images, C&W runs capped at 100 '
             'iterations and 5 binary-search steps, eps round 8 (0.16).'),
    'full': dict(
        units=5, steps=dict(mnist=20000, cifar10=90000, cifar100=90000), lr_decay=None,
        checkpoint_steps=2500,
        attack_batches=5, attack_batch_size=200, kernel_batches=500,
        cw=dict(iterations=None, search=None, batch=100), jsma_max_iter=100, eps_round=8,
        tsne=('fgsm', 'carliniL2'), digits_only=False,
        note="the paper's settings: ResNet-32, 20000 (mnist) / 90000 (cifar) steps with the "
             "paper's learning-rate schedule, clean error on all test images, kernel points "
             'from the first 50000 training images, 1000 attacked images, the original\'s C&W '
             'settings (abort early per example) and a C&W row at Carlini\'s own defaults '
             '(9 x 10000 iterations: the original\'s 9 x 10 finds no adversarial example on '
             'real MNIST), eps round 8 (0.16).'),
}


class StageError(RuntimeError):
  pass


# A stage of the graph: `make()` gives (cmd, inputs, output, prepare) once `deps` are done.
# `seed`: the replica the stage belongs to (None: shared by all, the data).
Stage = collections.namedtuple('Stage', ['name', 'deps', 'make', 'seed'])
# One replica of the whole pipeline (--seeds): seed 0 keeps the single-seed layout and stage
# names, seed N > 0 lives in {out}/seed_N/ and its stage names end with _seedN.
Replica = collections.namedtuple('Replica', ['seed', 'suffix', 'root', 'results'])


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
    self.replicas = []
    for seed in range(args.seeds):
      root = os.path.join(self.out, 'seed_%d' % seed) if seed else self.out
      self.replicas.append(Replica(seed, '_seed%d' % seed if seed else '', root,
                                   os.path.join(root, 'results')))
      io_utils.makedirs(self.replicas[-1].results)
    self.state = {}
    if os.path.exists(self.state_path):
      with open(self.state_path) as f:
        self.state = json.load(f)
    self.stages = []  # the stage graph, in declaration (report) order
    self.jobs, self.gpus = args.jobs, args.gpus
    self.earlier_wall = {n: r['wall_s'] for n, r in self.state.items() if 'wall_s' in r}
    self.data_ids = {}
    self.data_dir = None
    self.data_paths = {}

  # -- stage plumbing
  @staticmethod
  def _identity(output):
    """The stage output's identity, or None when it is missing, incomplete or corrupt."""
    from rce.results import result_files  # pylint: disable=g-import-not-at-top
    try:
      return _as_json(output())
    except (result_files.ResultsError, ValueError, KeyError, OSError):
      return None

  def add(self, name, deps, make, rep=None):
    """Declares a stage: it starts once every stage of `deps` is done.

    `make()` is called then, and returns (cmd, inputs, output, prepare): the command
    (sys.executable, script, flags...), the JSON-able identities of what it reads (with the
    command: its key), a callable giving the identity of its output (None if missing or
    incomplete) and a callable run just before the command (or None). `rep`: the Replica
    the stage belongs to (None: shared).
    """
    self.stages.append(Stage(name, tuple(deps), make, None if rep is None else rep.seed))
    return name

  def _start(self, name, spec, slot):
    """Starts a stage's command, or returns None when it can be skipped."""
    cmd, inputs, output, prepare = spec
    display = ' '.join(shlex.quote(c) for c in ['python'] + cmd[1:])
    key = _as_json({'command': display, 'inputs': inputs})
    record = self.state.get(name)
    if record and record.get('key') == key and self._identity(output) == record['output']:
      print('[skip] %s (complete, inputs unchanged)' % name, flush=True)
      record['skipped'] = True
      return None
    if record:
      why = 'its inputs changed' if record.get('key') != key else 'its output is gone or changed'
      print('[redo] %s: %s since it last ran' % (name, why), flush=True)
    if prepare:
      prepare()
    print('[run ] %s: %s' % (name, display), flush=True)
    self.state.pop(name, None)
    io_utils.atomic_write_json(self.state_path, self.state)
    log_path = os.path.join(self.out, 'logs', name + '.log')
    log = open(log_path, 'w')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.results,
                            env=self._stage_env(name, slot), preexec_fn=_die_with_parent)
    return dict(proc=proc, log=log, log_path=log_path, start=time.time(), display=display,
                key=key, output=output, slot=slot)

  def _stage_env(self, name, slot):
    """The environment of a stage: with several jobs, its share of the machine.

    On GPUs each stage but training sees one GPU (CUDA_VISIBLE_DEVICES; training keeps
    them all for its towers); on the CPU each stage but training gets cores / jobs
    TensorFlow threads. Training keeps TensorFlow's default threads even when it shares the
    cores: its float reductions are split by thread, and over thousands of steps a different
    split gives different weights, so --jobs would change the models and every table.
    """
    env = dict(os.environ)
    training = name.startswith('train_')
    if self.jobs > 1 and not training:
      if self.gpus:
        env['CUDA_VISIBLE_DEVICES'] = str(slot % self.gpus)
      else:
        env['TF_NUM_INTRAOP_THREADS'] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        env['TF_NUM_INTEROP_THREADS'] = '1'
    return env

  def _finish(self, name, run):
    """Records a finished stage; StageError if it failed or its output is incomplete."""
    run['log'].close()
    rc, wall = run['proc'].returncode, time.time() - run['start']
    identity = self._identity(run['output']) if rc == 0 else None
    with open(run['log_path']) as f:
      text = f.read()
    if identity is None:
      raise StageError('stage %s failed (exit %d%s); log %s:\n%s' % (
          name, rc, ', output incomplete' if rc == 0 else '', run['log_path'],
          ''.join(text.splitlines(True)[-15:])))
    self.state[name] = {'command': run['display'], 'key': run['key'], 'output': identity,
                        'wall_s': round(wall, 1), 'output_tail': text[-2000:]}
    io_utils.atomic_write_json(self.state_path, self.state)
    print('[done] %s in %.1f s' % (name, wall), flush=True)

  def _progress(self, done, running, pending):
    """One line: stages done, running and left, and an ETA from earlier runs' stage times."""
    left = [s.name for s in pending] + list(running)
    known = [self.earlier_wall[n] for n in left if n in self.earlier_wall]
    if not left:
      eta = ''
    elif len(known) == len(left):
      eta = '; ETA about %.0f s (from earlier runs\' stage times)' % (sum(known) / self.jobs)
    else:
      eta = '; ETA unknown'
    print('[....] %d of %d stages done, running: %s%s' % (
        len(done), len(self.stages), ', '.join(running) or '-', eta), flush=True)

  def execute(self):
    """Runs the declared stages, up to --jobs at once, each when its dependencies are done.

    Stopping the driver (or a failed stage) stops every running stage.
    """
    pending, running, done = list(self.stages), {}, set()
    slots = list(range(self.jobs))
    report = False
    try:
      while pending or running:
        started = True
        while started:  # start (or skip) every stage that is ready, up to --jobs running
          started = False
          for stage in list(pending):
            if len(running) >= self.jobs:
              break
            if not all(d in done for d in stage.deps):
              continue
            pending.remove(stage)
            run = self._start(stage.name, stage.make(), slots[0])
            started = True
            if run is None:
              done.add(stage.name)
            else:
              running[stage.name] = run
              slots.pop(0)
        if report:  # after a stage finished and its successors started
          self._progress(done, running, pending)
          report = False
        if not running:
          if pending:
            raise StageError('stages %s wait on stages that are not declared'
                             % ', '.join(s.name for s in pending))
          break
        finished = [n for n, r in running.items() if r['proc'].poll() is not None]
        if not finished:
          time.sleep(0.1)
          continue
        for name in finished:
          run = running.pop(name)
          slots.append(run['slot'])
          self._finish(name, run)
          done.add(name)
        report = True
      if report:
        self._progress(done, running, pending)
    except BaseException:  # a failed stage, Ctrl-C or SIGTERM: stop every running stage
      for run in running.values():
        _stop(run['proc'])
        run['log'].close()
      raise

  def outputs(self, *names):
    """{stage: output identity} of finished upstream stages: a downstream stage's inputs."""
    return {n: self.state[n]['output'] for n in names}

  def script(self, name, *flags):
    return [sys.executable, os.path.join(HERE, name)] + list(flags)

  # -- the pipeline
  def data(self):
    """Declares the digits conversion when it is needed; returns the data patterns."""
    args = self.args
    spec = dataset_table.get_spec(args.dataset)
    if args.preset in ('tiny', 'digits') and args.dataset == 'mnist' and not args.data_dir:
      data_dir = os.path.join(self.out, 'digits_dataset')
      paths = [os.path.join(data_dir, n) for n in (spec.train_files, spec.test_file)]
      self.add('data', (), lambda: (
          self.script('dataset_input.py', '--convert=digits', '--out_dir=%s' % data_dir), {},
          lambda: [io_utils.sha256_file(p) for p in paths], None))
    else:
      data_dir = os.path.abspath(args.data_dir or '%s_dataset' % args.dataset)
    self.data_dir = data_dir
    return os.path.join(data_dir, spec.train_files), os.path.join(data_dir, spec.test_file)

  def data_id(self, part, pattern):
    """The checksums of the data files of `pattern` ('train' or 'test'), computed once."""
    from rce.results import provenance  # pylint: disable=g-import-not-at-top
    if part not in self.data_ids:
      files = _data_files(pattern)
      if not files:
        raise StageError('no data file matches %s (--data_dir=%s)' % (pattern, self.data_dir))
      self.data_ids[part] = provenance.data_identity(provenance.data_record(files))
    return self.data_ids[part]

  def model_flags(self, rce, rep):
    flags = ['--dataset=%s' % self.args.dataset, '--num_gpus=%d' % self.args.num_gpus,
             '--num_residual_units=%d' % self.preset['units'], '--RCE_train=%s' % rce,
             '--log_root=%s' % self.log_root(rce, rep)]
    return flags + (['--seed=%d' % rep.seed] if rep.seed else [])

  def log_root(self, rce, rep):
    return os.path.join(rep.root, 'models_%s' % self.args.dataset, 'RCE' if rce else 'CE')

  def _data_deps(self):
    return ('data',) if any(s.name == 'data' for s in self.stages) else ()

  def train(self, rce, rep, train_path, test_path):
    from rce.model import checkpoints  # pylint: disable=g-import-not-at-top
    steps = self.args.steps or self.preset['steps'][self.args.dataset]
    name = 'train_%s%s' % ('RCE' if rce else 'CE', rep.suffix)
    log_root = self.log_root(rce, rep)
    flags = ['--train_data_path=%s' % train_path,
             '--train_dir=%s' % os.path.join(log_root, 'train'), '--mode=train',
             '--Optimizer=mom', '--checkpoint_steps=%d' % self.preset['checkpoint_steps'],
             '--test_every_steps=%d' % self.preset['checkpoint_steps']
             ] + self.model_flags(rce, rep)
    if self.args.precision != 'fp32':
      flags.append('--precision=%s' % self.args.precision)
    if self.preset['lr_decay']:
      boundaries = [max(1, int(round(f * steps))) for f in self.preset['lr_decay']]
      flags += ['--lr_boundaries=%s' % ','.join(str(b) for b in boundaries),
                '--lr_values=0.1,0.01,0.001']
    lineage_path = os.path.join(log_root, 'lineage.json')

    def output():
      ckpt = checkpoints.latest_checkpoint(log_root)
      info = checkpoints.inspect(ckpt) if ckpt else None
      if info is None or info.step != steps or info.nonfinite:
        return None
      return {'step': info.step, 'fingerprint': info.fingerprint}

    def make():
      data = {'train': self.data_id('train', train_path), 'test': self.data_id('test', test_path)}
      # What the checkpoints in log_root depend on, besides how far they went.
      lineage = _as_json({'flags': flags, 'data': data})

      def prepare():
        """Training resumes from the checkpoints in log_root only if they are on its way:
        made with these flags and data (lineage.json) and not past the steps asked for."""
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

      return (self.script('train.py', '--total_steps=%d' % steps, *flags), {'data': data},
              output, prepare)

    return self.add(name, self._data_deps(), make, rep)

  def eval_dir(self, rce, rep):
    return os.path.join(self.log_root(rce, rep), 'eval')

  def test_nor(self, rce, rep, test_path):
    from rce.results import result_files  # pylint: disable=g-import-not-at-top
    model = 'RCE' if rce else 'CE'
    eval_dir = self.eval_dir(rce, rep)
    train = 'train_%s%s' % (model, rep.suffix)
    return self.add('test_nor_%s%s' % (model, rep.suffix), (train,), lambda: (self.script(
        'test_nor.py', '--eval_data_path=%s' % test_path, '--eval_dir=%s' % eval_dir,
        '--mode=eval', '--eval_once',
        '--eval_batch_count=%d' % (100 if self.args.preset == 'full' else 50),
        *self.model_flags(rce, rep)),
                    dict(self.outputs(train), data=self.data_id('test', test_path)),
                    lambda: result_files.run_id(result_files.load_verified_summary(
                        eval_dir, result_files.CLEAN_RESULT)), None), rep)

  def attack_flags(self, attack, rep):
    """The preset's attack flags; C&W runs keep the original's settings, only capped (never
    raised) by the preset's iterations and binary-search steps, and run at the preset's batch
    on a CPU, on a GPU at test_adv.py's device default, all images at once (results do not
    depend on the batch)."""
    p = self.preset
    flags = ['--results_dir=%s' % rep.results, '--eval_batch_count=%d' % p['attack_batches'],
             '--attack_batch_size=%d' % p['attack_batch_size'],
             '--jsma_max_iter=%d' % p['jsma_max_iter']]
    stages = attack_names.info(attack).cw_stages
    if stages:
      if not self.args.gpus:
        flags.append('--cw_batch_size=%d' % p['cw']['batch'])
      cap = p['cw']['iterations']
      if cap and cap < max(s.max_iterations for s in stages):
        flags.append('--cw_max_iterations=%d' % cap)
      cap = p['cw']['search']
      if cap and cap < min(s.binary_search_steps for s in stages):
        flags.append('--cw_binary_search_steps=%d' % cap)
    return flags

  def attack(self, attack, rce, rep, test_path):
    from rce.results import result_files  # pylint: disable=g-import-not-at-top
    model = 'RCE' if rce else 'CE'
    directory = result_files.attack_dir(attack, self.args.dataset, rce,
                                        results_dir=rep.results)
    flags = [] if attack != 'jsma' else ['--eps=%g' % (0.02 * self.preset['eps_round'])]
    upstream = ['train_%s%s' % (model, rep.suffix)]
    if attack_names.info(attack).white_box:
      upstream.append('kernel_para_%s%s' % (model, rep.suffix))
    return self.add('attack_%s_%s%s' % (attack, model, rep.suffix), upstream, lambda: (
        self.script('test_adv.py', '--eval_data_path=%s' % test_path, '--Optimizer=mom',
                    '--mode=attack', '--attack_method=%s' % attack,
                    *(self.model_flags(rce, rep) + self.attack_flags(attack, rep) + flags)),
        dict(self.outputs(*upstream), data=self.data_id('test', test_path)),
        lambda: result_files.run_id(result_files.load_verified_summary(directory)), None), rep)

  def kernel_para(self, rce, rep, train_path):
    from rce.results import result_files  # pylint: disable=g-import-not-at-top
    model = 'RCE' if rce else 'CE'
    directory = result_files.kernel_dir(self.args.dataset, rep.results)
    train = 'train_%s%s' % (model, rep.suffix)
    return self.add('kernel_para_%s%s' % (model, rep.suffix), (train,), lambda: (self.script(
        'test_adv.py', '--train_data_path=%s' % train_path, '--mode=kernel_para',
        '--results_dir=%s' % rep.results,
        '--eval_batch_count=%d' % self.preset['kernel_batches'], *self.model_flags(rce, rep)),
                    dict(self.outputs(train), data=self.data_id('train', train_path)),
                    lambda: result_files.run_id(result_files.load_verified_summary(
                        directory, result_files.kernel_summary_name(rce))), None), rep)

  def characteristics(self, rce, rep, upstream):
    """LID and Mahalanobis characteristics of every attack folder of one model."""
    from rce.results import result_files  # pylint: disable=g-import-not-at-top
    model = 'RCE' if rce else 'CE'

    def output():
      found = result_files.find_attacks(rep.results, self.args.dataset, (model,))
      return {attack: result_files.run_id(result_files.load_verified_summary(
          result_files.characteristics_dir(dirs[model])))
              for attack, dirs in sorted(found.items())}

    return self.add('characteristics_%s%s' % (model, rep.suffix), upstream, lambda: (
        self.script('test_adv.py', '--mode=characteristics', '--results_dir=%s' % rep.results,
                    '--eps_round=%d' % self.preset['eps_round'], *self.model_flags(rce, rep)),
        self.outputs(*upstream), output, None), rep)

  def detect_dir(self, rep):
    return os.path.join(rep.results, 'detect_%s' % self.args.dataset)

  def detect(self, rep, upstream):
    from rce.results import result_files  # pylint: disable=g-import-not-at-top
    directory = self.detect_dir(rep)
    return self.add('detect%s' % rep.suffix, upstream, lambda: (self.script(
        'test_adv.py', '--mode=detect', '--dataset=%s' % self.args.dataset,
        '--results_dir=%s' % rep.results, '--eps_round=%d' % self.preset['eps_round']),
                    self.outputs(*upstream),
                    lambda: result_files.run_id(result_files.load_verified_summary(directory)),
                    None), rep)

  def tsne(self, attack, rep):
    out = os.path.join(self.detect_dir(rep), 'tsne_%s.png' % attack)
    upstream = ('attack_%s_CE%s' % (attack, rep.suffix), 'attack_%s_RCE%s' % (attack, rep.suffix))
    self.add('tsne_%s%s' % (attack, rep.suffix), upstream, lambda: (self.script(
        't_sne.py', '--dataset=%s' % self.args.dataset, '--attack_method=%s' % attack,
        '--results_dir=%s' % rep.results, '--eps_round=%d' % self.preset['eps_round'],
        '--tsne_out=%s' % out) + (['--seed=%d' % rep.seed] if rep.seed else []),
                                                   self.outputs(*upstream),
                                                   lambda: io_utils.sha256_file(out), None),
             rep)

  def replica(self, rep, train_path, test_path):
    """Declares one replica's stages: train, test_nor, attacks, kernels, C&W-wb, detect."""
    for rce in (False, True):
      self.train(rce, rep, train_path, test_path)
      self.test_nor(rce, rep, test_path)
    attack_stages = [self.attack(attack, rce, rep, test_path)
                     for attack in attack_names.paper_attacks(full=self.args.preset == 'full')
                     for rce in (False, True)]
    kernels = [self.kernel_para(rce, rep, train_path) for rce in (False, True)]
    attack_stages += [self.attack(attack, rce, rep, test_path)
                      for attack in attack_names.paper_attacks(white_box=True)
                      for rce in (False, True)]
    chars = [self.characteristics(rce, rep, [s for s in attack_stages + kernels
                                             if s.endswith(('_RCE' if rce else '_CE')
                                                           + rep.suffix)])
             for rce in (False, True)]
    self.detect(rep, attack_stages + kernels + chars)
    if rep.seed == 0:  # the t-SNE figures illustrate; one replica draws them
      for attack in self.preset['tsne']:
        self.tsne(attack, rep)

  def plan(self):
    """Declares the stage graph of every replica (nothing runs); returns the stages."""
    train_path, test_path = self.data()
    self.data_paths = {'train': train_path, 'test': test_path}
    for rep in self.replicas:
      self.replica(rep, train_path, test_path)
    return self.stages

  def pipeline(self):
    """Declares the stage graph of every replica, runs it (up to --jobs stages at once),
    writes the report."""
    start = time.time()
    self.plan()
    self.execute()
    self.write_reports(time.time() - start)

  # -- the report
  def replica_tables(self, rep):
    """Tables 1-3 of one replica as report_tables.Table values (read from verified files)."""
    from rce.results import result_files  # pylint: disable=g-import-not-at-top
    table1 = report_tables.Table('Table 1', [
        ('test error', '%.2f %%'), ('images', '%d'), ('checkpoint step', '%d'),
        ('model fingerprint', '%s')], [])
    for rce in (False, True):
      clean = result_files.load_verified_summary(self.eval_dir(rce, rep),
                                                 result_files.CLEAN_RESULT)
      table1.rows.append(('RCE' if rce else 'CE', [
          100.0 * (1.0 - clean['precision']), clean['images'], clean['checkpoint_step'],
          clean['provenance']['model']['fingerprint'][:16]]))
    table1.notes.append(
        "Images: the first ones of the test file(s) %s, in file order (the original's "
        "test_nor.py used the first 5000)." % ', '.join(
            os.path.basename(d['path']) for d in clean['provenance']['data']))
    detect_dir = self.detect_dir(rep)
    result_files.load_verified_summary(detect_dir)  # table2.csv is one of its checked files
    with open(os.path.join(detect_dir, 'table2.csv')) as f:
      table2 = report_tables.table2_from_csv(f.read())
    table3 = report_tables.Table('Table 3', [
        ('ratio of f2(x*) > 0', '%.4f'), ("distortion (RMS, the paper's)", '%.4f'),
        ('mean L2 distortion', '%.4f'), ('examples counted', '%d'),
        ('target reached', '%.4f')], [])
    settings = []
    for rce in (False, True):
      directory = result_files.attack_dir('carliniL2_specific', self.args.dataset, rce,
                                          results_dir=rep.results)
      stats = result_files.load_verified_summary(directory)['attack_stats']
      model = 'RCE' if rce else 'CE'
      table3.rows.append((model, [stats['ratio_f2_positive'], stats['rms_distortion'],
                                  stats['mean_l2_distortion'], stats['table3_examples'],
                                  stats['target_reached_rate']]))
      settings.append('%s: %s' % (model, '; then '.join(
          '%(binary_search_steps)d x %(max_iterations)d iterations, c %(initial_const)g, '
          'confidence %(confidence)g' % s for s in stats['cw_settings'])))
    table3.notes.append(TABLE3_NOTE + ' C&W runs used: %s.' % ' | '.join(settings))
    tables = [table1, table2, table3]
    for name in ('Table 4', 'Table 5'):  # with characteristics (LID, Mahalanobis)
      path = os.path.join(detect_dir, '%s.csv' % name.replace(' ', '').lower())
      if os.path.exists(path):
        with open(path) as f:
          tables.append(report_tables.from_csv(name, f.read()))
    return tables

  def _header(self, total_wall, seeds):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    devices = ', '.join('%s' % d.name for d in tf.config.list_physical_devices())
    return [
        '# Reproduction of "Towards Robust Detection of Adversarial Examples" (RCE + K-density)',
        '', 'Preset **%s** on %s: %s' % (self.args.preset, self.args.dataset,
                                         self.preset['note']),
        '', 'Data: %s.' % self.data_note(),
        '', 'Seeds: %s. Training precision: %s (evaluation, attacks and detection: float32).'
        % (seeds, self.args.precision),
        '', 'TensorFlow %s; devices: %s; --num_gpus=%d; --jobs=%d; total wall time of this '
        'invocation %.0f s.' % (tf.__version__, devices, self.args.num_gpus, self.args.jobs,
                                total_wall)]

  def data_note(self):
    """The data actually used: each part's files and record counts (from their sizes)."""
    spec = dataset_table.get_spec(self.args.dataset)
    record = spec.record_values * spec.record_dtype.itemsize
    parts = []
    for part in ('train', 'test'):
      files = _data_files(self.data_paths[part])
      parts.append('%s %s (%d images)' % (part, ', '.join(files),
                                          sum(os.path.getsize(f) for f in files) // record))
    bundled = ' (the bundled digits, written by dataset_input.py --convert=digits)' if any(
        s.name == 'data' for s in self.stages) else ''
    return '%s%s' % ('; '.join(parts), bundled)

  def _stage_sections(self, stages):
    timing = ['| Stage | wall time (s) | |', '|---|---|---|']
    commands = []
    for stage in stages:
      record = self.state[stage.name]
      timing.append('| %s | %.1f | %s |' % (stage.name, record['wall_s'],
                                             'from an earlier run' if record.get('skipped')
                                             else ''))
      commands.append(record['command'])
    return (['', '## Wall time per stage', ''] + timing
            + ['', '## Commands run', '', '```'] + commands + ['```', ''])

  def replica_report(self, rep, tables, total_wall, report_dir):
    """One replica's RESULTS text: Tables 1-3, figures, its stages' times and commands."""
    table1, _, table3 = tables[:3]
    detect_dir = self.detect_dir(rep)
    with open(os.path.join(detect_dir, 'table2.md')) as f:
      table2 = f.read()  # with the thresholding test and the notes of detect
    supervised = []
    if os.path.exists(os.path.join(detect_dir, 'table4_5.md')):
      with open(os.path.join(detect_dir, 'table4_5.md')) as f:
        supervised = ['## %s' % TABLES_4_5, '', f.read()]
    images = sorted(n for n in os.listdir(detect_dir) if n.endswith('.png'))
    figures = ['![%s](%s)' % (n, os.path.relpath(os.path.join(detect_dir, n), report_dir))
               for n in images]
    stages = [s for s in self.stages if s.seed in (None, rep.seed)]
    return '\n'.join(
        self._header(total_wall, rep.seed)
        + ['', '## Table 1: clean test error', '', table1.markdown(),
           '', '## Table 2: ROC-AUC of detection', '', table2,
           '## Table 3: white-box attack on the K-density detector (C&W-wb)', '',
           table3.markdown()] + supervised + ['## Figures', '']
        + figures + self._stage_sections(stages))

  def write_reports(self, total_wall):
    """RESULTS.md; with several seeds, also each replica's RESULTS_seed{N}.md and
    per_seed.csv, and RESULTS.md gives every cell as mean +- s.d. over the seeds."""
    path = os.path.join(self.out, 'RESULTS.md')
    tables = [self.replica_tables(rep) for rep in self.replicas]
    if len(self.replicas) == 1:
      io_utils.atomic_write_text(path, self.replica_report(self.replicas[0], tables[0],
                                                           total_wall, self.out))
      print('wrote %s' % path)
      return
    for rep, rep_tables in zip(self.replicas, tables):
      io_utils.atomic_write_text(
          os.path.join(self.out, 'RESULTS_seed%d.md' % rep.seed),
          self.replica_report(rep, rep_tables, total_wall, self.out))
    seeds = [rep.seed for rep in self.replicas]
    io_utils.atomic_write_text(os.path.join(self.out, 'per_seed.csv'),
                               report_tables.per_seed_csv(seeds, tables))
    titles = {'Table 1': '## Table 1: clean test error',
              'Table 2': '## Table 2: ROC-AUC of detection',
              'Table 3': '## Table 3: white-box attack on the K-density detector (C&W-wb)',
              'Table 4': '## %s\n\n### Table 4: supervised, AUROC and detected at 5 %% FPR '
                         "(Lee et al.'s TNR at TPR 95 %%)" % TABLES_4_5,
              'Table 5': '### Table 5: unseen attacks (trained on FGSM), AUROC'}
    if len({tuple(t.name for t in per) for per in tables}) > 1:
      raise StageError('the replicas reported different tables: %s' % [
          [t.name for t in per] for per in tables])
    body = []
    for per_seed in zip(*tables):
      body += ['', titles[per_seed[0].name], '', report_tables.mean_sd_markdown(per_seed)]
    text = '\n'.join(
        self._header(total_wall, '%s (%d replicas of the whole pipeline)'
                     % (', '.join(map(str, seeds)), len(seeds)))
        + ['', 'Every numeric cell: mean ± standard deviation (n - 1) over the %d seeds; '
           'the per-seed values are in per_seed.csv and each replica\'s own report in '
           'RESULTS_seed{N}.md (with its figures and the thresholding test).' % len(seeds)]
        + body + self._stage_sections(self.stages))
    io_utils.atomic_write_text(path, text)
    print('wrote %s' % path)


TABLES_4_5 = 'Tables 4 and 5: LID and Mahalanobis next to K-density (supervised protocol)'
TABLE3_NOTE = (
    'Counted: the examples classified correctly when clean whose adversarial image is '
    'classified as its target (on the logits). Ratio of f2(x*) > 0: the fraction of them the '
    'K-density detector still flags (f2 = -log K-density of the target class + log of its '
    'training median; higher is better for the defense). Distortion (RMS): the mean over '
    'them of sqrt(mean((x - x*)^2)), the original\'s; mean L2: of ||x - x*||_2. n/c: no '
    'example counted.')


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
  if PRESETS[args.preset]['digits_only'] and (args.data_dir or args.dataset != 'mnist'):
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
  sys.exit(128 + signum)  # unwinds through Driver.run, which stops the running stage


def main(argv=None):
  sys.path.insert(0, HERE)
  args = parse_args(argv)
  for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, _exit_on_signal)
  try:
    Driver(args).pipeline()
  except (StageError, ValueError) as e:  # ValueError: e.g. a model folder's state file that
    sys.exit('error: %s' % e)             # names checkpoints elsewhere (CheckpointError)
  except OSError as e:
    sys.exit('error: %s' % io_utils.os_error_text(e))


if __name__ == '__main__':
  main()
