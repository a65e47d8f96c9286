"""Which CUDA library a soname or a pip distribution is ('cudnn', 'cublasLt', 'nccl', ...)."""

from __future__ import annotations

import re

# Order matters: cublasLt before cublas, cusparseLt before cusparse.
_FAMILY_OF_NAME = [
    ("cudart", r"libcudart"),
    ("cublasLt", r"libcublasLt"),
    ("cublas", r"libcublas"),
    ("cudnn", r"libcudnn"),
    ("nccl", r"libnccl"),
    ("nvrtc", r"libnvrtc"),
    ("cusparseLt", r"libcusparseLt"),
    ("cusparse", r"libcusparse"),
    ("cufft", r"libcufft"),
    ("curand", r"libcurand"),
    ("cusolver", r"libcusolver"),
    ("cufile", r"libcufile"),
    ("nvshmem", r"libnvshmem_host"),
    ("nvjitlink", r"libnvJitLink"),
    ("cupti", r"libcupti"),
]
_NAME_RE = [(family, re.compile(prefix + r"\.so(\.[0-9]+)*")) for family, prefix in _FAMILY_OF_NAME]
_CUDNN_SUB = re.compile(r"libcudnn_([a-z_]+)\.so(\.[0-9]+)*")
# pip distributions whose names do not follow 'nvidia-<family>[-cuNN]'
_DIST_FAMILIES = {
    "nvidia-cuda-runtime": ("cudart",),
    "nvidia-cuda-nvrtc": ("nvrtc",),
    "nvidia-cuda-cupti": ("cupti",),
    "nvidia-cublas": ("cublas", "cublasLt"),
    "nvidia-cusparselt": ("cusparseLt",),
    "nvidia-nvshmem": ("nvshmem",),
    "nvidia-nvjitlink": ("nvjitlink",),
}
FAMILIES = [family for family, _ in _FAMILY_OF_NAME]


def family_of(name: str) -> str | None:
    """'cudnn' for libcudnn.so.9, 'cudnn_ops' for libcudnn_ops.so.9, None for other libraries."""
    sub = _CUDNN_SUB.fullmatch(name)
    if sub:
        return f"cudnn_{sub.group(1)}"
    return next((family for family, pattern in _NAME_RE if pattern.fullmatch(name)), None)


def families_of_dist(dist: str) -> tuple[str, ...]:
    """The CUDA families a pip distribution ships: nvidia-cudnn-cu13 -> ('cudnn',)."""
    name = re.sub(r"-cu[0-9]+$", "", re.sub(r"[-_.]+", "-", dist.lower()))
    if name in _DIST_FAMILIES:
        return _DIST_FAMILIES[name]
    base = name.removeprefix("nvidia-")
    return tuple(f for f in FAMILIES if f.lower() == base) if name.startswith("nvidia-") else ()
