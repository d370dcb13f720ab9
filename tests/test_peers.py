"""benchmarks.peers without the peer libraries: flags, the adapters' shared helpers, the
workarounds, and that importing the benchmark imports no peer."""
import importlib.util
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import peer_adapters
from benchmarks import peer_workarounds
from benchmarks import peers
from tests.helpers import REPO_ROOT, describe

PEERS = ('art', 'foolbox', 'cleverhans')


def _setup(argv=()):
  return peer_adapters.Setup(peers.parse_args(list(argv)), None, None, 10)


def test_flags_default_to_every_attack_and_library_and_reject_unknown_ones(capsys):
  args = peers.parse_args([])
  assert args.attacks == list(peer_adapters.ATTACKS)
  assert args.libraries == ['ours', 'art', 'foolbox', 'cleverhans']
  args = peers.parse_args(['--attacks=fgsm, cw', '--libraries=ours'])
  assert (args.attacks, args.libraries) == (['fgsm', 'cw'], ['ours'])
  for bad in (['--attacks=fgsm,deepfool'], ['--libraries=ours,advertorch']):
    with pytest.raises(SystemExit) as e:
      peers.parse_args(bad)
    assert e.value.code == 2
  assert 'unknown library' in capsys.readouterr().err


def test_shared_helpers_aim_and_count_iterations_alike_for_every_library():
  setup = _setup(['--bim_steps=7', '--cw_binary_search_steps=3', '--cw_max_iterations=50',
                  '--jsma_max_pixels=40'])
  labels, targets = np.array([1, 2]), np.array([5, 6])
  for cls in peer_adapters.ADAPTERS.values():
    lib = cls(setup)
    assert lib.aim('fgsm', labels, targets) is labels
    assert lib.aim('bim', labels, targets) is labels
    assert lib.aim('ilcm', labels, targets) is targets
    assert lib.aim('cw', labels, targets) is targets
    assert lib.iterations('full') == 7 and lib.iterations('warmup') == 1
    assert lib.iterations(('iters', 4)) == 4
    assert lib.cw_schedule('full') == (3, 50)
    assert lib.cw_schedule('warmup') == (1, 1) and lib.cw_schedule(('iters', 9)) == (1, 9)
    assert lib.full_iterations('cw') == 150 and lib.full_iterations('ilcm') == 7
    np.testing.assert_array_equal(lib.onehot([2]), np.eye(10, dtype=np.float32)[[2]])
  assert peer_adapters.Art(setup).full_iterations('jsma') == 20  # two pixels per iteration
  assert peer_adapters.Foolbox(setup).full_iterations('jsma') == 1
  untargeted = peer_adapters.Cleverhans(_setup(['--cw_untargeted']))
  assert untargeted.aim('cw', labels, targets) is labels


@pytest.mark.parametrize('name', PEERS)
def test_a_missing_peer_is_unavailable_with_its_reason(name):
  if importlib.util.find_spec(name) is not None:
    pytest.skip('%s is installed here (the peers venv): the benchmark run loads it' % name)
  lib = peer_adapters.ADAPTERS[name](_setup())
  with pytest.raises(peer_adapters.Unavailable, match='ModuleNotFoundError.*%s' % name):
    lib.load()


def test_an_import_failing_on_a_numpy1_alias_is_retried_once():
  calls = []

  class Flaky(peer_adapters.Library):
    name = 'flaky'

    def _import(self):
      calls.append(1)
      if len(calls) == 1:
        raise AttributeError("module 'numpy' has no attribute 'float'")
      return '1.0', dict(thing=len)

  lib = Flaky(_setup())
  assert 'needed NumPy 1 aliases' in lib.load()
  assert (len(calls), lib.version, lib.lib.thing) == (2, '1.0', len)


def test_the_wrapped_model_is_built_once():
  built = []

  class Wrapping(peer_adapters.Library):
    name = 'wrapping'

    def _wrap(self):
      built.append(1)
      return 'wrapped'

  lib = Wrapping(_setup())
  assert (lib.model, lib.model, len(built)) == ('wrapped', 'wrapped', 1)
  assert peer_adapters.Cleverhans(_setup()).model is None  # the eager model, as it is


def test_per_example_const_cuts_image_shaped_ones_to_the_batch_and_restores_tf():
  module = types.SimpleNamespace(tf=tf)
  with peer_workarounds.per_example_const(module):
    assert module.tf.ones([4, 28, 28, 1]).shape == (4,)
    assert module.tf.ones([4]).shape == (4,)
    assert module.tf.zeros([2, 3]).shape == (2, 3)  # everything else is tf's
  assert module.tf is tf


def test_foolbox_zero_rows_go_back_to_the_input():
  x = np.full((3, 2, 2, 1), 0.25, np.float32)
  x[2] = 0.0  # an all-zero input keeps its zero image
  adv = np.stack([np.zeros((2, 2, 1)), np.full((2, 2, 1), 0.5), np.zeros((2, 2, 1))])
  out = peer_workarounds.zero_rows_to_input(adv.astype(np.float32), x)
  np.testing.assert_array_equal(out[0], x[0])
  np.testing.assert_array_equal(out[1], 0.5)
  np.testing.assert_array_equal(out[2], 0.0)


_ADAM_SHIM = """
import numpy as np
import tensorflow as tf
from benchmarks import peer_workarounds
shim = peer_workarounds.KerasAdamShim(0.1)
assert shim.variables() == []
var = tf.Variable([1.0, 2.0])
shim.apply_gradients([(tf.constant([1.0, 1.0]), var)])
names = [v.name for v in shim.variables()]
assert names and not any('learning_rate' in n for n in names), names
for v in shim.variables():  # what cleverhans does at each binary-search step
  v.assign(tf.zeros_like(v))
shim.apply_gradients([(tf.constant([1.0, 1.0]), var)])
np.testing.assert_allclose(var.numpy(), [0.8, 1.8], atol=1e-5)  # two steps of lr 0.1
print('ok')
"""


def test_keras_adam_shim_restarts_adam_without_zeroing_the_learning_rate():
  """In a process of its own: the shim is eager (cleverhans 4 is), and other tests of the
  session switch this process to graph mode."""
  proc = subprocess.run([sys.executable, '-c', _ADAM_SHIM], cwd=REPO_ROOT,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), describe(proc)


def test_importing_the_benchmark_imports_no_peer_library():
  code = ('import sys; from benchmarks import peers; '
          'print(sorted({m.split(".")[0] for m in sys.modules} & {%s}))'
          % ', '.join(repr(p) for p in PEERS))
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, timeout=300)
  assert proc.returncode == 0, describe(proc)
  assert proc.stdout.strip().splitlines()[-1] == '[]', proc.stdout
