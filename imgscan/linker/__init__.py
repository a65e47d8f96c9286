"""glibc ld.so emulation inside an image: search order, ld.so.cache, hwcaps, musl."""
