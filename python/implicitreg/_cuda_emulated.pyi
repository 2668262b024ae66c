# _cuda_emulated: _cuda's functions with the kernels run on the CPU (csrc/cuda/emulation.h).
from implicitreg._cuda import *  # noqa: F403

def fail_allocations(n: int) -> None: ...
