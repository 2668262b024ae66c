"""PyTorch and JAX implementations of implicitreg's kernels, for the benchmarks only.

These are the "peers" that `implicitreg bench` (which loads this file from `--peers DIR` or
`benchmarks/`), `bench_cp_step.py`, `bench_svdvals.py` and `bench_gpu.py` time against the
compiled backends. Neither torch nor jax is a dependency of implicitreg: each is imported
only by `load_torch()` / `load_jax()`, which return the module or the reason it cannot run.

Every step implementation holds B problems from one start and has the same protocol:
`reset()` restores the start (not timed), `run(steps, lr)` does `steps` steps and returns
when the device is done (`steps` a whole multiple of `granule`), `factors()` gives host
copies. Each takes a device: torch "cpu" or "cuda", jax a platform name ("cpu", "gpu"), a
jax device, or None for jax's default device. float64 and float32 both work; the caller
checks the results against implicitreg before timing them.

- DMF step (E = W_N ... W_1, loss 1/2 sum over observed entries of (E - T)^2, plain GD):
  `TorchDMF(mode="closed")` (bmm with closed-form gradients: G = M * (E - T),
  dW_j = H_j P_{j-1}^T, H_{j-1} = W_j^T H_j), `mode="autograd"` (bmm forward, .backward(),
  SGD under no_grad), `mode="compiled"` (the closed form under torch.compile) and `JaxDMF`
  (vmap of one problem's jax.grad step, jit, lax.scan of `scan_steps` steps per call).
- svdvals: `torch_svdvals(X)` (torch.linalg.svdvals) and `jax_svdvals(X)` (jit of
  jnp.linalg.svd(compute_uv=False)): each returns a function of no arguments that computes
  the singular values of the batch X (copied to the device once) and waits for them.
- CP step (mean squared error over observed entries, no 1/2): `TorchCP`
  (full tensor by einsum, autograd, gd or GroupRMSprop in torch ops) and `JaxCP` (the same
  under jit + lax.scan of `scan_steps` steps per call).
"""

from __future__ import annotations

import os

import numpy as np

# ----------------------------------------------------------------------------- libraries


def load_torch():
    """(torch, None), or (None, why it cannot run here)."""
    try:
        import torch
    except ImportError:
        return None, "not installed"
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 on a GPU too
    return torch, None


def load_jax():
    """(jax, None) with float64 enabled, or (None, why it cannot run here)."""
    # before jax starts: do not take 75% of a GPU's memory up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
    except ImportError:
        return None, "not installed"
    jax.config.update("jax_enable_x64", True)  # float64 rows stay float64
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 on a GPU
    return jax, None


def _jax_device(jax, device):
    if device is None:
        return jax.devices()[0]
    if isinstance(device, str):
        return jax.devices(device)[0]
    return device


def _whole(steps: int, granule: int) -> int:
    if steps < 0 or steps % granule:
        raise ValueError(
            f"steps: expected a non-negative multiple of {granule} (the steps of "
            f"one compiled scan), got {steps}"
        )
    return steps // granule


# ----------------------------------------------------------------------------- DMF step


def _closed_form_inplace(torch, Ws, T, M, lr):
    """One GD step, in place: P_j = W_{j+1} P_{j-1} forward, G = M * (E - T), then from the
    top dW_j = H_j P_{j-1}^T with H_N = G, H_{j-1} = W_j^T H_j (old W_j)."""
    P = [Ws[0]]
    for W in Ws[1:]:
        P.append(torch.bmm(W, P[-1]))
    H = M * (P[-1] - T)
    for j in range(len(Ws) - 1, -1, -1):
        if j == 0:
            Ws[0].add_(H, alpha=-lr)
        else:
            g = torch.bmm(H, P[j - 1].transpose(1, 2))
            H = torch.bmm(Ws[j].transpose(1, 2), H)
            Ws[j].add_(g, alpha=-lr)


def _closed_form_step(torch):
    def step(Ws, T, M, lr):
        """The closed-form step as a function (new factors out) for torch.compile."""
        P = [Ws[0]]
        for W in Ws[1:]:
            P.append(torch.bmm(W, P[-1]))
        H = M * (P[-1] - T)
        new = list(Ws)
        for j in range(len(Ws) - 1, -1, -1):
            g = H if j == 0 else torch.bmm(H, P[j - 1].transpose(1, 2))
            if j:
                H = torch.bmm(Ws[j].transpose(1, 2), H)
            new[j] = Ws[j] - lr * g
        return new

    return step


