"""Adversarial attacks of the RCE suite and the registry of `--attack_method` names.

Attacks take a `logits_fn(x) -> [B, K]` that already applies the RCE flip (see
`resnet_model.make_logits_fn`); none of them knows how the model was trained. Images are
NHWC float32 in [-0.5, 0.5], in and out.

Two kinds of entries:
  'eps': a graph function `fn(logits_fn, x, eps, ...)` (or `fn(x, eps, ...)` for `random`)
    over a whole batch; eps may be a scalar placeholder, so the caller builds the graph once
    and sweeps eps by feeding it.
  'cw': the session class `CarliniWagnerL2`, run once with the entry's confidence;
    `carliniL2_specific` is its two-stage white-box use (confidence 5, then the detector
    term passed as `extra_loss_fn`).
"""
import collections

from attacks.carlini import CarliniWagnerL2
from attacks.carlini import CONFIDENCE
from attacks.carlini import HIGHCON_CONFIDENCE
from attacks.carlini import SPECIFIC_CONFIDENCE
from attacks.gradient import bim
from attacks.gradient import fgsm
from attacks.gradient import ilcm
from attacks.gradient import random_noise
from attacks.gradient import tgsm
from attacks.jsma import jsma

AttackSpec = collections.namedtuple('AttackSpec', [
    'name',  # the --attack_method value
    'kind',  # 'eps' (graph function taking eps, swept) or 'cw' (session class, run once)
    'fn',  # the graph function or the class
    'needs_model',  # False only for random noise, which takes (x, eps)
    'target',  # None (untargeted), 'least_likely' (its default) or 'random' (caller draws)
    'confidence',  # C&W kappa; None for 'eps' attacks
    'white_box',  # True for the two-stage attack on the K-density detector
])

_SPECS = (
    AttackSpec('random', 'eps', random_noise, False, None, None, False),
    AttackSpec('fgsm', 'eps', fgsm, True, None, None, False),
    AttackSpec('bim', 'eps', bim, True, None, None, False),
    AttackSpec('tgsm', 'eps', ilcm, True, 'least_likely', None, False),
    AttackSpec('jsma', 'eps', jsma, True, 'least_likely', None, False),
    AttackSpec('carliniL2', 'cw', CarliniWagnerL2, True, 'random', CONFIDENCE, False),
    AttackSpec('carliniL2_highcon', 'cw', CarliniWagnerL2, True, 'random',
               HIGHCON_CONFIDENCE, False),
    AttackSpec('carliniL2_specific', 'cw', CarliniWagnerL2, True, 'random',
               SPECIFIC_CONFIDENCE, True),
)

REGISTRY = collections.OrderedDict((spec.name, spec) for spec in _SPECS)
ATTACK_NAMES = tuple(REGISTRY)


def get_attack(name):
  """The AttackSpec registered under an --attack_method name; builds no graph.

  Raises:
    ValueError: unknown name; the message lists the valid ones.
  """
  if name not in REGISTRY:
    raise ValueError('unknown attack %r; expected one of: %s' % (name, ', '.join(ATTACK_NAMES)))
  return REGISTRY[name]


__all__ = ['ATTACK_NAMES', 'AttackSpec', 'CarliniWagnerL2', 'REGISTRY', 'bim', 'fgsm',
           'get_attack', 'ilcm', 'jsma', 'random_noise', 'tgsm']
