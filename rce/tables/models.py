"""The two models of every table and the training precisions, by name.

CE and RCE name the training objective (and the folders, stages and table rows of each
model); `RCE_train` is the original's flag, so a model is named from that boolean here only.
"""
MODELS = ('CE', 'RCE')

# train.py's --precision values; rce.training.training maps each to its dtypes.
PRECISION_NAMES = ('fp32', 'mixed_float16', 'mixed_bfloat16')


def model_name(rce):
  """'RCE' for a model trained (and evaluated) with Reverse Cross-Entropy, else 'CE'."""
  return MODELS[1] if rce else MODELS[0]
