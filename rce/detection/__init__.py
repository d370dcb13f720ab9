"""Detectors: K-density, confidence and non-ME scores; LID and Mahalanobis characteristics."""
