"""The paper's pipeline as data: the presets, and the stage graph of each replica.

Every stage is one of the README's commands (train.py, test_nor.py, test_adv.py, t_sne.py,
dataset_input.py) with the identities of what it reads and writes (rce.pipeline.scheduler
runs them). The graph of a replica: data -> train -> test_nor / kernel_para / attacks ->
C&W-wb -> characteristics -> detect, t-SNE. Stage names come from `stage_name` only.
"""
import collections
import glob
import json
import os
import shutil
import sys

from rce.pipeline import scheduler
from rce.results import io_utils
from rce.results import provenance
from rce.results import result_files
from rce.tables import attack_names
from rce.tables import dataset_table
from rce.tables import models
from rce.tables import perturbation

# Each preset says plainly how it departs from the paper's settings. `lr_decay`: the steps
# (as fractions of the run) where a short run divides its learning rate by 10; None keeps
# the data set's (the paper's) schedule.
PRESETS = {
    'tiny': dict(
        units=1, steps=dict(mnist=60, cifar10=60, cifar100=60), lr_decay=(0.6, 0.85),
        checkpoint_steps=30, attack_batches=1,
        attack_batch_size=40, kernel_batches=15, cw=dict(iterations=20, search=2, batch=40),
        jsma_max_iter=20, eps_round=2, tsne=('fgsm',), digits_only=False, adaptive=None,
        note='CI smoke run: ResNet-8, 60 training steps, 40 attacked images, C&W runs capped '
             'at 20 iterations and 2 binary-search steps, JSMA 20 pixels (the original: 100), '
             'no Table 6 (the adaptive attacks run from --digits on); numbers are not '
             'meaningful, only complete.'),
    'digits': dict(
        units=1, steps=dict(mnist=1000, cifar10=1000, cifar100=1000), lr_decay=(0.6, 0.85),
        checkpoint_steps=500, attack_batches=1, attack_batch_size=200, kernel_batches=15,
        cw=dict(iterations=100, search=5, batch=100), jsma_max_iter=100, eps_round=1,
        tsne=('fgsm', 'carliniL2'), digits_only=True,
        adaptive=dict(images=80, steps=20, restarts=1, lagrange_steps=3, calibration=79),
        note='bundled digits data (scikit-learn\'s 8x8 digits upsampled to 28x28), ResNet-8 '
             '(num_residual_units=1), 1000 steps with the learning rate 0.1 / 0.01 / 0.001 '
             'from 60 % / 85 % of them, 200 attacked images, C&W runs capped at 100 '
             'iterations and 5 binary-search steps, detection at eps round 1 (eps 0.02): on '
             'this small, easy data set every attack succeeds from eps 0.1 on and K-density\'s '
             'AUC saturates near 1 for CE and RCE alike, so only the small-eps rounds show '
             'a difference. Table 6: thresholds on the 79 test images after the 200 '
             'attacked ones (the supervised detectors are fitted on those 200), then 80 '
             'attacked images (the last test images), 20 PGD steps, 1 restart, 3 Lagrangian '
             'search rounds; the supervised detectors and the ensemble are attacked '
             'untargeted only.'),
    'small': dict(
        units=2, steps=dict(mnist=3000, cifar10=3000, cifar100=3000), lr_decay=(0.6, 0.85),
        checkpoint_steps=500, attack_batches=5, attack_batch_size=200, kernel_batches=200,
        cw=dict(iterations=100, search=5, batch=100), jsma_max_iter=100, eps_round=8,
        tsne=('fgsm', 'carliniL2'), digits_only=False,
        adaptive=dict(images=500, steps=100, restarts=2, lagrange_steps=5, calibration=1000),
        note='real data on a CPU: ResNet-14 (num_residual_units=2), 3000 steps with the '
             'learning rate 0.1 / 0.01 / 0.001 from 60 % / 85 % of them, kernel points from '
             'the first 20000 training images, 1000 attacked images, C&W runs capped at 100 '
             'iterations and 5 binary-search steps, eps round 8 (0.16); Table 6: 500 attacked '
             'images, 100 PGD steps, 2 restarts.'),
    'full': dict(
        units=5, steps=dict(mnist=20000, cifar10=90000, cifar100=90000), lr_decay=None,
        checkpoint_steps=2500,
        attack_batches=5, attack_batch_size=200, kernel_batches=500,
        cw=dict(iterations=None, search=None, batch=100), jsma_max_iter=100, eps_round=8,
        tsne=('fgsm', 'carliniL2'), digits_only=False,
        adaptive=dict(images=1000, steps=1000, restarts=10, lagrange_steps=5,
                      calibration=1000),
        note="the paper's settings: ResNet-32, 20000 (mnist) / 90000 (cifar) steps with the "
             "paper's learning-rate schedule, clean error on all test images, kernel points "
             'from the first 50000 training images, 1000 attacked images, the original\'s C&W '
             'settings (abort early per example) and a C&W row at Carlini\'s own defaults '
             '(9 x 10000 iterations: the original\'s 9 x 10 finds no adversarial example on '
             'real MNIST), eps round 8 (0.16); Table 6: 1000 attacked images, 1000 PGD steps, '
             '10 restarts, thresholds on the 1000 test images after the attacked ones and Table '
             '6\'s images after those.'),
}