class TorchDMF:
    """B factorizations as batched (B, d_j, d_{j-1}) tensors: targets and masks (B|1, m, n)
    (a leading 1 broadcasts), start the factors W_1 ... W_N."""

    granule = 1

    def __init__(
        self, targets, masks, start, dtype="float64", mode="closed", device="cpu", torch=None
    ):
        if mode not in ("closed", "autograd", "compiled"):
            raise ValueError(f"mode: expected 'closed', 'autograd' or 'compiled', got {mode!r}")
        torch = self.torch = torch or load_torch()[0]
        self.name, self.mode = f"torch-{mode}" if mode != "compiled" else "torch-compile", mode
        self.device = torch.device(device)
        tdt = getattr(torch, str(np.dtype(dtype)))
        self.T = torch.as_tensor(np.asarray(targets, dtype=dtype), device=self.device)
        self.M = torch.as_tensor(np.asarray(masks).astype(dtype), device=self.device)
        self.start = [torch.as_tensor(np.asarray(W), dtype=tdt, device=self.device) for W in start]
        self.W = [S.clone().requires_grad_(mode == "autograd") for S in self.start]
        if mode == "compiled":
            self.fn = torch.compile(_closed_form_step(torch), dynamic=False)
            self.lr_tensors = {}

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reset(self):
        with self.torch.no_grad():
            for W, S in zip(self.W, self.start, strict=True):
                W.copy_(S)
                W.grad = None
        self.sync()

    def run(self, steps, lr):
        torch = self.torch
        if self.mode == "autograd":
            for _ in range(steps):
                E = self.W[0]
                for W in self.W[1:]:
                    E = torch.bmm(W, E)
                loss = 0.5 * (self.M * (E - self.T)).square().sum()
                loss.backward()
                with torch.no_grad():
                    for W in self.W:
                        W.add_(W.grad, alpha=-lr)
                        W.grad = None
        elif self.mode == "closed":
            with torch.no_grad():
                for _ in range(steps):
                    _closed_form_inplace(torch, self.W, self.T, self.M, lr)
        else:
            # lr as a 0-d tensor: a new value does not recompile
            lr_t = self.lr_tensors.get(lr)
            if lr_t is None:
                lr_t = self.lr_tensors[lr] = torch.tensor(
                    lr, dtype=self.start[0].dtype, device=self.device
                )
            Ws = list(self.W)
            with torch.no_grad():
                for _ in range(steps):
                    Ws = self.fn(Ws, self.T, self.M, lr_t)
                for W, new in zip(self.W, Ws, strict=True):
                    W.copy_(new)
        self.sync()

    def factors(self):
        return [W.detach().cpu().numpy().copy() for W in self.W]


class JaxDMF:
    """vmap of one problem's jax.grad step, jit, lax.scan of scan_steps steps per call;
    inputs as TorchDMF."""

    name = "jax"

    def __init__(
        self, targets, masks, start, dtype="float64", device=None, scan_steps=50, jax=None
    ):
        jax = self.jax = jax or load_jax()[0]
        jnp = jax.numpy
        dev = _jax_device(jax, device)
        self.put = lambda a: jax.device_put(a, dev)  # noqa: E731
        self.dtype, self.granule = np.dtype(dtype), int(scan_steps)
        self.start = tuple(self.put(np.asarray(W, dtype=dtype)) for W in start)
        self.W = self.start
        targets, masks = np.asarray(targets), np.asarray(masks)
        shared = (targets.shape[0] == 1, masks.shape[0] == 1)
        self.T = self.put((targets[0] if shared[0] else targets).astype(dtype))
        self.M = self.put((masks[0] if shared[1] else masks).astype(dtype))

        def loss(Ws, T, M):
            E = Ws[0]
            for W in Ws[1:]:
                E = W @ E
            return 0.5 * jnp.sum(M * (E - T) ** 2)

        def step(Ws, T, M, lr):
            g = jax.grad(loss)(Ws, T, M)
            return tuple(W - lr * gW for W, gW in zip(Ws, g, strict=True))

        vstep = jax.vmap(
            step, in_axes=(0, None if shared[0] else 0, None if shared[1] else 0, None)
        )
        length = self.granule

        def scan(Ws, T, M, lr):
            body = lambda c, _: (vstep(c, T, M, lr), None)  # noqa: E731
            return jax.lax.scan(body, Ws, None, length=length)[0]

        self.fn = jax.jit(scan)

    def reset(self):
        self.W = self.start  # immutable arrays: nothing to copy

    def run(self, steps, lr):
        calls = _whole(steps, self.granule)
        lr = self.put(np.asarray(lr, dtype=self.dtype))
        Ws = self.W
        for _ in range(calls):
            Ws = self.fn(Ws, self.T, self.M, lr)
        self.W = self.jax.block_until_ready(Ws)

    def factors(self):
        return [np.array(W) for W in self.W]


