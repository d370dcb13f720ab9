"""Adversarial attacks of the RCE suite and the registry of `--attack_method` names.

Attacks take a `logits_fn(x) -> [B, K]` that already applies the RCE flip (see
`resnet_model.make_logits_fn`); none of them knows how the model was trained. Images are
NHWC float32 in [-0.5, 0.5], in and out.

The registry adds to each attack of `attack_names` (title, swept or run once, order) how it
is built:
  swept: `build(logits_fn, x, eps, params)` over a whole batch, with its own arguments taken
    from the attack parameters; eps may be a scalar placeholder, so the caller builds the
    graph once and sweeps eps by feeding it.
  run once: the session class `CarliniWagnerL2`, one run per stage of `info.cw_stages`
    (the original's settings; the --cw_* flags override them); `carliniL2_specific` is its
    two-stage white-box use: an ordinary C&W, then from its image the C&W with the
    detector term passed as `extra_loss_fn`.
"""
import collections

from rce.tables import attack_names
from attacks.carlini import CarliniWagnerL2
from attacks.distance import l2_per_example
from attacks.gradient import bim
from attacks.gradient import fgsm
from attacks.gradient import ilcm
from attacks.gradient import random_noise
from attacks.gradient import tgsm
from attacks.jsma import jsma

AttackSpec = collections.namedtuple('AttackSpec', [
    'info',  # attack_names.AttackInfo: name, title, swept or once, white box, C&W settings
    'build',  # swept: build(logits_fn, x, eps, params) -> x_adv tensor; once: None
])
CW_SETTINGS = attack_names.CW_SETTINGS


def _eps_attack(fn, uses_model=True, **param_names):
  """build() of a swept attack: fn(logits_fn, x, eps, **{arg: params.<field>})."""
  def build(logits_fn, x, eps, params):
    kwargs = {arg: getattr(params, field) for arg, field in param_names.items()}
    return fn(logits_fn, x, eps, **kwargs) if uses_model else fn(x, eps, **kwargs)
  return build


_BUILDERS = {
    'random': _eps_attack(random_noise, uses_model=False, seed='seed'),
    'fgsm': _eps_attack(fgsm),
    'bim': _eps_attack(bim, nb_iter='nb_iter'),
    'tgsm': _eps_attack(ilcm, nb_iter='nb_iter', target='tgsm_target'),
    'jsma': _eps_attack(jsma, max_iter='jsma_max_iter'),
}

# Run-once attacks (C&W) have no graph builder: attack_runner runs CarliniWagnerL2 with the
# settings of each of their info.cw_stages.
REGISTRY = collections.OrderedDict(
    (name, AttackSpec(info, _BUILDERS.get(name))) for name, info in attack_names.ATTACKS.items())
ATTACK_NAMES = attack_names.ATTACK_NAMES


def get_attack(name):
  """The AttackSpec registered under an --attack_method name; builds no graph.

  Raises:
    ValueError: unknown name; the message lists the valid ones.
  """
  attack_names.info(name)
  return REGISTRY[name]


__all__ = ['ATTACK_NAMES', 'AttackSpec', 'CW_SETTINGS', 'CarliniWagnerL2', 'REGISTRY', 'bim',
           'fgsm',
           'get_attack', 'ilcm', 'jsma', 'l2_per_example', 'random_noise', 'tgsm']
