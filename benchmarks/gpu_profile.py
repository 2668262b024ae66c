"""One call of each benchmarked CUDA kernel at the benchmark's sizes, for Nsight Compute
(gpu_check.sh --profile runs it under `ncu`, which reads the hardware counters of each kernel
once and names what bounds it: memory, latency, occupancy or issue):

    ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
        -k regex:'dmf_step|cp_step_kernel|svd' python benchmarks/gpu_profile.py

The cases are bench_gpu.py's: DMF 2x2 depth 3 float32 (B = 2**20, the thread path) and 16x16
depth 3 float32 (B = 2**14, the block path), the CP step with group_rmsprop at order 3 dim 8
R = 64 and order 4 dim 8 R = 512 (B = 4096), svdvals 8x8 and 32x32 float32. Each call runs a
few steps only: ncu replays every kernel once per counter pass.
"""

import cupy as cp
import numpy as np

import implicitreg as ir

for d, batch, steps in [(2, 2**20, 200), (16, 2**14, 20)]:
    if d == 2:
        p = ir.problems.paper_2x2(batch=batch)
    else:
        rng = np.random.default_rng(0)
        p = ir.completion(rng.standard_normal((batch, d, d)), rng.random((batch, d, d)) < 0.5)
    f = ir.DeepFactorization.init(p, depth=3, scale=0.3, dtype="float32", backend="cuda")
    f.step(1e-4, steps)
for dims, R, n in [((8, 8, 8), 64, 200), ((8, 8, 8, 8), 512, 2000)]:
    targets, orders = ir.problems.random_cp_tensor(dims, 1, batch=4096, seed=0)
    q = ir.tensor_completion(targets, ir.problems.observe_first(orders, n, dims))
    c = ir.CPFactorization.init(q, rank=R, scale=1e-2, dtype="float32", backend="cuda")
    c.step(1e-3, 5, optimizer="group_rmsprop")
for n, batch in [(8, 2**16), (32, 2**14)]:
    ir.svdvals(cp.asarray(np.random.default_rng(0).standard_normal((batch, n, n)), "float32"))
cp.cuda.get_current_stream().synchronize()
print("gpu_profile: every kernel ran")