# ----------------------------------------------------------------------------- svdvals


def torch_svdvals(X, device="cpu", torch=None):
    """A function () -> torch.linalg.svdvals(X) (a torch tensor, computed and waited for);
    X (B, m, n) is copied to the device once."""
    torch = torch or load_torch()[0]
    Xt = torch.as_tensor(np.asarray(X), device=torch.device(device))
    sync = torch.cuda.synchronize if Xt.is_cuda else (lambda: None)

    def fn():
        s = torch.linalg.svdvals(Xt)
        sync()
        return s

    return fn


def jax_svdvals(X, device=None, jax=None):
    """A function () -> the singular values of X by jax.jit of jnp.linalg.svd(compute_uv=
    False), computed and waited for (compiled at its first call)."""
    jax = jax or load_jax()[0]
    Xj = jax.device_put(np.asarray(X), _jax_device(jax, device))
    f = jax.jit(lambda x: jax.numpy.linalg.svd(x, compute_uv=False))
    return lambda: f(Xj).block_until_ready()


# ----------------------------------------------------------------------------- CP step


def _einsum_spec(order: int) -> str:
    letters = "ijklmn"[:order]
    return ",".join(f"b{c}r" for c in letters) + "->b" + letters


def _cp_inputs(targets, masks, start, dtype):
    targets, masks = np.asarray(targets, dtype=dtype), np.asarray(masks).astype(dtype)
    order = len(start)
    if targets.ndim != order + 1 or masks.ndim != order + 1:
        raise ValueError(
            f"targets, masks: expected (B|1, d_1, ..., d_{order}) tensors for "
            f"{order} factors, got shapes {targets.shape} and {masks.shape}"
        )
    return targets, masks, order


class TorchCP:
    """The batched CP step in PyTorch: factors (B, d_n, R) leaves, the full tensor by einsum,
    autograd, the update ("gd" or "group_rmsprop", per-problem state) in torch ops.
    targets and masks (B|1, d_1, ..., d_N), the full tensors."""

    granule = 1
    name = "torch"

    def __init__(
        self,
        targets,
        masks,
        start,
        optimizer="gd",
        beta=0.99,
        eps=1e-6,
        dtype="float64",
        device="cpu",
        torch=None,
    ):
        torch = self.torch = torch or load_torch()[0]
        targets, masks, order = _cp_inputs(targets, masks, start, dtype)
        self.device = torch.device(device)
        self.rmsprop, self.beta, self.eps = _optimizer(optimizer), beta, eps
        self.target = torch.as_tensor(targets, device=self.device)
        self.mask = torch.as_tensor(masks, device=self.device)
        self.axes = tuple(range(1, order + 1))
        self.n_obs = self.mask.sum(dim=self.axes).clamp_min(1.0)
        self.spec = _einsum_spec(order)
        tdt = getattr(torch, str(np.dtype(dtype)))
        self.start = [torch.as_tensor(np.asarray(U), dtype=tdt, device=self.device) for U in start]
        self.reset()

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reset(self):
        self.U = [S.clone().requires_grad_(True) for S in self.start]
        self.v = self.torch.zeros(
            self.start[0].shape[0], dtype=self.start[0].dtype, device=self.device
        )
        self.t = 0
        self.sync()

    def _losses(self, U):
        res = (self.torch.einsum(self.spec, *U) - self.target) * self.mask
        return (res * res).sum(dim=self.axes) / self.n_obs

    def losses(self) -> np.ndarray:
        """(B,) mean squared error over the observed entries at the current factors."""
        with self.torch.no_grad():
            return self._losses(self.U).cpu().numpy()

    def run(self, steps, lr):
        torch, U, v = self.torch, self.U, self.v
        for _ in range(steps):
            grads = torch.autograd.grad(self._losses(U).sum(), U)
            with torch.no_grad():
                if self.rmsprop:
                    sq = sum((g * g).sum(dim=(1, 2)) for g in grads)
                    v.mul_(self.beta).add_(sq, alpha=1.0 - self.beta)
                    self.t += 1
                    bias = 1.0 - self.beta**self.t
                    step = (lr / (torch.sqrt(v / bias) + self.eps))[:, None, None]
                else:
                    step = lr
                for u, g in zip(U, grads, strict=True):
                    u.sub_(step * g)
        self.sync()

    def factors(self):
        return [U.detach().cpu().numpy().copy() for U in self.U]


