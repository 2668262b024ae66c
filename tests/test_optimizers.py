"""The optimizers of both models (gd, group_rmsprop, adam) on the cpu backend: against the
numpy oracle, closed forms of a first update, PyTorch's optimizers, the freeze rule with each,
their state through save/load and fit checkpoints, and the rule that one optimizer does not
continue another's state. (The CUDA kernels against cpu: test_cuda.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir
from conftest import max_rel_diff

OPTIMIZERS = ("gd", "group_rmsprop", "adam")
TOL = {"float64": 1e-12, "float32": 1e-4}
LR = {"gd": 5e-2, "group_rmsprop": 1e-2, "adam": 1e-2}


def _completion(m, n, batch, seed=0, density=0.7):
    rng = np.random.default_rng(seed)
    masks = rng.random((batch, m, n)) < density
    masks[:, 0, 0] = True
    return ir.completion(rng.standard_normal((batch, m, n)), masks)


# (m, n, depth, widths, sensing): compile-time sizes (2x2, 16x16), runtime sizes (26x31: wide
# enough for the packed products), sensing
DMF_CASES = {
    "2x2-d3": (2, 2, 3, None, False),
    "3x5-d3-w4": (3, 5, 3, [4, 4], False),
    "16x16-d2": (16, 16, 2, None, False),
    "26x31-d3-w40": (26, 31, 3, [40, 40], False),
    "sensing-3x4": (3, 4, 2, None, True),
}


def _dmf(case: str, backend="cpu", dtype="float64", batch=11, scale=0.5):
    m, n, depth, widths, sensing = DMF_CASES[case]
    p = (
        ir.problems.random_sensing(m, n, 1, 8, batch=batch, seed=3)
        if sensing
        else _completion(m, n, batch)
    )
    return ir.DeepFactorization.init(
        p, depth=depth, widths=widths, scale=scale, seed=1, dtype=dtype, backend=backend
    )


def _cp(backend="cpu", dtype="float64", batch=5, dims=(3, 4, 2), R=5):
    rng = np.random.default_rng(2)
    q = ir.tensor_completion(
        rng.standard_normal((batch,) + dims) / np.sqrt(R), rng.random((batch,) + dims) < 0.6
    )
    return ir.CPFactorization.init(q, rank=R, scale=0.5, seed=1, dtype=dtype, backend=backend)


def _state(model) -> dict:
    return {k: np.array(ir._backend.to_host(v)) for k, v in model._state().items()}


def _assert_state_close(a, b, rtol):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if k in ("status", "frozen_at", "t"):
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        else:
            err = max_rel_diff([sa[k]], [sb[k]])
            assert err <= rtol, f"{k} differs by {err:.3g} > {rtol:g}"


# --------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("case", list(DMF_CASES))
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dmf_matches_numpy_oracle(case, optimizer, dtype):
    cpu, ref = _dmf(case, "cpu", dtype), _dmf(case, "numpy", dtype)
    start = [W.copy() for W in cpu.factors]
    steps = 150 if dtype == "float64" else 60
    lr = LR[optimizer] * (0.2 if DMF_CASES[case][4] or DMF_CASES[case][0] >= 16 else 1.0)
    for f in (cpu, ref):
        f.step(np.geomspace(lr / 2, lr, f.batch), steps, optimizer=optimizer)
    _assert_state_close(cpu, ref, TOL[dtype])
    assert (cpu.status == "running").all()
    # not vacuous: the factors moved far more than the tolerance (float32: than its rounding)
    assert max_rel_diff(cpu.factors, start) > (1e-9 if dtype == "float64" else 1e-3)
    assert (ir._backend.to_host(cpu._t) == (0 if optimizer == "gd" else steps)).all()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cp_matches_numpy_oracle(optimizer, dtype):
    cpu, ref = _cp("cpu", dtype), _cp("numpy", dtype)
    start = [U.copy() for U in cpu.factors]
    for f in (cpu, ref):
        f.step(np.geomspace(1e-2, 2e-2, f.batch), 100, optimizer=optimizer)
    _assert_state_close(cpu, ref, TOL[dtype])
    assert max_rel_diff(cpu.factors, start) > (1e-9 if dtype == "float64" else 1e-3)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_first_updates_closed_forms(backend):
    """W = [0, 0], target [-3, -4] (depth 1): g = W - target = [3, 4], ||g||^2 = 25.
    group_rmsprop (lr 0.01, beta 0.99, eps 1e-6): v = 0.25, a = sqrt(0.25 / 0.01) + 1e-6,
    W = -0.01 / 5.000001 [3, 4]. adam: m = 0.1 g, s = 0.001 g^2, so the first update is
    lr g / (|g| + eps) entry by entry."""
    p = ir.completion(np.array([[-3.0, -4.0]]), np.ones((1, 2), dtype=bool))
    want = {
        "gd": -0.01 * np.array([3.0, 4.0]),
        "group_rmsprop": -0.01 / 5.000001 * np.array([3.0, 4.0]),
        "adam": -0.01 * np.array([3.0, 4.0]) / (np.array([3.0, 4.0]) + 1e-8),
    }
    for optimizer, w in want.items():
        f = ir.DeepFactorization(p, [np.zeros((1, 2))], backend=backend)
        f.step(0.01, 1, optimizer=optimizer)
        np.testing.assert_allclose(f.factors[0][0, 0], w, rtol=1e-14)
        assert f._t[0] == (0 if optimizer == "gd" else 1)
    g = f.factors[0][0, 0] - np.array([-3.0, -4.0])  # the second adam update, by hand
    f.step(0.01, 1, optimizer="adam")
    g1 = np.array([3.0, 4.0])
    m = 0.9 * 0.1 * g1 + 0.1 * g
    s = 0.999 * 0.001 * g1**2 + 0.001 * g**2
    w2 = want["adam"] - 0.01 / (1 - 0.9**2) * m / (np.sqrt(s) / np.sqrt(1 - 0.999**2) + 1e-8)
    np.testing.assert_allclose(f.factors[0][0, 0], w2, rtol=1e-12)


# --------------------------------------------------------------------------- PyTorch


def _torch():
    return pytest.importorskip(
        "torch", reason="PyTorch is not installed: its optimizers are the independent check"
    )


def _torch_run(torch, params, loss_fn, optimizer, lr, steps):
    opt = (
        torch.optim.SGD(params, lr=lr)
        if optimizer == "gd"
        else torch.optim.Adam(params, lr=lr, foreach=False)
    )
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
@pytest.mark.parametrize("case", ["2x2-d3", "3x5-d3-w4"])
def test_dmf_matches_torch_optimizers(optimizer, case):
    """1000 steps from one start, float64: every problem's loss is its own (a sum over the
    batch of per-problem losses gives each problem's gradient), so torch's batched parameters
    are the batch of problems."""
    torch = _torch()
    f = _dmf(case, batch=4)
    lr = 1e-2
    P = [torch.tensor(W.copy(), requires_grad=True) for W in f.factors]
    target = torch.tensor(f.problem.targets)
    mask = torch.tensor(f.problem.masks)

    def loss():
        E = P[0]
        for W in P[1:]:
            E = W @ E
        return 0.5 * torch.where(mask, E - target, 0.0).pow(2).sum()

    want = _torch_run(torch, P, loss, optimizer, lr, 1000)
    f.step(lr, 1000, optimizer=optimizer)
    assert (f.status == "running").all()
    err = max_rel_diff(f.factors, want)
    assert err <= 1e-10, f"{optimizer}: {err:.3g} from torch.optim"


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_cp_matches_torch_optimizers(optimizer):
    torch = _torch()
    c = _cp(batch=3)
    lr = 1e-2
    P = [torch.tensor(U.copy(), requires_grad=True) for U in c.factors]
    B = c.batch
    target = torch.tensor(np.broadcast_to(c.problem.targets, (B,) + c.dims).copy())
    mask = torch.tensor(np.broadcast_to(c.problem.masks, (B,) + c.dims).copy())
    n_obs = mask.reshape(B, -1).sum(axis=1)

    def loss():
        W = torch.einsum("bir,bjr,bkr->bijk", *P)
        sq = torch.where(mask, W - target, 0.0).pow(2).reshape(B, -1).sum(axis=1)
        return (sq / n_obs).sum()

    want = _torch_run(torch, P, loss, optimizer, lr, 1000)
    c.step(lr, 1000, optimizer=optimizer)
    assert (c.status == "running").all()
    err = max_rel_diff(c.factors, want)
    assert err <= 1e-10, f"{optimizer}: {err:.3g} from torch.optim"


# --------------------------------------------------------------------------- the freeze rule


def _alone(model, b, steps, optimizer, backend):
    """Problem b of model's start run alone for `steps` updates."""
    p = model.problem
    sub = (
        ir.completion(p.targets[[b]], p.masks[[b]])
        if p.kind == "completion"
        else ir.tensor_completion(p.targets[[b]], p.masks[[b]])
    )
    cls = type(model)
    return cls(sub, [W[[b]] for W in model.factors], backend=backend)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("model", ["dmf", "cp"])