# The `--RCE_train` value of each model, in models.MODELS's order (CE, RCE).
RCE_FLAGS = (False, True)

# One replica of the whole pipeline (--seeds): seed 0 keeps the single-seed layout and stage
# names, seed N > 0 lives in {out}/seed_N/ and its stage names end with _seedN.
Replica = collections.namedtuple('Replica', ['seed', 'root', 'results'])


def stage_name(kind, model=None, attack=None, seed=0):
  """The name of a stage: kind, attack, model (CE or RCE), then _seed{N} for seed N > 0.

  E.g. ('train', 'CE') -> 'train_CE', ('attack', 'RCE', 'fgsm', 1) -> 'attack_fgsm_RCE_seed1',
  ('tsne', attack='fgsm') -> 'tsne_fgsm', ('data',) -> 'data' (shared by the replicas).
  """
  parts = [kind] + [p for p in (attack, model) if p]
  return '_'.join(parts) + ('_seed%d' % seed if seed else '')


def data_files(pattern):
  """The files of a comma-separated list of glob patterns, sorted."""
  return sorted(f for part in pattern.split(',') for f in glob.glob(part))


class Pipeline(object):
  """The stage graph of the paper's tables for parsed reproduce.py arguments `args`.

  `scripts_dir`: the folder of the scripts. `model_identity(log_root)`: the newest checkpoint
  of a model folder, None or {'step', 'fingerprint', 'finite'}, ValueError for one it cannot
  read (it reads TensorFlow checkpoints, so the caller provides it).
  """

  def __init__(self, args, scripts_dir, model_identity):
    self.args = args
    self.scripts_dir = scripts_dir
    self.model_identity = model_identity
    self.preset = PRESETS[args.preset]
    self.out = os.path.abspath(args.out_dir or 'reproduce_%s' % args.preset)
    self.results = os.path.join(self.out, 'results')  # where the stages run
    self.state_path = os.path.join(self.out, 'stages.json')
    self.log_dir = os.path.join(self.out, 'logs')
    io_utils.makedirs(self.log_dir)
    self.replicas = []
    for seed in range(args.seeds):
      root = os.path.join(self.out, 'seed_%d' % seed) if seed else self.out
      self.replicas.append(Replica(seed, root, os.path.join(root, 'results')))
      io_utils.makedirs(self.replicas[-1].results)
    self.stages = []  # the stage graph, in declaration (report) order
    self.stage_seeds = {}  # {stage: its replica's seed}, None for the shared data stage
    self.data_ids = {}
    self.data_dir = None
    self.data_paths = {}

  def add(self, stage, rep):
    """Declares `stage` (a scheduler.Stage) of Replica `rep` (None: shared); its name."""
    self.stages.append(stage)
    self.stage_seeds[stage.name] = None if rep is None else rep.seed
    return stage.name

  def replica_stages(self, rep):
    """The stages of Replica `rep`, the shared ones included, in declaration order."""
    return [s for s in self.stages if self.stage_seeds[s.name] in (None, rep.seed)]

  def script(self, name, *flags):
    return [sys.executable, os.path.join(self.scripts_dir, name)] + list(flags)

  # -- the stages
  def data(self):
    """Declares the digits conversion when it is needed; returns the data patterns."""
    args = self.args
    spec = dataset_table.get_spec(args.dataset)
    if args.preset in ('tiny', 'digits') and args.dataset == 'mnist' and not args.data_dir:
      data_dir = os.path.join(self.out, 'digits_dataset')
      paths = [os.path.join(data_dir, n) for n in (spec.train_files, spec.test_file)]
      self.add(scheduler.Stage(
          stage_name('data'), (),
          lambda: self.script('dataset_input.py', '--convert=digits', '--out_dir=%s' % data_dir),
          lambda outputs: {}, lambda: [io_utils.sha256_file(p) for p in paths]), None)
    else:
      data_dir = os.path.abspath(args.data_dir or '%s_dataset' % args.dataset)
    self.data_dir = data_dir
    return os.path.join(data_dir, spec.train_files), os.path.join(data_dir, spec.test_file)

  def converts_digits(self):
    """Whether the pipeline writes the bundled digits itself (its data stage)."""
    return stage_name('data') in self.stage_seeds

  def data_id(self, part, pattern):
    """The checksums of the data files of `pattern` ('train' or 'test'), computed once."""
    if part not in self.data_ids:
      files = data_files(pattern)
      if not files:
        raise scheduler.StageError('no data file matches %s (--data_dir=%s)'
                                   % (pattern, self.data_dir))
      self.data_ids[part] = provenance.data_identity(provenance.data_record(files))
    return self.data_ids[part]

  def model_flags(self, rce, rep):
    flags = ['--dataset=%s' % self.args.dataset, '--num_gpus=%d' % self.args.num_gpus,
             '--num_residual_units=%d' % self.preset['units'], '--RCE_train=%s' % rce,
             '--log_root=%s' % self.log_root(rce, rep)]
    return flags + (['--seed=%d' % rep.seed] if rep.seed else [])

  def log_root(self, rce, rep):
    return os.path.join(rep.root, 'models_%s' % self.args.dataset, models.model_name(rce))

  def eval_dir(self, rce, rep):
    return os.path.join(self.log_root(rce, rep), 'eval')

  def detect_dir(self, rep):
    return os.path.join(rep.results, 'detect_%s' % self.args.dataset)

  def train(self, rce, rep, train_path, test_path):
    """Training (every GPU); it resumes from log_root's checkpoints when they are on its way."""
    steps = self.args.steps or self.preset['steps'][self.args.dataset]
    name = stage_name('train', models.model_name(rce), seed=rep.seed)
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

    def data():
      return {'train': self.data_id('train', train_path), 'test': self.data_id('test', test_path)}

    def output():
      found = self.model_identity(log_root)
      if found is None or found['step'] != steps or not found['finite']:
        return None
      return {'step': found['step'], 'fingerprint': found['fingerprint']}

    def prepare():
      """Training resumes from the checkpoints in log_root only if they are on its way:
      made with these flags and data (lineage.json) and not past the steps asked for."""
      # What the checkpoints in log_root depend on, besides how far they went (as JSON
      # reads it back, to compare with the recorded one).
      lineage = json.loads(json.dumps({'flags': flags, 'data': data()}))
      found = self.model_identity(log_root)
      if found is not None:
        step = found['step']
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

    deps = (stage_name('data'),) if self.converts_digits() else ()
    return self.add(scheduler.Stage(
        name, deps, lambda: self.script('train.py', '--total_steps=%d' % steps, *flags),
        lambda outputs: {'data': data()}, output, prepare, all_gpus=True), rep)

  def test_nor(self, rce, rep, test_path):
    model = models.model_name(rce)
    eval_dir = self.eval_dir(rce, rep)
    return self.add(scheduler.Stage(
        stage_name('test_nor', model, seed=rep.seed), (stage_name('train', model, seed=rep.seed),),
        lambda: self.script(
            'test_nor.py', '--eval_data_path=%s' % test_path, '--eval_dir=%s' % eval_dir,
            '--mode=eval', '--eval_once',
            '--eval_batch_count=%d' % (100 if self.args.preset == 'full' else 50),
            *self.model_flags(rce, rep)),
        lambda outputs: dict(outputs, data=self.data_id('test', test_path)),
        lambda: result_files.run_id(result_files.load_verified_summary(
            eval_dir, result_files.CLEAN_RESULT))), rep)

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
    """An attack on one model; a white-box one reads the model's kernel parameters too."""
    model = models.model_name(rce)
    directory = result_files.attack_dir(attack, self.args.dataset, rce,
                                        results_dir=rep.results)
    flags = ([] if attack != 'jsma'
             else ['--eps=%g' % perturbation.eps_of_round(self.preset['eps_round'])])
    upstream = [stage_name('train', model, seed=rep.seed)]
    if attack_names.info(attack).white_box:
      upstream.append(stage_name('kernel_para', model, seed=rep.seed))
    return self._attack_stage(stage_name('attack', model, attack, rep.seed), upstream, attack,
                              rce, rep, test_path, self.attack_flags(attack, rep) + flags,
                              directory)

  def _attack_stage(self, name, upstream, attack, rce, rep, test_path, flags, directory):
    """A test_adv.py --mode=attack stage writing `directory`."""
    return self.add(scheduler.Stage(
        name, tuple(upstream),
        lambda: self.script(
            'test_adv.py', '--eval_data_path=%s' % test_path, '--Optimizer=mom',
            '--mode=attack', '--attack_method=%s' % attack,
            *(self.model_flags(rce, rep) + flags)),
        lambda outputs: dict(outputs, data=self.data_id('test', test_path)),
        lambda: result_files.run_id(result_files.load_verified_summary(directory))), rep)

  def kernel_para(self, rce, rep, train_path):
    model = models.model_name(rce)
    directory = result_files.kernel_dir(self.args.dataset, rep.results)
    return self.add(scheduler.Stage(
        stage_name('kernel_para', model, seed=rep.seed),
        (stage_name('train', model, seed=rep.seed),),
        lambda: self.script(
            'test_adv.py', '--train_data_path=%s' % train_path, '--mode=kernel_para',
            '--results_dir=%s' % rep.results,
            '--eval_batch_count=%d' % self.preset['kernel_batches'],
            *self.model_flags(rce, rep)),
        lambda outputs: dict(outputs, data=self.data_id('train', train_path)),
        lambda: result_files.run_id(result_files.load_verified_summary(
            directory, result_files.kernel_summary_name(rce)))), rep)

  def calibrate(self, rce, rep, test_path):
    """The detectors' thresholds of one model, on the test images after every attacked one;
    the supervised detectors are fitted on the characteristics of both models' attacks (as
    detect fits them), so it follows both models' characteristics."""
    model = models.model_name(rce)
    p = self.preset
    directory = result_files.thresholds_dir(self.args.dataset, rce, rep.results)
    return self.add(scheduler.Stage(
        stage_name('calibrate', model, seed=rep.seed),
        (stage_name('kernel_para', model, seed=rep.seed),)
        + tuple(stage_name('characteristics', m, seed=rep.seed) for m in models.MODELS),
        lambda: self.script(
            'test_adv.py', '--eval_data_path=%s' % test_path, '--mode=calibrate',
            '--results_dir=%s' % rep.results, '--eval_batch_count=%d' % p['attack_batches'],
            '--attack_batch_size=%d' % p['attack_batch_size'],
            '--calibration_images=%d' % p['adaptive']['calibration'],
            '--eps_round=%d' % p['eps_round'], *self.model_flags(rce, rep)),
        lambda outputs: dict(outputs, data=self.data_id('test', test_path)),
        lambda: result_files.run_id(result_files.load_verified_summary(directory))), rep)

  def adaptive(self, attack, rce, rep, test_path, detector, targeted):
    """One of Table 6's attacks on one model: oblivious after training, detector-aware after
    the model's calibration."""
    model = models.model_name(rce)
    p = self.preset['adaptive']
    run = attack_names.adaptive_run(attack, detector, targeted)
    directory = result_files.adaptive_dir(run, self.args.dataset, rce, results_dir=rep.results)
    aware = attack_names.info(attack).adaptive != 'oblivious'
    # Every Table 6 attack reads the calibration: its rows come after the calibration images.
    upstream = [stage_name('train', model, seed=rep.seed),
                stage_name('calibrate', model, seed=rep.seed)]
    flags = ['--results_dir=%s' % rep.results, '--eval_batch_count=1',
             '--attack_batch_size=%d' % p['images'], '--pgd_steps=%d' % p['steps'],
             '--pgd_restarts=%d' % p['restarts'], '--lagrange_steps=%d' % p['lagrange_steps'],
             '--targeted=%s' % targeted] + (['--detector=%s' % detector] if aware else [])
    return self._attack_stage(stage_name('adaptive', model, run, rep.seed), upstream, attack,
                              rce, rep, test_path, flags, directory)

  def adaptive_stages(self, rep, test_path):
    """Table 6's stages of one replica (none when the preset runs no Table 6): both models'
    calibrations, then every adaptive attack, untargeted and targeted (the supervised
    detectors and the ensemble untargeted: Table 7's threat model)."""
    if not self.preset['adaptive']:
      return []
    names = [self.calibrate(rce, rep, test_path) for rce in RCE_FLAGS]
    for targeted in (False, True):
      detectors = (attack_names.ADAPTIVE_DETECTORS if targeted
                   else attack_names.TABLE6_DETECTORS)
      for attack in attack_names.adaptive_attacks():
        aware = attack_names.info(attack).adaptive != 'oblivious'
        for detector in (detectors if aware else [None]):
          for rce in RCE_FLAGS:
            names.append(self.adaptive(attack, rce, rep, test_path, detector, targeted))
    return names

  def characteristics(self, rce, rep, upstream):
    """LID and Mahalanobis characteristics of every attack folder of one model."""
    model = models.model_name(rce)

    def output():
      found = result_files.find_attacks(rep.results, self.args.dataset, (model,))
      return {attack: result_files.run_id(result_files.load_verified_summary(
          result_files.characteristics_dir(dirs[model])))
              for attack, dirs in sorted(found.items())}

    return self.add(scheduler.Stage(
        stage_name('characteristics', model, seed=rep.seed), tuple(upstream),
        lambda: self.script(
            'test_adv.py', '--mode=characteristics', '--results_dir=%s' % rep.results,
            '--eps_round=%d' % self.preset['eps_round'], *self.model_flags(rce, rep)),
        lambda outputs: outputs, output), rep)

  def detect(self, rep, upstream):
    directory = self.detect_dir(rep)
    return self.add(scheduler.Stage(
        stage_name('detect', seed=rep.seed), tuple(upstream),
        lambda: self.script(
            'test_adv.py', '--mode=detect', '--dataset=%s' % self.args.dataset,
            '--results_dir=%s' % rep.results, '--eps_round=%d' % self.preset['eps_round']),
        lambda outputs: outputs,
        lambda: result_files.run_id(result_files.load_verified_summary(directory))), rep)

  def tsne(self, attack, rep):
    out = os.path.join(self.detect_dir(rep), 'tsne_%s.png' % attack)
    return self.add(scheduler.Stage(
        stage_name('tsne', attack=attack, seed=rep.seed),
        tuple(stage_name('attack', m, attack, rep.seed) for m in models.MODELS),
        lambda: self.script(
            't_sne.py', '--dataset=%s' % self.args.dataset, '--attack_method=%s' % attack,
            '--results_dir=%s' % rep.results, '--eps_round=%d' % self.preset['eps_round'],
            '--tsne_out=%s' % out) + (['--seed=%d' % rep.seed] if rep.seed else []),
        lambda outputs: outputs, lambda: io_utils.sha256_file(out)), rep)

  def replica(self, rep, train_path, test_path):
    """Declares one replica's stages: train, test_nor, attacks, kernels, C&W-wb, detect."""
    for rce in RCE_FLAGS:
      self.train(rce, rep, train_path, test_path)
      self.test_nor(rce, rep, test_path)
    attacks = []  # every attack stage, in declaration order
    of_model = {rce: [] for rce in RCE_FLAGS}  # each model's attack stages
    for attack in attack_names.paper_attacks(full=self.args.preset == 'full'):
      for rce in RCE_FLAGS:
        attacks.append(self.attack(attack, rce, rep, test_path))
        of_model[rce].append(attacks[-1])
    kernels = {rce: self.kernel_para(rce, rep, train_path) for rce in RCE_FLAGS}
    for attack in attack_names.paper_attacks(white_box=True):
      for rce in RCE_FLAGS:
        attacks.append(self.attack(attack, rce, rep, test_path))
        of_model[rce].append(attacks[-1])
    chars = [self.characteristics(rce, rep, of_model[rce] + [kernels[rce]])
             for rce in RCE_FLAGS]
    adaptive = self.adaptive_stages(rep, test_path)
    self.detect(rep, attacks + [kernels[rce] for rce in RCE_FLAGS] + chars + adaptive)
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
