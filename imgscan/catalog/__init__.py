"""Package catalogers: one module per ecosystem, each reading the merged filesystem view."""