def test_divergence_keeps_last_finite_iterate_and_state(optimizer, backend, model):
    """One problem given a huge lr goes non-finite: it is frozen as diverged at its last
    finite iterate, with that iterate's optimizer state (bit for bit the state of a run of it
    alone for that many updates); the others run on exactly as without it."""
    make = (
        (lambda: _dmf("2x2-d3", backend, batch=5))
        if model == "dmf"
        else (lambda: _cp(backend, batch=5))
    )
    f = make()
    start = make()
    lr = np.full(f.batch, LR[optimizer] / 5)
    b = 2
    lr[b] = 1e6 if optimizer == "gd" else 1e150
    steps = 40
    f.step(lr, steps, optimizer=optimizer)
    status = f.status
    assert status[b] == "diverged" and (np.delete(status, b) == "running").all()
    k = int(f.frozen_at[b])
    assert 0 < k < steps
    state = _state(f)
    assert all(np.isfinite(v[b]).all() for v in state.values())
    alone = _alone(start, b, k, optimizer, backend)
    alone.step(lr[b], k, optimizer=optimizer)
    assert alone.frozen_at[0] in (-1, k)  # its loss at iterate k may already overflow
    for key, v in _state(alone).items():
        if key in ("status", "frozen_at"):
            continue
        if backend == "cpu":
            np.testing.assert_array_equal(state[key][b], v[0], err_msg=key)
        else:  # the oracle's einsum may sum in another order for another batch size
            assert max_rel_diff([state[key][[b]]], [v]) <= 1e-12, key
    rest = [i for i in range(f.batch) if i != b]
    others = make()
    keep = np.asarray(rest)
    others = type(start)(
        ir.completion(others.problem.targets[keep], others.problem.masks[keep])
        if model == "dmf"
        else ir.tensor_completion(others.problem.targets[keep], others.problem.masks[keep]),
        [W[keep] for W in others.factors],
        backend=backend,
    )
    others.step(lr[keep], steps, optimizer=optimizer)
    for key, v in _state(others).items():
        if backend == "cpu":
            np.testing.assert_array_equal(state[key][keep], v, err_msg=key)
        else:
            assert max_rel_diff([state[key][keep].astype(float)], [v.astype(float)]) <= 1e-12
    before = _state(f)  # a frozen problem never changes again
    f.step(lr, 3, optimizer=optimizer)
    for key, v in _state(f).items():
        np.testing.assert_array_equal(v[b], before[key][b], err_msg=key)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("model", ["dmf", "cp"])
