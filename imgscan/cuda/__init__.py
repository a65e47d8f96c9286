"""The CUDA stack torch really loads: which cuDNN/cuBLAS/NCCL/cudart, why, what version, and what is wrong."""
