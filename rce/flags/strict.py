"""Strict command lines: every script parses here and ends on bad input with one line.

An unknown or misspelled flag, a bad choice, an out-of-range value or a stray word ends the
script with one 'error: ...' line before any data is read or graph built (absl's own parse,
which suggests the flag meant); so does a ValueError or OSError raised by the script's body.
Flags are absl's, through tf.compat.v1.app.flags.
"""
import sys

from absl import app
from absl import logging
import tensorflow as tf

from rce.results import io_utils

flags = tf.compat.v1.app.flags
FLAGS = flags.FLAGS


def _parse_strictly(argv):
  """absl's parse, with every flag known: unknown flags, bad values and stray words are errors."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    sys.exit('error: %s' % e)
  if len(rest) > 1:
    sys.exit('error: unexpected argument(s) %s (every option is a --flag=value)'
             % ' '.join(repr(a) for a in rest[1:]))
  return rest


def run_strict(body):
  """Parses the command line strictly, then runs `body()`; bad input ends in one line.

  ValueError (and its subclasses of rce.tables.errors) and OSError end
  the script with 'error: ...' on stderr and exit status 1, not a traceback.
  """
  def main(argv):
    del argv
    try:
      body()
    except ValueError as e:
      sys.exit('error: %s' % e)
    except OSError as e:
      sys.exit('error: %s' % io_utils.os_error_text(e))

  app.run(main, flags_parser=_parse_strictly)


def run_script(define_flags, body):
  """The entry point of every TensorFlow script: flags, graph mode, logging, then `body()`."""
  define_flags()
  tf.compat.v1.disable_eager_execution()
  logging.set_verbosity(logging.INFO)
  run_strict(body)
