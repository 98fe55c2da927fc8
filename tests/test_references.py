"""conformance.references checked directly against torch.optim.SGD (not through the conformance
harness): each documentation-derived SGD gives torch's parameters and momentum buffers within a
few ULP, validates as torch does (same exception classes), and keeps the documented contracts
(closure, state dicts, add_param_group). Also the four mutants added to conformance.mutants for
issue 9, each shown to differ from torch in the documented way.

Errors are measured in ULPs of the magnitude of the terms an element sums (the docs' recurrence
run on absolute values: |g| + λ|θ|, μ|b| + |1 − τ|·|g|, …), not of the result alone: where
θ − γg cancels, one rounding of γg is many ULPs of the small result yet is correct rounding.
Each step starts from torch's values (the reference's parameters and buffers are overwritten
with torch's), as PyTorch's own optimizer tests do, so the budget is per step.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from conformance import references
from conformance.families.sgd import torch_writes_grad
from conformance.mutants import (
    AcceptsInvalidConfig,
    AddParamGroupNoDefaults,
    BufferStoredNotRead,
    RejectsZeroLr,
)
from conformance.references import (
    BookkeepingSGD,
    ForeachSGD,
    MinimalSGD,
    TwiceRoundedDocSGD,
)

ULP_BUDGET = 4  # per step, in ULPs of the terms' magnitude (two roundings per x + a·y: ≤ ~3)


def _compiled() -> type:
    from conformance import compiled_reference  # importing it compiles: only when needed

    if compiled_reference.COMPILE_SKIP_REASON is not None:
        pytest.skip(compiled_reference.COMPILE_SKIP_REASON)
    return compiled_reference.CompiledStepSGD


# Which references must also be bitwise torch: they use torch's ops (add with alpha, mul_) in
# the docs' order, so they round exactly as torch's for-loop does on any CPU capability.
FACTORIES: dict[str, tuple[Callable[[], type], bool]] = {
    "MinimalSGD": (lambda: MinimalSGD, True),
    "BookkeepingSGD": (lambda: BookkeepingSGD, True),
    "ForeachSGD": (lambda: ForeachSGD, True),
    "TwiceRoundedDocSGD": (lambda: TwiceRoundedDocSGD, False),
    "CompiledStepSGD": (_compiled, False),
}


def test_references_are_listed() -> None:
    module = {"CompiledStepSGD": "compiled_reference"}
    expected = tuple(f"conformance.{module.get(name, 'references')}:{name}" for name in FACTORIES)
    assert expected == tuple(references.REFERENCES)


# --------------------------------------------------------------------------------------------
# ULPs
# --------------------------------------------------------------------------------------------


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many steps between representable floats of their dtype separate a and b,
    elementwise: 0 for equal values, 1 for neighbours (−0 and +0 are neighbours)."""
    assert a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
    width = 8 * a.itemsize
    unsigned = np.uint32 if width == 32 else np.uint64

    def ordered(x: np.ndarray) -> np.ndarray:
        """The float's position on the number line, as an exact Python integer."""
        bits = np.ascontiguousarray(x).view(unsigned).astype(object)
        magnitude = bits & ((1 << (width - 1)) - 1)
        return np.where(bits >> (width - 1) == 1, -magnitude - 1, magnitude)

    return np.abs(ordered(a) - ordered(b)).astype(np.float64)


def scaled_ulps(actual: Tensor, expected: Tensor, magnitude: np.ndarray) -> float:
    """The largest |actual − expected| in ULPs (of the tensors' dtype) of `magnitude`, the
    elementwise size of the terms the value sums."""
    a, e = actual.detach().numpy(), expected.detach().numpy()
    assert a.dtype == e.dtype and a.shape == e.shape
    if a.size == 0:
        return 0.0
    spacing = np.spacing(np.maximum(magnitude, np.abs(e)).astype(a.dtype)).astype(np.float64)
    return float((np.abs(a.astype(np.float64) - e.astype(np.float64)) / spacing).max())


def test_ulp_helpers() -> None:
    x = np.array([1.0, -0.0, 0.0, -1.0], dtype=np.float32)
    y = np.array([np.nextafter(np.float32(1), np.float32(2)), 0.0, 0.0, -1.0], dtype=np.float32)
    assert ulp_distance(x, y).tolist() == [1, 1, 0, 0]
    tiny = np.array([5e-324])
    assert ulp_distance(tiny, -tiny).tolist() == [3]  # −min, −0, +0, +min
    big = np.array([1e300])
    assert ulp_distance(big, -big)[0] == 2 * ulp_distance(big, np.zeros(1))[0] + 1
    assert scaled_ulps(torch.tensor([1e-8]), torch.tensor([0.0]), np.array([1.0])) < 1