def test_tolerance_freezes_at_first_iterate_below_it(optimizer, model):
    f = _dmf("2x2-d3", batch=4) if model == "dmf" else _cp(batch=4)
    probe = _dmf("2x2-d3", batch=4) if model == "dmf" else _cp(batch=4)
    losses = [probe.loss().copy()]
    for _ in range(30):
        probe.step(LR[optimizer], 1, optimizer=optimizer)
        losses.append(probe.loss().copy())
    losses = np.array(losses)  # (31, B)
    b = int(np.argmax(losses[0] / losses[-1]))  # the problem that gains most: mid-way
    tol = float(np.sqrt(losses[0, b] * losses[-1, b]))
    assert (np.abs(losses / tol - 1) > 1e-9).all()  # no loss within rounding of tol
    f.step(LR[optimizer], 30, tol=tol, optimizer=optimizer)
    below = losses < tol
    first = np.where(below.any(axis=0), below.argmax(axis=0), -1)
    assert first[b] > 0
    np.testing.assert_array_equal(f.frozen_at, first)
    np.testing.assert_array_equal(f.status, np.where(first >= 0, "converged", "running"))
    t = ir._backend.to_host(f._t)
    np.testing.assert_array_equal(t, 0 if optimizer == "gd" else np.where(first >= 0, first, 30))


