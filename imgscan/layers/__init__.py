"""Reading layers as streams into per-layer indexes, and merging them into one filesystem view."""
