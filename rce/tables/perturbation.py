"""The image range every attack and detector works in, and the eps sweep of the attacks.

Images are NHWC float32 in [IMAGE_MIN, IMAGE_MAX] (the original's x / 255 - 0.5); an eps is a
step in that range. The swept attacks run eps 0.02, 0.04, ..., 0.20: round r (1-based, as
--eps_round counts) is eps 0.02 r.
"""
IMAGE_MIN = -0.5
IMAGE_MAX = 0.5
EPS_STEP = 0.02
EPS_ROUNDS = 10
EPS_SWEEP = tuple(round(EPS_STEP * i, 2) for i in range(1, EPS_ROUNDS + 1))


def eps_schedule(eps):
  """The eps values of one attack run: [eps] for a given eps > 0, else the whole sweep."""
  return [float(eps)] if eps > 0 else list(EPS_SWEEP)


def eps_of_round(eps_round):
  """The eps of sweep round `eps_round` (1-based)."""
  return round(EPS_STEP * eps_round, 2)
