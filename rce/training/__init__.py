"""Training: the multi-tower training graph, its hooks and its safe checkpoint writes."""
