"""ELF facts read from a byte stream: what ld.so needs, and the library names a binary dlopens."""
