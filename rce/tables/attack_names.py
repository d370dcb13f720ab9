"""The attacks of --attack_method as data, without TensorFlow: names, titles, sweeps, order.

The one place that says what each attack is called in tables, whether it is swept over eps
(0.02..0.20) or run once, whether it attacks the detector (white box, after kernel_para),
whether it is a row of the paper's Table 2, and the settings of each C&W run (the original's
defaults; the --cw_* flags override them). Their order here is their order in every report.
`attacks` (the graph functions) builds on this table; `reproduce.py` and the reports read it
without importing TensorFlow.
"""
import collections

import numpy as np

AttackInfo = collections.namedtuple('AttackInfo', [
    'name',  # the --attack_method value
    'title',  # its name in tables and figures
    'swept',  # True: run over the eps sweep (or one --eps); False: run once (C&W)
    'white_box',  # True: attacks the K-density detector too (needs kernel_para first)
    'in_paper',  # a row of the paper's Table 2 (reproduce.py runs these)
    'cw_stages',  # run once: the CWStage of each C&W run, in order; swept: ()
    'full_only',  # True: reproduce.py runs it with --full only (not a row of the paper's code)
    'l0_noise',  # True: an L0 attack; its noisy negatives flip pixels (characteristics)
    'adaptive',  # an L-inf PGD of Table 6: its column (ADAPTIVE_COLUMNS); None: not one
    'pgd_loss',  # the adaptive PGD's classifier loss: 'ce', 'cw' (C&W margin), 'hc' (margin
                 # with confidence 10)
], defaults=(False, False, None, None))

# One C&W run's settings.
CWStage = collections.namedtuple('CWStage', [
    'batch_size', 'max_iterations', 'binary_search_steps', 'initial_const', 'confidence',
    'learning_rate'])
CW_SETTINGS = ('batch_size', 'max_iterations', 'binary_search_steps', 'initial_const',
               'learning_rate')  # what the --cw_* flags may override

# The original's C&W settings (its test_adv.py): C&W 9 x 10 iterations (sic) at batch 10;
# C&W-hc 9 x 10000, confidence 10; C&W-wb an ordinary C&W (3 x 5000, c 10, confidence 5),
# then from its image the C&W with the detector term (9 x 10000, c 100, confidence 5), both
# at batch 1. Results do not depend on the batch (abort early is per example).
_CW = CWStage(batch_size=10, max_iterations=10, binary_search_steps=9, initial_const=1.0,
              confidence=0.0, learning_rate=0.01)
_TABLE = (
    AttackInfo('random', 'Random', True, False, False, ()),
    AttackInfo('fgsm', 'FGSM', True, False, True, ()),
    AttackInfo('bim', 'BIM', True, False, True, ()),
    AttackInfo('tgsm', 'ILCM', True, False, True, ()),
    AttackInfo('jsma', 'JSMA', True, False, True, (), l0_noise=True),
    AttackInfo('carliniL2', 'C&W', False, False, True, (_CW,)),
    # The original code's C&W settings find no adversarial example on real MNIST (ten Adam
    # steps of 0.01 barely move saturated pixels); this row runs C&W with Carlini's own
    # defaults (nn_robust_attacks' l2_attack.py: 9 x 10000, c 1e-3, abort early, batch 1).
    AttackInfo('carliniL2_defaults', "C&W (Carlini's defaults)", False, False, True,
               (_CW._replace(batch_size=1, max_iterations=10000, initial_const=1e-3),),
               full_only=True),
    AttackInfo('carliniL2_highcon', 'C&W-hc', False, False, True,
               (_CW._replace(max_iterations=10000, confidence=10.0),)),
    AttackInfo('carliniL2_specific', 'C&W-wb', False, True, True,
               (_CW._replace(batch_size=1, max_iterations=5000, binary_search_steps=3,
                             initial_const=10.0, confidence=5.0),
                _CW._replace(batch_size=1, max_iterations=10000, initial_const=100.0,
                             confidence=5.0))),
)

