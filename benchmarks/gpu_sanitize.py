"""A few small calls of every CUDA kernel, for compute-sanitizer (gpu_check.sh runs it under
memcheck and racecheck): the DMF step on each path (one problem per thread; per block in
shared memory; per block in global memory; sensing), crossings with snapshots, every metric,
svdvals on each path (2x2, local memory, bidiagonal QR, global memory), svd with vectors
(local and global memory, a zero column and a non-finite matrix), and the CP step with
gd and group_rmsprop (order 3; order 4; R > 256, more components than threads; a gradient
larger than shared memory, kept in global scratch), its loss and tensor."""

import cupy as cp
import numpy as np

import implicitreg as ir

rng = np.random.default_rng(0)
for m, n, depth in [(2, 2, 3), (5, 5, 3), (3, 6, 2), (48, 48, 3)]:
    p = ir.completion(rng.standard_normal((3, m, n)), rng.random((3, m, n)) < 0.6)
    f = ir.DeepFactorization.init(p, depth=depth, scale=0.5, backend="cuda")
    f.step(1e-2, 20, crossings=f.crossings((10.0, 1.0, 0.1)))
    metrics = ["loss", "svals", "erank", "rank", "balancedness", "fro", "entry:0,0"]
    f.measure(metrics + (["det"] if m == n else []))
p = ir.problems.random_sensing(3, 3, 1, 9, batch=3)
ir.DeepFactorization.init(p, depth=3, scale=0.5, backend="cuda").step(1e-3, 20)
for shape in [(2, 2), (8, 8), (13, 13), (40, 33)]:
    ir.svdvals(cp.asarray(rng.standard_normal((3,) + shape)))
for shape in [(5, 7), (13, 9)]:
    X = rng.standard_normal((3,) + shape)
    X[1, :, 0] = 0.0
    X[2, 0, 0] = np.nan
    ir.svd(cp.asarray(X), return_info=True)
# (dims, R, dtype, observed entries): 16*3 * 1024 float64 is 384 KiB of gradient, over any
# device's shared memory per block
for dims, R, dtype, n in [
    ((3, 4, 5), 6, "float64", 20),
    ((4, 3, 2, 3), 5, "float32", 30),
    ((8, 8, 8), 300, "float32", 50),
    ((16, 16, 16), 1024, "float64", 10),
]:
    targets, orders = ir.problems.random_cp_tensor(dims, 1, batch=3, seed=0)
    p = ir.tensor_completion(targets, ir.problems.observe_first(orders, n, dims))
    c = ir.CPFactorization.init(p, rank=R, scale=0.1, dtype=dtype, backend="cuda")
    for optimizer in ("gd", "group_rmsprop"):
        c.step(1e-2, 3, optimizer=optimizer)
    c.loss()
    c.tensor()
cp.cuda.get_current_stream().synchronize()
print("gpu_sanitize: every kernel ran")
