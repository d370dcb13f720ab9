"""The attacks of --attack_method as data, without TensorFlow: names, titles, sweeps, order.

The one place that says what each attack is called in tables, whether it is swept over eps
(0.02..0.20) or run once, whether it attacks the detector (white box, after kernel_para) and
whether it is a row of the paper's Table 2. Their order here is their order in every report.
`attacks` (the graph functions) builds on this table; `reproduce.py` and the reports read it
without importing TensorFlow.
"""
import collections

AttackInfo = collections.namedtuple('AttackInfo', [
    'name',  # the --attack_method value
    'title',  # its name in tables and figures
    'swept',  # True: run over the eps sweep (or one --eps); False: run once (C&W)
    'white_box',  # True: attacks the K-density detector too (needs kernel_para first)
    'in_paper',  # a row of the paper's Table 2 (reproduce.py runs these)
])

_TABLE = (
    AttackInfo('random', 'Random', True, False, False),
    AttackInfo('fgsm', 'FGSM', True, False, True),
    AttackInfo('bim', 'BIM', True, False, True),
    AttackInfo('tgsm', 'ILCM', True, False, True),
    AttackInfo('jsma', 'JSMA', True, False, True),
    AttackInfo('carliniL2', 'C&W', False, False, True),
    AttackInfo('carliniL2_highcon', 'C&W-hc', False, False, True),
    AttackInfo('carliniL2_specific', 'C&W-wb', False, True, True),
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


def paper_attacks(white_box=False):
  """The paper's Table 2 attacks, in order: the plain ones, or (white_box) those on the detector."""
  return [a.name for a in _TABLE if a.in_paper and a.white_box == white_box]
