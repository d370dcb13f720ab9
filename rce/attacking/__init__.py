"""Running attacks on a restored model: eps sweeps, C&W with fallbacks, shards."""