# --------------------------------------------------------------------------------------------
# The references against torch, step by step
# --------------------------------------------------------------------------------------------

SHAPES = [(16, 17), (5,), (1,), (2, 3, 2)]
# Which parameters have no gradient at each step (None: skipped entirely, as torch does); the
# last parameter gets an all-zero gradient at step 1 (not None: it still decays and moves).
NONE_GRAD = [{1}, {2}, {3}]

MOMENTA: list[dict[str, Any]] = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 1.2, "dampening": 1.0},
    {"momentum": 0.8, "nesterov": True},
]
CONFIGS: list[dict[str, Any]] = [
    {
        **base,
        **({"weight_decay": 0.1} if decay else {}),
        **({"maximize": True} if maximize else {}),
        **({"lr": torch.tensor(0.1, dtype=torch.float64)} if tensor_lr else {}),
    }
    for base, decay, maximize, tensor_lr in itertools.product(
        MOMENTA, [False, True], [False, True], [False, True]
    )
]


def _config_id(config: dict[str, Any]) -> str:
    parts = [f"{k}={'tensor' if isinstance(v, Tensor) else v}" for k, v in config.items()]
    return ",".join(parts) or "plain"


def _magnitudes(
    p: Tensor, grad: Tensor, buf: Tensor | None, group: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The docs' recurrence on absolute values in float64: the size of the terms θ_t and b_t
    sum (b is None where momentum is 0)."""
    g = np.abs(grad.numpy()).astype(np.float64)
    if group["weight_decay"] != 0:
        g = g + group["weight_decay"] * np.abs(p.detach().numpy())
    b = None
    if group["momentum"] != 0:
        mu = group["momentum"]
        b = g if buf is None else mu * np.abs(buf.numpy()) + abs(1 - group["dampening"]) * g
        g = g + mu * b if group["nesterov"] else b
    return np.abs(p.detach().numpy()) + float(group["lr"]) * g, b


def _buffer(opt: torch.optim.Optimizer, p: Tensor) -> Tensor | None:
    return opt.state[p].get("momentum_buffer") if p in opt.state else None


def _lockstep(
    cls: type,
    config: dict[str, Any],
    dtype: torch.dtype,
    *,
    bitwise: bool,
    steps: int = 3,
    seed: int = 0,
) -> float:
    """Steps torch.optim.SGD and `cls` on the same parameters and gradients; after each step
    checks every parameter and buffer (within ULP_BUDGET of the terms' magnitude, or bit for
    bit), that .grad is untouched, then copies torch's values into `cls`'s. Two groups: the
    second overrides lr; the first's lr is changed between steps 1 and 2, as a scheduler does
    (to a tensor where the config's lr is one). Returns the largest error seen, in ULPs."""
    generator = torch.Generator().manual_seed(seed)
    initial = [torch.randn(shape, generator=generator, dtype=dtype) for shape in SHAPES]
    theirs = [x.clone().requires_grad_() for x in initial]
    mine = [x.clone().requires_grad_() for x in initial]
    options = {"lr": 0.1, **config}

    def groups(params: list[Tensor]) -> list[dict[str, Any]]:
        return [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}]

    opt_theirs = torch.optim.SGD(groups(theirs), **options)
    opt_mine = cls(groups(mine), **options)
    worst = 0.0
    for step in range(steps):
        if step == 2:
            new_lr = 0.03
            for opt in (opt_theirs, opt_mine):
                opt.param_groups[0]["lr"] = (
                    torch.tensor(new_lr, dtype=torch.float64)
                    if isinstance(config.get("lr"), Tensor)
                    else new_lr
                )
        expected_magnitudes = []
        for i, (a, b) in enumerate(zip(theirs, mine, strict=True)):
            if i in NONE_GRAD[step]:
                a.grad = b.grad = None
                expected_magnitudes.append((None, None))
                continue
            grad = torch.randn(a.shape, generator=generator, dtype=dtype)
            if step == 1 and i == len(SHAPES) - 1:
                grad = torch.zeros_like(grad)
            a.grad, b.grad = grad.clone(), grad.clone()
            group = opt_theirs.param_groups[0 if i < 2 else 1]
            expected_magnitudes.append(_magnitudes(a, grad, _buffer(opt_theirs, a), group))
        grads_before = [None if b.grad is None else b.grad.clone() for b in mine]
        assert opt_theirs.step() is None
        assert opt_mine.step() is None
        for i, (a, b) in enumerate(zip(theirs, mine, strict=True)):
            where = f"step {step}, parameter {i} {tuple(a.shape)}"
            buf_a, buf_b = _buffer(opt_theirs, a), _buffer(opt_mine, b)
            assert (buf_a is None) == (buf_b is None), where
            if bitwise:
                assert torch.equal(a, b), where
                assert buf_a is None or torch.equal(buf_a, buf_b), where
            else:
                p_mag, b_mag = expected_magnitudes[i]
                if p_mag is None:
                    assert torch.equal(a, b), where  # no gradient: untouched
                    continue
                errors = [scaled_ulps(b, a, p_mag)]
                if buf_a is not None:
                    errors.append(scaled_ulps(buf_b, buf_a, b_mag))
                assert max(errors) <= ULP_BUDGET, (where, errors)
                worst = max(worst, *errors)
            if not _foreach_writes_grad(cls, opt_theirs.param_groups[0 if i < 2 else 1]):
                assert (b.grad is None and grads_before[i] is None) or torch.equal(
                    b.grad, grads_before[i]
                ), f"{where}: .grad changed"
        with torch.no_grad():  # the next step starts from torch's values
            for a, b in zip(theirs, mine, strict=True):
                b.copy_(a)
                buf_a, buf_b = _buffer(opt_theirs, a), _buffer(opt_mine, b)
                if buf_a is not None:
                    buf_b.copy_(buf_a)
    return worst


def _foreach_writes_grad(cls: type, group: dict[str, Any]) -> bool:
    """torch 2.13's foreach path writes g + μb into .grad for nesterov without maximize or
    weight decay (see test_foreach_sgd_writes_grad_as_torch_does)."""
    return cls is ForeachSGD and torch_writes_grad(group)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_reference_matches_torch(name: str, dtype: torch.dtype) -> None:
    factory, bitwise = FACTORIES[name]
    cls = factory()
    worst = 0.0
    for config in CONFIGS:
        try:
            worst = max(worst, _lockstep(cls, config, dtype, bitwise=bitwise))
        except AssertionError as error:
            raise AssertionError(f"{name} {_config_id(config)}: {error}") from error
    assert worst <= ULP_BUDGET


@pytest.mark.parametrize("name", ["TwiceRoundedDocSGD", "CompiledStepSGD"])
def test_twice_rounded_references_are_not_bitwise(name: str) -> None:
    """Where torch fuses x + a·y (AVX2/AVX512), two roundings differ somewhere: the ULP
    comparison above is not vacuous."""
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("torch's generic kernels round twice too")
    cls = FACTORIES[name][0]()
    config = {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1}
    with pytest.raises(AssertionError):
        for seed in range(5):
            _lockstep(cls, config, torch.float32, bitwise=True, seed=seed)


def test_float32_parameters_with_a_float64_tensor_lr_use_float32_arithmetic() -> None:
    """float(lr), then float32 arithmetic, is torch's result bit for bit; multiplying by the
    float64 tensor itself is not (checked here so the references' choice stays justified)."""
    generator = torch.Generator().manual_seed(3)
    p0 = torch.randn(4096, generator=generator)
    grad = torch.randn(4096, generator=generator)
    lr = torch.tensor(0.3, dtype=torch.float64)
    p = p0.clone().requires_grad_()
    p.grad = grad
    torch.optim.SGD([p], lr=lr).step()
    assert torch.equal(p.detach(), p0.clone().add_(grad, alpha=-float(lr)))
    assert not torch.equal(p.detach(), p0 - lr * grad)
    q = p0.clone().requires_grad_()
    q.grad = grad.clone()
    MinimalSGD([q], lr=lr).step()
    assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------
# Construction: torch's exception classes, torch's accepted boundaries
# --------------------------------------------------------------------------------------------

INVALID: list[dict[str, Any]] = [
    {"lr": -1},
    {"lr": -1e-9},
    {"lr": torch.tensor(-0.5)},
    {"lr": torch.tensor([0.1, 0.2])},
    {"momentum": -0.1},
    {"weight_decay": -1e-3},
    {"nesterov": True},
    {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
    {"nesterov": True, "momentum": 0.0, "dampening": 0.0},
]
VALID: list[dict[str, Any]] = [
    {"lr": 0},
    {"lr": 0.0, "momentum": 0.9},
    {"lr": torch.tensor(0.0)},
    {"lr": torch.tensor([0.1], dtype=torch.float64)},
    {"momentum": 0},
    {"momentum": 0.9, "dampening": 1},
    {"dampening": 1.0},
    {"momentum": 1.5, "dampening": -0.5},
    {"weight_decay": 0},
    {"nesterov": True, "momentum": 0.9, "dampening": 0},
    {"maximize": True},
]


def _error_class(build: Callable[[], Any]) -> type[BaseException] | None:
    try:
        build()
    except Exception as error:  # the class is compared
        return type(error)
    return None


@pytest.mark.parametrize("name", list(FACTORIES))
def test_validation_raises_what_torch_raises(name: str) -> None:
    cls = FACTORIES[name][0]()
    for kwargs, invalid in [(k, True) for k in INVALID] + [(k, False) for k in VALID]:
        p = torch.zeros(3, requires_grad=True)
        expected = _error_class(lambda kwargs=kwargs, p=p: torch.optim.SGD([p], **kwargs))
        assert expected is (ValueError if invalid else None), kwargs
        assert _error_class(lambda kwargs=kwargs, p=p: cls([p], **kwargs)) is expected, kwargs
    assert _error_class(lambda: cls([])) is _error_class(lambda: torch.optim.SGD([]))
    leaf = torch.zeros(2, requires_grad=True)
    assert _error_class(lambda: cls([leaf * 2])) is ValueError  # a non-leaf tensor
    assert _error_class(lambda: cls([{"params": [leaf]}, {"params": [leaf]}])) is ValueError


def test_minimal_sgd_stores_only_the_documented_hyperparameters() -> None:
    p = torch.zeros(2, requires_grad=True)
    opt = MinimalSGD([p], lr=0.1, momentum=0.9)
    assert set(opt.defaults) == {
        "lr",
        "momentum",
        "dampening",
        "weight_decay",
        "nesterov",
        "maximize",
    }
    assert set(opt.param_groups[0]) == set(opt.defaults) | {"params"}
    with pytest.raises(ValueError, match="lr must be >= 0, got -1"):
        MinimalSGD([p], lr=-1)
    with pytest.raises(TypeError):
        MinimalSGD([p], foreach=True)  # type: ignore[call-arg]
    p.grad = torch.ones(2)
    plain = MinimalSGD([p], lr=0.1)
    plain.step()
    assert p not in plain.state  # momentum 0 makes no state: torch's buffers exist only with μ


# --------------------------------------------------------------------------------------------
# The documented contracts: closure, state dicts, add_param_group
# --------------------------------------------------------------------------------------------


def _within(a: Tensor, b: Tensor, bitwise: bool) -> bool:
    if bitwise:
        return torch.equal(a, b)
    scale = np.maximum(np.abs(a.detach().numpy()), np.abs(b.detach().numpy())).max()
    return scaled_ulps(a, b, np.full(a.shape, 4 * scale)) <= ULP_BUDGET


@pytest.mark.parametrize("name", list(FACTORIES))
def test_step_with_closure(name: str) -> None:
    """The closure runs with gradients enabled (it calls backward inside step's no_grad), its
    loss is returned, and the step uses the gradients it computed."""
    factory, bitwise = FACTORIES[name]
    cls = factory()
    results = []
    for make in (torch.optim.SGD, cls):
        w = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
        opt = make([w], lr=0.1, momentum=0.9, weight_decay=0.01)
        seen = []

        def closure(
            w: Tensor = w, opt: torch.optim.Optimizer = opt, seen: list[bool] = seen
        ) -> Tensor:
            seen.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = (w * w * torch.tensor([1.0, 2.0, 3.0], dtype=w.dtype)).sum()
            loss.backward()
            return loss

        losses = [opt.step(closure) for _ in range(3)]
        assert seen == [True] * 3
        results.append((w.detach().clone(), losses))
    (w_t, losses_t), (w_m, losses_m) = results
    compared = 3 if bitwise else 1  # later losses see parameters a few ULP apart
    assert all(
        torch.equal(x, y) for x, y in zip(losses_t[:compared], losses_m[:compared], strict=True)
    )
    assert _within(w_m, w_t, bitwise)
    assert all(isinstance(loss, Tensor) and loss.dim() == 0 for loss in losses_m)


def _trained(
    make: Callable[..., torch.optim.Optimizer], params: list[Tensor]
) -> torch.optim.Optimizer:
    opt = make(params, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)
    for scale in (1.0, -0.5):
        for p in params:
            p.grad = torch.full_like(p, scale) + p.detach()
        opt.step()
    return opt


def _continue(opt: torch.optim.Optimizer, params: list[Tensor]) -> list[Tensor]:
    for scale in (0.25, 2.0):
        for p in params:
            p.grad = torch.full_like(p, scale) - p.detach()
        opt.step()
    return [p.detach().clone() for p in params] + [
        opt.state[p]["momentum_buffer"].clone() for p in params
    ]


def _params() -> list[Tensor]:
    return [
        torch.tensor([0.5, -1.25, 2.0], requires_grad=True),
        torch.tensor([[1.5], [-0.75]], requires_grad=True),
    ]


@pytest.mark.parametrize("source", ["own", "torch"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip(name: str, source: str) -> None:
    """A fresh optimizer loaded from a (deep-copied) state dict, its own or torch's, continues
    as torch continues: the momentum buffers travel."""
    factory, bitwise = FACTORIES[name]
    cls = factory()
    reference_params = _params()
    expected = _continue(_trained(torch.optim.SGD, reference_params), reference_params)
    params = _params()
    saved = copy.deepcopy(
        _trained(cls if source == "own" else torch.optim.SGD, params).state_dict()
    )
    opt = cls(params, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)
    opt.load_state_dict(saved)
    got = _continue(opt, params)
    assert all(_within(g, e, bitwise) for g, e in zip(got, expected, strict=True))
    # and the other way: torch loads the reference's state dict
    params = _params()
    theirs = torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)
    theirs.load_state_dict(copy.deepcopy(_trained(cls, params).state_dict()))
    got = _continue(theirs, params)
    assert all(_within(g, e, bitwise) for g, e in zip(got, expected, strict=True))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_add_param_group_fills_defaults(name: str) -> None:
    factory, bitwise = FACTORIES[name]
    cls = factory()
    outcomes = []
    for make in (torch.optim.SGD, cls):
        first, later = _params()
        opt = make([first], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
        opt.add_param_group({"params": [later], "lr": 0.2})
        group = opt.param_groups[1]
        assert group["lr"] == 0.2 and group["momentum"] == 0.9 and group["nesterov"] is True
        for step in range(2):
            for p in (first, later):
                p.grad = torch.full_like(p, 1.0 + step)
            opt.step()
        outcomes.append([first.detach().clone(), later.detach().clone()])
    assert all(_within(m, t, bitwise) for m, t in zip(outcomes[1], outcomes[0], strict=True))


def test_bookkeeping_sgd_keeps_its_extra_keys() -> None:
    p, q = _params()
    opt = BookkeepingSGD([p], lr=0.1)
    opt.add_param_group({"params": [q], "name": "head"})
    p.grad = torch.ones_like(p)
    opt.step()
    opt.step()
    assert [g["name"] for g in opt.param_groups] == ["group0", "head"]
    assert [g["step_count"] for g in opt.param_groups] == [2, 2]
    assert opt.state[p] == {"step": 2} and q not in opt.state  # no buffer without momentum


def test_foreach_sgd_stays_foreach() -> None:
    p, q = _params()
    opt = ForeachSGD([p], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": [q], "foreach": False})
    assert [g["foreach"] for g in opt.param_groups] == [True, True]
    opt.load_state_dict(torch.optim.SGD([{"params": [p]}, {"params": [q]}]).state_dict())
    assert [g["foreach"] for g in opt.param_groups] == [True, True]


def test_foreach_sgd_writes_grad_as_torch_does() -> None:
    """The torch artifact a checker must tolerate: after a nesterov step (no maximize, no
    weight decay), ForeachSGD's .grad holds g + μb; torch's default for-loop leaves g."""
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = ForeachSGD([p], lr=0.1, momentum=0.5, nesterov=True)
    p.grad = torch.tensor([1.0, -1.0])
    opt.step()
    assert torch.equal(p.grad, torch.tensor([1.5, -1.5]))


def test_compiled_step_never_recompiles() -> None:
    """After the import's warm-up, no configuration, dtype, size or thread count the
    conformance runner uses needs a compilation (Dynamo would fail under this stance)."""
    cls = _compiled()
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(5)
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            for count, dtype, sizes in itertools.product(
                dict.fromkeys((threads, 1)),
                (torch.float32, torch.float64),
                ([1], [0], [2], [0, 1], [3, 1], [1000, 7, 1]),
            ):
                torch.set_num_threads(count)
                params = [
                    torch.randn(n, generator=generator, dtype=dtype).requires_grad_() for n in sizes
                ]
                for config in CONFIGS[::3]:
                    opt = cls(params, **{"lr": 0.1, **config})
                    for _ in range(2):
                        for p in params:
                            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
                        opt.step()
    finally:
        torch.set_num_threads(threads)


def test_compiled_warmup_was_measured() -> None:
    from conformance import compiled_reference

    _compiled()
    assert 0 < compiled_reference.COMPILE_WARMUP_SECONDS < 600


# --------------------------------------------------------------------------------------------
# The four mutants of issue 9: each differs from torch as its docstring says, and only there
# --------------------------------------------------------------------------------------------


def test_accepts_invalid_config() -> None:
    p = torch.zeros(2, requires_grad=True)
    bad = {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        torch.optim.SGD([p], **bad)
    opt = AcceptsInvalidConfig([p], **bad)  # the bug
    assert opt.param_groups[0]["nesterov"] is True
    for kwargs in INVALID:
        if kwargs.get("dampening", 0) == 0:  # every other invalid configuration still raises
            assert (
                _error_class(lambda kwargs=kwargs: AcceptsInvalidConfig([p], **kwargs))
                is ValueError
            ), kwargs
    for kwargs in VALID:
        assert _error_class(lambda kwargs=kwargs: AcceptsInvalidConfig([p], **kwargs)) is None


def test_rejects_zero_lr() -> None:
    p = torch.zeros(2, requires_grad=True)
    for lr in (0, 0.0, torch.tensor(0.0)):
        torch.optim.SGD([p], lr=lr)  # valid in torch
        with pytest.raises(ValueError):
            RejectsZeroLr([p], lr=lr)
    for kwargs in VALID:
        if float(kwargs.get("lr", 1e-3)) != 0:
            RejectsZeroLr([p], **kwargs)
    for kwargs in INVALID:
        assert _error_class(lambda kwargs=kwargs: RejectsZeroLr([p], **kwargs)) is ValueError


def test_add_param_group_no_defaults() -> None:
    outcomes = []
    for make in (torch.optim.SGD, AddParamGroupNoDefaults):
        first, later = _params()
        opt = make([{"params": [first]}], lr=0.1, momentum=0.9)
        assert opt.param_groups[0]["momentum"] == 0.9  # the constructor's groups are filled
        opt.add_param_group({"params": [later], "lr": 0.2})
        for p in (first, later):
            p.grad = torch.ones_like(p)
        outcomes.append((set(opt.param_groups[1]), _error_class(opt.step)))
    (keys_torch, error_torch), (keys_mutant, error_mutant) = outcomes
    assert error_torch is None and error_mutant is KeyError
    assert keys_mutant == {"params", "lr"} and "momentum" in keys_torch
    with pytest.raises(ValueError, match="more than one parameter group"):  # checks kept
        opt.add_param_group({"params": [first]})


def test_buffer_stored_not_read() -> None:
    seen = []
    for make in (torch.optim.SGD, BufferStoredNotRead):
        p = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
        opt = make([p], lr=0.1, momentum=0.9)
        trace = []
        for grad in ([1.0, 1.0, -1.0], [0.5, -0.25, 2.0]):
            p.grad = torch.tensor(grad)
            opt.step()
            trace.append((p.detach().clone(), opt.state[p]["momentum_buffer"].clone()))
        seen.append(trace)
    (first_t, second_t), (first_m, second_m) = seen
    assert torch.equal(first_t[0], first_m[0]) and torch.equal(first_t[1], first_m[1])
    assert torch.equal(second_m[1], torch.tensor([0.5, -0.25, 2.0]))  # b₂ = g₂: fresh
    assert not torch.equal(second_t[1], second_m[1])  # torch's b₂ = μb₁ + g₂
    assert not torch.equal(second_t[0], second_m[0])
