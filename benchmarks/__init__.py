"""The benchmarks: scripts run from the repository root as `python -m benchmarks.<name>`.

A package, so that the scripts import their helpers (`from benchmarks import timing`) and the
suite's modules (`rce.training`, `resnet_model`, `attacks`) by their package names, with no
sys.path edits. What each one measures and how: benchmarks/README.md. Importing it imports
nothing: gpu_check must split the GPU before TensorFlow initializes it.
"""