# Table 6's L-inf PGD attacks (attacks/adaptive.py), swept over the data set's adaptive eps
# list, each run untargeted or (--targeted) at the C&W target. The oblivious ones never ask
# the detector (three losses, whose per-example worst case is Table 6's oblivious column);
# the other three attack the detector named by --detector (after kernel_para and calibrate).
ADAPTIVE_COLUMNS = ('oblivious', 'lagrangian', 'selective', 'orthogonal')
# The detectors on the final feature (rce.detection.final_feature_detectors), row order.
ADAPTIVE_DETECTORS = ('k_density', 'mahalanobis', 'lid')  # on the final feature
# Table 4's regressions (K-density, LID, Mahalanobis), as Table 6 names them.
SUPERVISED_DETECTORS = ('supervised_k_density', 'supervised_lid', 'supervised_mahalanobis')
# Every detector of a model at once: an image passes only when each of the six accepts it.
ENSEMBLE = 'ensemble'
ENSEMBLE_MEMBERS = ADAPTIVE_DETECTORS + SUPERVISED_DETECTORS
# Every --detector value, Table 6's row order.
TABLE6_DETECTORS = ENSEMBLE_MEMBERS + (ENSEMBLE,)
_TABLE += (
    AttackInfo('pgd_ce', 'PGD (cross-entropy)', True, False, False, (), adaptive='oblivious',
               pgd_loss='ce'),
    AttackInfo('pgd_cw', 'PGD (C&W margin)', True, False, False, (), adaptive='oblivious',
               pgd_loss='cw'),
    AttackInfo('pgd_hc', 'PGD (high-confidence margin)', True, False, False, (),
               adaptive='oblivious', pgd_loss='hc'),
    AttackInfo('pgd_lagrangian', 'Lagrangian PGD', True, False, False, (),
               adaptive='lagrangian', pgd_loss='cw'),
    AttackInfo('pgd_selective', 'Selective PGD', True, False, False, (),
               adaptive='selective', pgd_loss='cw'),
    AttackInfo('pgd_orthogonal', 'Orthogonal PGD', True, False, False, (),
               adaptive='orthogonal', pgd_loss='cw'),
)

ATTACKS = collections.OrderedDict((a.name, a) for a in _TABLE)
ATTACK_NAMES = tuple(ATTACKS)


def info(name):
  """The AttackInfo of an --attack_method name; ValueError listing the valid names."""
  if name not in ATTACKS:
    raise ValueError('unknown attack %r; expected one of: %s' % (name, ', '.join(ATTACK_NAMES)))
  return ATTACKS[name]


def title(name):
  """The table title of an attack (its name when it is not registered)."""
  return ATTACKS[name].title if name in ATTACKS else name


def ordered(names):
  """`names` in report order: registered attacks first, in table order, then the rest sorted."""
  names = set(names)
  return [n for n in ATTACK_NAMES if n in names] + sorted(names - set(ATTACK_NAMES))


def adaptive_attacks(detector_aware=None):
  """Table 6's attacks in order: all, or only those that attack a detector (True) or only
  the oblivious ones (False)."""
  return [a.name for a in _TABLE if a.adaptive and (
      detector_aware is None or (a.adaptive != 'oblivious') == detector_aware)]


def adaptive_run(attack, detector=None, targeted=False):
  """The folder name of an adaptive attack run under adaptive_{dataset}/: the attack, the
  detector it attacks (detector-aware ones only) and '_targeted' for the targeted threat
  model, e.g. 'pgd_cw', 'pgd_orthogonal_lid_targeted'."""
  spec = info(attack)
  if not spec.adaptive:
    raise ValueError('%s is not an adaptive attack (%s)' % (attack, ', '.join(
        adaptive_attacks())))
  parts = [attack] + ([detector] if spec.adaptive != 'oblivious' else [])
  return '_'.join(parts) + ('_targeted' if targeted else '')


def paper_attacks(white_box=False, full=False):
  """The paper's Table 2 attacks, in order: the plain ones, or (white_box) those on the
  detector; `full` adds the rows reproduce.py runs with --full only."""
  return [a.name for a in _TABLE
          if a.in_paper and a.white_box == white_box and (full or not a.full_only)]


def random_targets(labels, seed, num_classes):
  """The C&W target of each image (also the targeted adaptive attacks'): a seeded random
  class of `num_classes` different from its true label, int [N]. The attack's --seed draws
  them over all its images, so a shard and a reader of the results recompute the same."""
  rng = np.random.RandomState(seed)
  offsets = rng.randint(1, num_classes, size=len(labels))
  return (np.asarray(labels) + offsets) % num_classes
