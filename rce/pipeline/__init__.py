"""The paper's pipeline: a stage scheduler, the stage graph of the paper, RESULTS.md."""
