"""Result files: atomic writes, folder layout and checksums, provenance of every run."""