# --------------------------------------------------------------------------- state kept


@pytest.mark.parametrize("optimizer", ["group_rmsprop", "adam"])
@pytest.mark.parametrize("model", ["dmf", "cp"])
def test_save_load_resumes_bit_for_bit(optimizer, model, tmp_path):
    make = (lambda: _dmf("3x5-d3-w4")) if model == "dmf" else _cp
    whole, part = make(), make()
    whole.step(LR[optimizer], 60, optimizer=optimizer)
    part.step(LR[optimizer], 25, optimizer=optimizer)
    part.save(tmp_path / "m.npz")
    resumed = type(part).load(tmp_path / "m.npz")
    resumed.step(LR[optimizer], 35, optimizer=optimizer)
    for key, v in _state(whole).items():
        np.testing.assert_array_equal(_state(resumed)[key], v, err_msg=key)


@pytest.mark.parametrize("optimizer", ["group_rmsprop", "adam"])
@pytest.mark.parametrize("model", ["dmf", "cp"])
def test_fit_checkpoint_resumes_bit_for_bit(optimizer, model, tmp_path):
    make = (lambda: _dmf("2x2-d3")) if model == "dmf" else _cp
    kw = dict(
        lr=LR[optimizer],
        max_steps=200,
        log=ir.every(20),
        optimizer=optimizer,
        checkpoint=tmp_path / "fit.npz",
        checkpoint_every=0.0,
    )
    want = make().fit(**{**kw, "checkpoint": None}, progress=False)
    cut = make()
    advanced = []

    def stop_after_some(n):
        advanced.append(n)
        if sum(advanced) >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cut.fit(**kw, progress=stop_after_some)
    got = make().fit(**kw, progress=False)
    assert got.steps.tolist() == want.steps.tolist()
    for name in want.data:
        np.testing.assert_array_equal(got.data[name], want.data[name], err_msg=name)


def test_one_optimizer_does_not_continue_anothers_state():
    f = _dmf("2x2-d3")
    f.step(1e-2, 5, optimizer="group_rmsprop")
    with pytest.raises(ValueError, match="^optimizer: .*group_rmsprop.*reset_optimizer"):
        f.step(1e-2, 5, optimizer="adam")
    f.step(1e-2, 5, optimizer="gd")  # stateless: allowed, the state is kept as it was
    assert (f._t == 5).all()
    f.reset_optimizer()
    fresh = _dmf("2x2-d3")
    fresh.step(1e-2, 5, optimizer="group_rmsprop")
    fresh.step(1e-2, 5, optimizer="gd")
    f.step(1e-2, 5, optimizer="adam")
    fresh.reset_optimizer()
    fresh.step(1e-2, 5, optimizer="adam")
    for key, v in _state(fresh).items():
        np.testing.assert_array_equal(_state(f)[key], v, err_msg=key)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda f: f.step(1e-2, optimizer="sgd"), ValueError, "^optimizer: expected one of 'gd'"),
        (lambda f: f.step(1e-2, optimizer="adam", betas=(0.9,)), TypeError, "^betas"),
        (lambda f: f.step(1e-2, optimizer="adam", betas=(0.9, 1.0)), ValueError, "^betas"),
        (lambda f: f.step(1e-2, optimizer="adam", eps=-1.0), ValueError, "^eps"),
        (lambda f: f.step(1e-2, optimizer="group_rmsprop", beta=1.0), ValueError, "^beta"),
        (lambda f: f.fit(1e-2, 10, optimizer="Adam", progress=False), ValueError, "^optimizer"),
    ],
)
def test_bad_optimizer_arguments_are_refused_before_any_work(call, exc, match):
    f = _dmf("2x2-d3")
    before = [W.copy() for W in f.factors]
    with pytest.raises(exc, match=match):
        call(f)
    for W, W0 in zip(f.factors, before, strict=True):
        np.testing.assert_array_equal(W, W0)
    assert f.steps_done == 0
