"""Timing helpers shared by the benchmarks: wall and process-CPU clocks, warm-up, repeats.

Every measurement takes both clocks: wall time (`time.perf_counter`), the headline figure,
and the CPU time of this process, all threads (`time.process_time`), which moves much less
when other processes share the cores. Rates divide an amount (images, examples, GFLOP) by
either.

    samples = {name: timing.Samples() for name in steps}   # steps: name -> train step fn
    timing.warm_up(lambda: [step() for step in steps.values()], 3)
    for block in range(blocks):
      for name in timing.rotated(list(steps), block):   # machine noise hits every entry
        samples[name].add(*timing.time_calls(steps[name], steps_per_block))
    samples['ours'].median_rate(steps_per_block * batch_size)   # median images/s
"""
import os
import statistics
import time

# Floor of a measured duration: a rate never divides by zero (a CPU clock can read 0).
MIN_SECONDS = 1e-9


class Stopwatch(object):
  """Wall and process-CPU clocks started together (at construction or `restart`)."""

  def __init__(self):
    self.restart()

  def restart(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()

  def elapsed(self):
    """(wall seconds, CPU seconds of this process) since the start."""
    return time.perf_counter() - self._wall, time.process_time() - self._cpu


def timed(fn):
  """Calls fn() once; returns (its result, wall seconds, process CPU seconds)."""
  clock = Stopwatch()
  out = fn()
  return (out,) + clock.elapsed()


def time_calls(fn, calls):
  """(wall seconds, process CPU seconds) of `calls` calls of fn() in a row."""
  clock = Stopwatch()
  for _ in range(calls):
    fn()
  return clock.elapsed()


def warm_up(fn, calls=1):
  """Calls fn() `calls` times, untimed for the benchmark (tracing, graph optimization, thread
  pools and kernel set-up happen here); returns the wall seconds it took, for reports."""
  return time_calls(fn, calls)[0]


def per_second(amount, seconds):
  """amount / seconds, with seconds floored at MIN_SECONDS."""
  return amount / max(seconds, MIN_SECONDS)


def rotated(items, shift):
  """`items` (a list) rotated left by `shift`: the order of round `shift` of interleaved
  timing, so that a slow spell of a shared machine hits every entry alike (for two entries:
  the order reversed every other round)."""
  if not items:
    return []
  shift %= len(items)
  return items[shift:] + items[:shift]


class Samples(object):
  """Wall and CPU seconds of the repeated timed runs of one thing (a block, a call)."""

  def __init__(self):
    self.wall, self.cpu = [], []

  def add(self, wall, cpu):
    self.wall.append(wall)
    self.cpu.append(cpu)

  def rates(self, amount, cpu=False):
    """amount per second of each run, by wall (default) or CPU time."""
    return [per_second(amount, s) for s in (self.cpu if cpu else self.wall)]

  def median_rate(self, amount, cpu=False):
    """Median over the runs of amount per second (a median of rates, not of times)."""
    return statistics.median(self.rates(amount, cpu))

  def best(self):
    """(least wall seconds, least CPU seconds) over the runs, each minimum on its own."""
    return min(self.wall), min(self.cpu)


def load_average():
  """The 1-minute load average of the machine (how busy the shared cores were)."""
  return os.getloadavg()[0]
