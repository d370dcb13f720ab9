"""The support code of the scripts, one sub-package per job (the README's module map).

From the top layer down (.importlinter holds it): pipeline; reports; attacking | training;
detection;
model; flags | placement; then the design card's attacks/; results; tables. The tables and
the result files, the report tables and the pipeline import no TensorFlow.
"""