class JaxCP:
    """The batched CP step under jax.jit + lax.scan of scan_steps steps per call, jax.grad;
    inputs as TorchCP."""

    name = "jax"

    def __init__(
        self,
        targets,
        masks,
        start,
        optimizer="gd",
        beta=0.99,
        eps=1e-6,
        dtype="float64",
        device=None,
        scan_steps=10,
        jax=None,
    ):
        jax = self.jax = jax or load_jax()[0]
        jnp = jax.numpy
        targets, masks, order = _cp_inputs(targets, masks, start, dtype)
        dev = _jax_device(jax, device)
        self.put = lambda a: jax.device_put(a, dev)  # noqa: E731
        self.dtype, self.granule = np.dtype(dtype), int(scan_steps)
        target, mask = self.put(targets), self.put(masks)
        axes = tuple(range(1, order + 1))
        n_obs = jnp.maximum(mask.sum(axis=axes), 1.0)
        spec, rmsprop = _einsum_spec(order), _optimizer(optimizer)
        self.start = tuple(self.put(np.asarray(U, dtype=dtype)) for U in start)
        self.batch = self.start[0].shape[0]

        def losses(U):
            res = (jnp.einsum(spec, *U) - target) * mask
            return (res * res).sum(axis=axes) / n_obs

        def body(carry, lr):
            U, v, t = carry
            grads = jax.grad(lambda U: losses(U).sum())(U)
            if rmsprop:
                sq = sum((g * g).sum(axis=(1, 2)) for g in grads)
                v = beta * v + (1.0 - beta) * sq
                t = t + 1.0
                step = lr / (jnp.sqrt(v / (1.0 - jnp.power(beta, t))) + eps)
            else:
                step = jnp.full(v.shape, lr, dtype=v.dtype)
            U = tuple(u - step[:, None, None] * g for u, g in zip(U, grads, strict=True))
            return (U, v, t), None

        length = self.granule

        def scan(carry, lr):
            return jax.lax.scan(lambda c, _: body(c, lr), carry, None, length=length)[0]

        self.losses_fn, self.fn = jax.jit(losses), jax.jit(scan)
        self.reset()

    def reset(self):
        jnp = self.jax.numpy
        # immutable arrays: the start itself; t counts steps for the bias correction
        self.state = (
            self.start,
            self.put(jnp.zeros(self.batch, dtype=self.dtype)),
            self.put(jnp.zeros((), dtype=self.dtype)),
        )

    def run(self, steps, lr):
        calls = _whole(steps, self.granule)
        lr = self.put(np.asarray(lr, dtype=self.dtype))
        state = self.state
        for _ in range(calls):
            state = self.fn(state, lr)
        self.state = self.jax.block_until_ready(state)

    def losses(self) -> np.ndarray:
        """(B,) mean squared error over the observed entries at the current factors."""
        return np.asarray(self.losses_fn(self.state[0]))

    def factors(self):
        return [np.array(U) for U in self.state[0]]


def _optimizer(optimizer: str) -> bool:
    """True for group_rmsprop, False for gd."""
    if optimizer not in ("gd", "group_rmsprop"):
        raise ValueError(f"optimizer: expected 'gd' or 'group_rmsprop', got {optimizer!r}")
    return optimizer == "group_rmsprop"
