"""The import layers: import-linter holds the package's contracts (.importlinter); the
top-level files, which grimp cannot graph, are checked here from their source."""
import ast
import os
import subprocess
import sys

from tests.helpers import REPO_ROOT, describe

SCRIPTS = ('train', 'test_nor', 'test_adv', 't_sne', 'reproduce')
DESIGN_CARD = ('resnet_model', 'dataset_input')  # the paper's modules beside the scripts
# What the design card's modules may import of this project: the lowest layers only, so that
# every sub-package above them may import them.
DESIGN_CARD_MAY_IMPORT = ('rce.tables', 'rce.results', 'rce.flags.strict')
# What reproduce.py may import: the TensorFlow-free layers, and the checkpoint reader
# inside model_identity (planning loads no TensorFlow: checked at run time below).
REPRODUCE_MAY_IMPORT = ('rce.tables', 'rce.results', 'rce.reports.report_tables', 'rce.pipeline',
                        'rce.model.checkpoints')  # lazily, once a model is checked
LOCAL = set(SCRIPTS + DESIGN_CARD) | {'rce', 'attacks'}


def _local_imports(module):
  """Every module of this project that the top-level file `module`.py imports (anywhere in
  it, functions included), by dotted name."""
  with open(os.path.join(REPO_ROOT, module + '.py')) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names = ['%s.%s' % (node.module, a.name) if node.module in ('rce',) or
               node.module.startswith('rce.') else node.module for a in node.names]
    else:
      continue
    found.update(n for n in names if n.split('.')[0] in LOCAL)
  return found


def _within(name, prefixes):
  return any(name == p or name.startswith(p + '.') for p in prefixes)


def test_the_package_keeps_its_import_contracts():
  """lint-imports: layers, the TensorFlow-free modules, no script imported, no circle."""
  proc = subprocess.run(
      [sys.executable, '-c', 'import sys; from importlinter.cli import lint_imports; '
       'sys.exit(lint_imports(no_cache=True, no_logo=True))'],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
  assert proc.returncode == 0, describe(proc)
  assert 'Contracts: 4 kept, 0 broken.' in proc.stdout, proc.stdout


def test_no_script_imports_another_script():
  for script in SCRIPTS:
    others = {n for n in _local_imports(script) if n in SCRIPTS}
    assert not others, '%s.py imports the script(s) %s' % (script, sorted(others))


def test_the_design_card_modules_import_only_the_lowest_layers():
  assert _local_imports('resnet_model') == set()
  for module in DESIGN_CARD:
    wrong = {n for n in _local_imports(module)
             if not _within(n, DESIGN_CARD_MAY_IMPORT) and n not in ('resnet_model',)}
    assert not wrong, '%s.py imports %s, above its layer' % (module, sorted(wrong))
  assert 'dataset_input' not in _local_imports('resnet_model')


def test_reproduce_imports_only_tensorflow_free_layers():
  wrong = {n for n in _local_imports('reproduce') if not _within(n, REPRODUCE_MAY_IMPORT)}
  assert not wrong, 'reproduce.py imports %s' % sorted(wrong)


def test_reproduce_plans_without_importing_tensorflow(tmp_path):
  """The driver's start (parsing and declaring every stage) loads no TensorFlow."""
  code = ('import sys; import reproduce; '
          'args = reproduce.parse_args(["--tiny", "--jobs=1", "--num_gpus=0", '
          '"--out_dir=%s"]); reproduce.make_pipeline(args).plan(); '
          'print(sorted({m.split(".")[0] for m in sys.modules} & {'
          '"tensorflow", "keras", "resnet_model", "dataset_input", "attacks"}))'
          % tmp_path)
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, timeout=300)
  assert proc.returncode == 0, describe(proc)
  assert proc.stdout.strip().splitlines()[-1] == '[]', proc.stdout
