"""refimpl.nn against torch.nn: registration, names and order, state dicts, modes, conversions,
initialisation, and each layer's forward and backward on a twin loaded with the same weights."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import refimpl
import refimpl.nn as rnn
import refimpl.nn.functional as RF
from refimpl import functional as refimpl_functional

Builder = Callable[[ModuleType, ModuleType], Any]  # (nn, lib) -> module

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def twin(ours: rnn.Module, theirs: torch.nn.Module) -> torch.nn.Module:
    """Loads our module's state into torch's (keys must match exactly)."""
    theirs.load_state_dict(
        {k: torch.from_numpy(np.array(v.data)) for k, v in ours.state_dict().items()}
    )
    return theirs


def build_pair(builder: Builder) -> tuple[rnn.Module, torch.nn.Module]:
    return builder(rnn, refimpl), builder(torch.nn, torch)


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: np.dtype) -> None:
    assert actual.dtype == expected.dtype == dtype
    rtol = RTOL[dtype]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# Models built the same way from either library --------------------------------------------


def conv_net(nn: ModuleType, lib: ModuleType) -> Any:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.LayerNorm(16),
        nn.Linear(16, 5, bias=False),
        nn.Tanh(),
        nn.Linear(5, 2),
    )


def embedding_net(nn: ModuleType, lib: ModuleType) -> Any:
    return nn.Sequential(
        nn.Embedding(10, 4, padding_idx=0), nn.LayerNorm(4, bias=False), nn.GELU(), nn.Linear(4, 2)
    )


def nested_net(nn: ModuleType, lib: ModuleType) -> Any:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(3, elementwise_affine=False)
            self.proj = nn.Linear(3, 3)

        def forward(self, x: Any) -> Any:
            return self.proj(self.norm(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv1d(2, 3, 3, bias=False)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.scale = nn.Parameter(lib.ones(3))
            self.register_parameter("unused", None)
            self.head = nn.Sequential(nn.SiLU(), nn.Linear(3, 1))
            self.not_a_parameter = lib.zeros(2)

        def forward(self, x: Any) -> Any:
            h = self.stem(x).mean(-1)
            for block in self.blocks:
                h = block(h)
            return self.head(h * self.scale)

    return Net()


def shared_net(nn: ModuleType, lib: ModuleType) -> Any:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.decoder = nn.Linear(4, 4)
            self.decoder.weight = self.encoder.weight
            repeated = nn.Linear(4, 4)
            self.twice = nn.Sequential(repeated, nn.ReLU(), repeated)

    return Tied()


MODELS = {"conv": conv_net, "embedding": embedding_net, "nested": nested_net, "shared": shared_net}


@pytest.mark.parametrize("builder", MODELS.values(), ids=MODELS.keys())
def test_names_and_order_match_torch(builder: Builder) -> None:
    ours, theirs = build_pair(builder)

    def shapes(pairs: Any) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, tuple(p.shape)) for name, p in pairs]

    assert shapes(ours.named_parameters()) == shapes(theirs.named_parameters())
    assert shapes(ours.named_parameters(remove_duplicate=False)) == shapes(
        theirs.named_parameters(remove_duplicate=False)
    )
    assert shapes(ours.named_parameters(prefix="m", recurse=False)) == shapes(
        theirs.named_parameters(prefix="m", recurse=False)
    )
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_modules(remove_duplicate=False)] == [
        n for n, _ in theirs.named_modules(remove_duplicate=False)
    ]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert [type(m).__name__ for m in ours.modules()] == [
        type(m).__name__ for m in theirs.modules()
    ]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [id(p) for p in ours.parameters()] == [id(p) for _, p in ours.named_parameters()]


def test_shared_parameter_is_yielded_once() -> None:
    ours = shared_net(rnn, refimpl)
    names = [name for name, _ in ours.named_parameters()]
    assert names == [
        "encoder.weight",
        "encoder.bias",
        "decoder.bias",
        "twice.0.weight",
        "twice.0.bias",
    ]
    assert len({id(p) for p in ours.parameters()}) == len(names)
    assert ours.decoder.weight is ours.encoder.weight
    # state_dict keeps every name, as torch's does.
    assert "decoder.weight" in ours.state_dict() and "twice.2.bias" in ours.state_dict()


def test_registration_semantics_match_torch() -> None:
    for nn, lib in ((rnn, refimpl), (torch.nn, torch)):
        m = nn.Linear(2, 3)
        m.extra = nn.Parameter(lib.zeros(1))
        m.child = nn.ReLU()
        m.plain = lib.zeros(1)
        assert [n for n, _ in m.named_parameters()] == ["weight", "bias", "extra"]
        assert [n for n, _ in m.named_children()] == ["child"]
        m.bias = None  # keeps the slot, drops the parameter
        assert m.bias is None and "bias" in m._parameters
        assert [n for n, _ in m.named_parameters()] == ["weight", "extra"]
        with pytest.raises(TypeError, match="cannot assign"):
            m.weight = lib.zeros(3, 2)
        with pytest.raises(TypeError, match="as parameter 'extra'"):
            m.extra = nn.ReLU()
        del m.extra
        m.extra = nn.ReLU()
        assert [n for n, _ in m.named_parameters()] == ["weight"]
        assert [n for n, _ in m.named_children()] == ["child", "extra"]
        del m.child
        assert [n for n, _ in m.named_children()] == ["extra"]
        with pytest.raises(KeyError, match="already exists"):
            m.register_parameter("plain", nn.Parameter(lib.zeros(1)))
        with pytest.raises(AttributeError, match="has no attribute 'missing'"):
            _ = m.missing
        m.register_buffer("running", lib.ones(2))
        m.register_buffer("scratch", lib.ones(2), persistent=False)
        assert list(m.state_dict()) == ["weight", "running"]
        assert [n for n, _ in m.named_buffers()] == ["running", "scratch"]


def test_bias_false_registers_none() -> None:
    for nn in (rnn, torch.nn):
        for layer in (
            nn.Linear(3, 2, bias=False),
            nn.Conv2d(1, 2, 3, bias=False),
            nn.LayerNorm(3, bias=False),
        ):
            assert layer.bias is None
            assert "bias" not in dict(layer.named_parameters())
            assert "bias" not in layer.state_dict()
    assert [n for n, _ in rnn.LayerNorm(3, elementwise_affine=False).named_parameters()] == []


def test_parameter() -> None:
    source = refimpl.tensor([1.0, 2.0])
    p = rnn.Parameter(source)
    assert isinstance(p, refimpl.Tensor)
    assert p.requires_grad and p.is_leaf and p.grad is None
    p.data[0] = 5.0
    assert source.data[0] == 5.0  # shares the tensor's array, as torch's does
    assert repr(p).startswith("Parameter containing:\ntensor([5., 2.]")
    assert repr(p).endswith("requires_grad=True)")
    x = refimpl.tensor([1.0], requires_grad=True)
    q = rnn.Parameter(x * 2, requires_grad=False)
    assert q.is_leaf and not q.requires_grad
    assert type(p * 2) is refimpl.Tensor  # results of ops are plain tensors
    assert rnn.Parameter(np.zeros(2)).dtype == np.float64
    assert rnn.Parameter().shape == (0,)
    with pytest.raises(RuntimeError, match="floating point"):
        rnn.Parameter(refimpl.tensor([1, 2]))


def test_deepcopy_copies_values_not_grads_like_torch() -> None:
    for nn, lib in ((rnn, refimpl), (torch.nn, torch)):
        model = _grads_after_backward(nn, lib)
        clone = copy.deepcopy(model)
        for p, q in zip(model.parameters(), clone.parameters(), strict=True):
            assert p is not q and type(q) is type(p) and q.requires_grad and q.grad is None
            np.testing.assert_array_equal(np.asarray(q.data), np.asarray(p.data))
            assert not np.shares_memory(np.asarray(q.data), np.asarray(p.data))


# zero_grad ----------------------------------------------------------------------------------


def _grads_after_backward(nn: ModuleType, lib: ModuleType) -> Any:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    model(lib.ones(4, 3)).sum().backward()
    return model


def test_zero_grad_set_to_none() -> None:
    for nn, lib in ((rnn, refimpl), (torch.nn, torch)):
        model = _grads_after_backward(nn, lib)
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad()
        assert all(p.grad is None for p in model.parameters())


def test_zero_grad_in_place_keeps_the_grad_tensor() -> None:
    for nn, lib in ((rnn, refimpl), (torch.nn, torch)):
        model = _grads_after_backward(nn, lib)
        before = [p.grad for p in model.parameters()]
        assert any(np.any(np.asarray(g.data) != 0) for g in before)
        # A grad that has history (as create_graph would leave) is detached in place.
        first = next(model.parameters())
        source = lib.ones(*first.shape, requires_grad=True)
        first.grad = source * 3
        before[0] = first.grad
        assert first.grad.grad_fn is not None
        # A leaf grad that requires grad stops requiring it.
        second = list(model.parameters())[1]
        second.grad = lib.ones(*second.shape, requires_grad=True)
        before[1] = second.grad
        model.zero_grad(set_to_none=False)
        after = [p.grad for p in model.parameters()]
        assert all(a is b for a, b in zip(after, before, strict=True))
        for g in after:
            assert g.grad_fn is None and not g.requires_grad
            assert not np.any(np.asarray(g.data))


# state_dict ---------------------------------------------------------------------------------


def test_state_dict_round_trip() -> None:
    a = conv_net(rnn, refimpl)
    b = conv_net(rnn, refimpl)
    params_before = [id(p) for p in b.parameters()]
    state = a.state_dict()
    for name, value in state.items():
        assert type(value) is refimpl.Tensor and not value.requires_grad
        assert np.shares_memory(value.data, dict(a.named_parameters())[name].data)
    result = b.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert (
        repr(result)
        == repr(torch.nn.Linear(1, 1).load_state_dict(torch.nn.Linear(1, 1).state_dict()))
        == "<All keys matched successfully>"
    )
    assert [id(p) for p in b.parameters()] == params_before  # copied in place
    for (name, p), q in zip(b.named_parameters(), a.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        assert not np.shares_memory(p.data, q.data)
        assert p.requires_grad and p.grad_fn is None


def test_state_dict_loads_into_torch_and_back() -> None:
    ours, theirs = build_pair(nested_net)
    twin(ours, theirs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(-2)
    back = {k: refimpl.tensor(v.numpy()) for k, v in theirs.state_dict().items()}
    ours.load_state_dict(back)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.detach().numpy(), err_msg=name)


def _load_error(
    nn: ModuleType, lib: ModuleType, model: Builder, state: dict[str, tuple], strict: bool = True
) -> str:
    module = model(nn, lib)
    with pytest.raises(RuntimeError) as info:
        module.load_state_dict({k: lib.zeros(*shape) for k, shape in state.items()}, strict=strict)
    return str(info.value)


LOAD_ERRORS = {
    "missing": (lambda nn, lib: nn.Linear(3, 3), {"bias": (3,)}, True),
    "unexpected": (
        lambda nn, lib: nn.Linear(3, 3),
        {"weight": (3, 3), "bias": (3,), "x": (1,)},
        True,
    ),
    "size": (lambda nn, lib: nn.Linear(3, 3), {"weight": (2, 3), "bias": (3,)}, True),
    "size-not-strict": (lambda nn, lib: nn.Linear(3, 3), {"weight": (2, 3)}, False),
    "all-nested": (
        conv_net,
        {
            "0.weight": (4, 3, 2, 2),
            "0.bias": (4,),
            "3.weight": (1,),
            "9.weight": (1,),
            "0.extra.weight": (1,),
            "top": (1,),
            "4.weight": (16,),
            "7.weight": (2, 5),
        },
        True,
    ),
}


@pytest.mark.parametrize("case", LOAD_ERRORS.values(), ids=LOAD_ERRORS.keys())
def test_load_state_dict_errors_match_torch(case: tuple[Builder, dict[str, tuple], bool]) -> None:
    model, state, strict = case
    ours = _load_error(rnn, refimpl, model, state, strict)
    theirs = _load_error(torch.nn, torch, model, state, strict)
    assert ours == theirs
    name = type(model(rnn, refimpl)).__name__
    assert ours.startswith(f"Error(s) in loading state_dict for {name}:\n\t")


def test_load_state_dict_not_strict_returns_keys_like_torch() -> None:
    def keys(nn: ModuleType, lib: ModuleType) -> tuple[list[str], list[str]]:
        module = conv_net(nn, lib)
        state = {"0.bias": lib.zeros(4), "0.extra": lib.zeros(1), "nope": lib.zeros(1)}
        result = module.load_state_dict(state, strict=False)
        return result.missing_keys, result.unexpected_keys

    missing, unexpected = keys(rnn, refimpl)
    assert (missing, unexpected) == keys(torch.nn, torch)
    assert "0.weight" in missing and unexpected == ["nope", "0.extra"]


def test_load_state_dict_message_texts() -> None:
    with pytest.raises(RuntimeError) as info:
        rnn.Linear(3, 3).load_state_dict({"weight": refimpl.zeros(2, 3), "x": refimpl.zeros(1)})
    assert str(info.value) == (
        "Error(s) in loading state_dict for Linear:\n\t"
        'Missing key(s) in state_dict: "bias". \n\t'
        'Unexpected key(s) in state_dict: "x". \n\t'
        "size mismatch for weight: copying a param with shape torch.Size([2, 3]) from "
        "checkpoint, the shape in current model is torch.Size([3, 3])."
    )


# Modes, requires_grad_, conversions ---------------------------------------------------------


def test_train_eval_match_torch() -> None:
    ours, theirs = build_pair(nested_net)
    for model in (ours, theirs):
        assert model.training
        assert model.eval() is model
    assert [m.training for m in ours.modules()] == [m.training for m in theirs.modules()]
    assert not any(m.training for m in ours.modules())
    ours.blocks.train()
    theirs.blocks.train()
    assert [m.training for m in ours.modules()] == [m.training for m in theirs.modules()]
    assert ours.blocks[1].proj.training and not ours.head.training
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):
        ours.train("yes")  # type: ignore[arg-type]


def test_requires_grad_() -> None:
    model = nested_net(rnn, refimpl)
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())
    out = model(refimpl.ones(2, 2, 5))
    assert not out.requires_grad
    model.requires_grad_()
    assert all(p.requires_grad for p in model.parameters())
    assert model(refimpl.ones(2, 2, 5)).requires_grad


def test_double_and_float_keep_the_parameter_objects() -> None:
    model = _grads_after_backward(rnn, refimpl)
    params = list(model.parameters())
    values = [p.data.copy() for p in params]
    grads = [p.grad for p in params]
    assert model.double() is model
    for p, value, grad in zip(model.parameters(), values, grads, strict=True):
        assert any(p is q for q in params) and isinstance(p, rnn.Parameter) and p.requires_grad
        assert p.dtype == np.float64 and p.grad is grad and p.grad.dtype == np.float64
        np.testing.assert_array_equal(p.data, value.astype(np.float64))
    out = model(refimpl.ones(4, 3, dtype=refimpl.float64))
    assert out.dtype == np.float64
    model.float()
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float32 for p in model.parameters())
    loss = rnn.CrossEntropyLoss(weight=refimpl.ones(3)).double()
    assert loss.weight.dtype == np.float64


def test_apply_visits_children_first_like_torch() -> None:
    def order(model: Any) -> list[str]:
        seen: list[str] = []
        model.apply(lambda m: seen.append(type(m).__name__))
        return seen

    ours, theirs = build_pair(nested_net)
    assert order(ours) == order(theirs)
    assert order(ours)[-1] == "Net"


def test_get_submodule() -> None:
    model = nested_net(rnn, refimpl)
    assert model.get_submodule("blocks.1.proj") is model.blocks[1].proj
    assert model.get_submodule("") is model
    with pytest.raises(AttributeError):
        model.get_submodule("blocks.7")


# Containers ---------------------------------------------------------------------------------


def test_sequential_container() -> None:
    for nn in (rnn, torch.nn):
        a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
        seq = nn.Sequential(a, b)
        assert len(seq) == 2 and seq[0] is a and seq[-1] is b and list(seq) == [a, b]
        assert seq.append(c) is seq and seq[2] is c
        head = seq[:2]
        assert type(head) is nn.Sequential and list(head) == [a, b]
        assert [n for n, _ in seq[1:].named_children()] == ["1", "2"]  # slices keep keys
        del seq[0]
        assert [n for n, _ in seq.named_parameters()] == ["1.weight", "1.bias"]
        with pytest.raises(IndexError, match="index 5 is out of range"):
            seq[5]


def test_module_list_container() -> None:
    for nn in (rnn, torch.nn):
        layers = nn.ModuleList([nn.Linear(1, 1)])
        extra = nn.Linear(1, 2)
        layers.append(extra)
        layers.extend([nn.ReLU(), nn.Linear(2, 2)])
        layers += [nn.Tanh()]
        assert len(layers) == 5 and layers[1] is extra and layers[-4] is extra
        assert [type(m).__name__ for m in layers] == ["Linear", "Linear", "ReLU", "Linear", "Tanh"]
        assert [n for n, _ in layers.named_parameters()] == [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "3.weight",
            "3.bias",
        ]
        assert len(layers[1:3]) == 2
        with pytest.raises(NotImplementedError):
            layers(1)


def test_repr_matches_torch() -> None:
    def model(nn: ModuleType, lib: ModuleType) -> Any:
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.Conv1d(4, 4, (2,), stride=2, groups=2),
            nn.MaxPool2d(2),
            nn.AvgPool2d(3, stride=1),
            nn.Flatten(),
            nn.Embedding(5, 3, padding_idx=1),
            nn.LayerNorm(5),
            nn.Linear(16, 5),
            nn.LeakyReLU(),
            nn.ELU(),
            nn.GELU("tanh"),
            nn.Sigmoid(),
            nn.Softplus(),
            nn.SiLU(),
            nn.Softmax(dim=1),
            nn.LogSoftmax(-1),
            nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2), nn.ReLU()]),
            nn.MSELoss(),
            nn.CrossEntropyLoss(),
            nn.HuberLoss(),
        )

    ours, theirs = build_pair(model)
    assert repr(ours) == repr(theirs)
    assert "(0-1): 2 x Linear(in_features=2, out_features=2, bias=True)" in repr(ours)


_SIGNATURE_CLASSES = [
    "Linear",
    "Conv1d",
    "Conv2d",
    "Embedding",
    "LayerNorm",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "GELU",
    "Softplus",
    "SiLU",
    "Softmax",
    "LogSoftmax",
    "Sequential",
    "ModuleList",
    "Flatten",
    "MaxPool2d",
    "AvgPool2d",
    "MSELoss",
    "L1Loss",
    "SmoothL1Loss",
    "HuberLoss",
    "CrossEntropyLoss",
    "NLLLoss",
    "BCEWithLogitsLoss",
]


@pytest.mark.parametrize("name", _SIGNATURE_CLASSES)
def test_constructor_arguments_match_torch(name: str) -> None:
    ours = inspect.signature(getattr(rnn, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.nn, name).__init__).parameters
    names = [n for n in ours if n != "rng"]
    assert names == list(theirs)
    for arg in names:
        assert ours[arg].default == theirs[arg].default, arg


# Forward and backward against torch ---------------------------------------------------------


def _floats(shape: tuple[int, ...]) -> Callable[[np.random.Generator, np.dtype], np.ndarray]:
    return lambda rng, dtype: rng.standard_normal(shape).astype(dtype)


LAYERS: dict[str, tuple[Builder, Callable[[np.random.Generator, np.dtype], np.ndarray]]] = {
    "linear": (lambda nn, lib: nn.Linear(5, 3), _floats((4, 5))),
    "linear-nobias-3d": (lambda nn, lib: nn.Linear(5, 3, bias=False), _floats((2, 4, 5))),
    "conv1d": (lambda nn, lib: nn.Conv1d(2, 4, 3, stride=2, padding=1), _floats((3, 2, 9))),
    "conv2d": (
        lambda nn, lib: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)),
        _floats((2, 3, 7, 6)),
    ),
    "conv2d-groups-same": (
        lambda nn, lib: nn.Conv2d(4, 6, 3, groups=2, padding="same"),
        _floats((2, 4, 5, 5)),
    ),
    "conv2d-unbatched": (lambda nn, lib: nn.Conv2d(2, 3, 2, bias=False), _floats((2, 4, 4))),
    "embedding": (
        lambda nn, lib: nn.Embedding(10, 3, padding_idx=2),
        lambda rng, dtype: rng.integers(0, 10, size=(4, 5)),
    ),
    "layernorm": (lambda nn, lib: nn.LayerNorm((3, 4)), _floats((2, 3, 4))),
    "layernorm-plain": (lambda nn, lib: nn.LayerNorm(4, elementwise_affine=False), _floats((5, 4))),
    "flatten": (lambda nn, lib: nn.Flatten(1, 2), _floats((2, 3, 4, 5))),
    "maxpool": (lambda nn, lib: nn.MaxPool2d(2), _floats((2, 3, 6, 6))),
    "maxpool-padded": (
        lambda nn, lib: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        _floats((2, 2, 7, 7)),
    ),
    "avgpool": (lambda nn, lib: nn.AvgPool2d(2), _floats((2, 3, 6, 6))),
    "avgpool-padded": (
        lambda nn, lib: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        _floats((1, 2, 7, 7)),
    ),
    "relu": (lambda nn, lib: nn.ReLU(), _floats((4, 5))),
    "leaky_relu": (lambda nn, lib: nn.LeakyReLU(0.2), _floats((4, 5))),
    "elu": (lambda nn, lib: nn.ELU(0.5), _floats((4, 5))),
    "gelu": (lambda nn, lib: nn.GELU(), _floats((4, 5))),
    "gelu-tanh": (lambda nn, lib: nn.GELU(approximate="tanh"), _floats((4, 5))),
    "sigmoid": (lambda nn, lib: nn.Sigmoid(), _floats((4, 5))),
    "tanh": (lambda nn, lib: nn.Tanh(), _floats((4, 5))),
    "softplus": (lambda nn, lib: nn.Softplus(beta=2.0, threshold=1.0), _floats((4, 5))),
    "silu": (lambda nn, lib: nn.SiLU(), _floats((4, 5))),
    "softmax": (lambda nn, lib: nn.Softmax(dim=1), _floats((4, 5))),
    "log_softmax": (lambda nn, lib: nn.LogSoftmax(dim=-1), _floats((3, 4, 5))),
    "sequential": (conv_net, _floats((2, 3, 4, 4))),
    "nested": (nested_net, _floats((3, 2, 6))),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", LAYERS.values(), ids=LAYERS.keys())
def test_layer_forward_and_backward_match_torch(case: tuple[Builder, Any], dtype: np.dtype) -> None:
    builder, make_input = case
    rng = np.random.default_rng(7)
    ours, theirs = build_pair(builder)
    twin(ours, theirs)
    if dtype == np.float64:
        ours.double()
        theirs.double()
    x = make_input(rng, dtype)
    floating = x.dtype.kind == "f"
    x_ours = refimpl.tensor(x, requires_grad=floating)
    x_theirs = torch.tensor(x, requires_grad=floating)
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert_close(y_ours.data, y_theirs.detach().numpy(), dtype)

    g = rng.standard_normal(y_ours.shape).astype(dtype)
    y_ours.backward(refimpl.tensor(g))
    y_theirs.backward(torch.from_numpy(g))
    if floating:
        assert_close(x_ours.grad.data, x_theirs.grad.numpy(), dtype)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert p.grad is not None, name
        assert_close(p.grad.data, q.grad.numpy(), dtype)


def _classes(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    return rng.integers(0, n, size=shape)


LOSSES: dict[str, tuple[Builder, Callable[[np.random.Generator, np.dtype], tuple]]] = {
    "mse": (
        lambda nn, lib: nn.MSELoss(),
        lambda rng, d: (
            rng.standard_normal((4, 3)).astype(d),
            rng.standard_normal((4, 3)).astype(d),
        ),
    ),
    "l1-sum": (
        lambda nn, lib: nn.L1Loss(reduction="sum"),
        lambda rng, d: (
            rng.standard_normal((4, 3)).astype(d),
            rng.standard_normal((4, 3)).astype(d),
        ),
    ),
    "smooth_l1": (
        lambda nn, lib: nn.SmoothL1Loss(beta=0.5),
        lambda rng, d: (
            rng.standard_normal((4, 3)).astype(d),
            rng.standard_normal((4, 3)).astype(d),
        ),
    ),
    "huber-none": (
        lambda nn, lib: nn.HuberLoss(reduction="none", delta=0.7),
        lambda rng, d: (
            rng.standard_normal((4, 3)).astype(d),
            rng.standard_normal((4, 3)).astype(d),
        ),
    ),
    "cross_entropy": (
        lambda nn, lib: nn.CrossEntropyLoss(),
        lambda rng, d: (rng.standard_normal((6, 4)).astype(d), _classes(rng, (6,), 4)),
    ),
    "cross_entropy-options": (
        lambda nn, lib: nn.CrossEntropyLoss(
            weight=lib.tensor([0.5, 1.0, 2.0, 1.5]), ignore_index=1, label_smoothing=0.1
        ),
        lambda rng, d: (
            rng.standard_normal((6, 4, 2)).astype(d),
            np.array([[0, 1], [2, 3], [1, 1], [3, 0], [2, 2], [0, 3]]),
        ),
    ),
    "nll": (
        lambda nn, lib: nn.NLLLoss(reduction="sum"),
        lambda rng, d: (rng.standard_normal((5, 3)).astype(d), _classes(rng, (5,), 3)),
    ),
    "bce_logits": (
        lambda nn, lib: nn.BCEWithLogitsLoss(pos_weight=lib.tensor([1.0, 2.0, 0.5])),
        lambda rng, d: (rng.standard_normal((4, 3)).astype(d), rng.uniform(size=(4, 3)).astype(d)),
    ),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", LOSSES.values(), ids=LOSSES.keys())
def test_loss_modules_match_torch(case: tuple[Builder, Any], dtype: np.dtype) -> None:
    builder, make_inputs = case
    ours, theirs = build_pair(builder)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if dtype == np.float64:
        ours.double()
        theirs.double()
    x, target = make_inputs(np.random.default_rng(3), dtype)
    x_ours, x_theirs = refimpl.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y_ours = ours(x_ours, refimpl.tensor(target))
    y_theirs = theirs(x_theirs, torch.from_numpy(target))
    assert_close(y_ours.data, y_theirs.detach().numpy(), dtype)
    y_ours.sum().backward()
    y_theirs.sum().backward()
    assert_close(x_ours.grad.data, x_theirs.grad.numpy(), dtype)


def test_legacy_reduction_flags_match_torch() -> None:
    for size_average, reduce in ((False, None), (None, False), (True, True)):
        with warnings.catch_warnings(record=True) as ours_warned:
            warnings.simplefilter("always")
            ours = rnn.MSELoss(size_average=size_average, reduce=reduce).reduction
        with warnings.catch_warnings(record=True) as theirs_warned:
            warnings.simplefilter("always")
            theirs = torch.nn.MSELoss(size_average=size_average, reduce=reduce).reduction
        assert ours == theirs
        assert [str(w.message) for w in ours_warned] == [str(w.message) for w in theirs_warned]


def test_softmax_without_dim_uses_torchs_legacy_dim() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        ours = rnn.Softmax()(refimpl.tensor(x))
    with pytest.warns(UserWarning):
        theirs = torch.nn.Softmax()(torch.from_numpy(x))
    assert_close(ours.data, theirs.numpy(), np.dtype(np.float32))


def test_sgd_steps_track_torch() -> None:
    """Five SGD steps on an MLP stay within float64 rounding of torch's."""
    x = np.random.default_rng(1).standard_normal((8, 4))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])

    def mlp(nn: ModuleType, lib: ModuleType) -> Any:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    ours, theirs = build_pair(mlp)
    ours.double()
    theirs.double()
    twin(ours, theirs)
    initial = [p.data.copy() for p in ours.parameters()]
    for _ in range(5):
        for model, lib, nn in ((ours, refimpl, rnn), (theirs, torch, torch.nn)):
            loss = nn.CrossEntropyLoss()(model(lib.tensor(x)), lib.tensor(y))
            loss.backward()
            with lib.no_grad():
                for p in model.parameters():
                    p.sub_(0.5 * p.grad)
            model.zero_grad()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert p.grad is None and q.grad is None
        assert_close(p.data, q.detach().numpy(), np.dtype(np.float64))
    assert all(
        not np.array_equal(p.data, q) for p, q in zip(ours.parameters(), initial, strict=True)
    )


# Initialisation -----------------------------------------------------------------------------


def _check_uniform(values: np.ndarray, bound: float) -> None:
    """All inside [-bound, bound], spread over it like U(-bound, bound)."""
    assert np.all(np.abs(values) <= np.asarray(bound, dtype=values.dtype))
    assert values.max() > 0.9 * bound and values.min() < -0.9 * bound
    # Five standard errors of U(-b, b)'s mean (b/sqrt(3n)) and std (about b/sqrt(15n)), and of a
    # quarter bin's count: a correct initialiser fails these by chance about once in a million.
    n = values.size
    assert abs(values.mean()) < 5 * bound / np.sqrt(3 * n)
    assert abs(values.std() - bound / np.sqrt(3)) < 5 * bound / np.sqrt(15 * n)
    counts, _ = np.histogram(values, bins=4, range=(-bound, bound))
    assert counts.min() > n / 4 - 5 * np.sqrt(n * 3 / 16)


@pytest.mark.parametrize(
    "builder, fan_in",
    [
        (lambda nn: nn.Linear(50, 60), 50),
        (lambda nn: nn.Conv1d(6, 40, 5), 30),
        (lambda nn: nn.Conv2d(6, 42, (3, 2), groups=3), 12),
    ],
)
def test_default_init_bounds(builder: Callable[[ModuleType], Any], fan_in: int) -> None:
    # Seeded: the uniformity check is statistical, and must not fail by chance in CI.
    torch.manual_seed(0)
    rnn.manual_seed(0)
    bound = 1 / np.sqrt(fan_in)
    for nn in (rnn, torch.nn):
        layer = builder(nn)
        weight = np.asarray(layer.weight.detach().numpy() if nn is torch.nn else layer.weight.data)
        assert weight.dtype == np.float32
        _check_uniform(weight.ravel(), bound)
        bias = layer.bias.detach().numpy() if nn is torch.nn else layer.bias.data
        assert np.all(np.abs(bias) <= np.float32(bound))


def test_bias_init_is_uniform() -> None:
    rnn.manual_seed(0)
    biases = np.concatenate([rnn.Linear(16, 500).bias.data for _ in range(4)])
    _check_uniform(biases, 1 / 4)


def test_embedding_and_layernorm_init() -> None:
    emb = rnn.Embedding(400, 50, padding_idx=-3)
    assert emb.padding_idx == torch.nn.Embedding(400, 50, padding_idx=-3).padding_idx == 397
    assert not np.any(emb.weight.data[397])
    rows = np.delete(emb.weight.data, 397, axis=0)
    assert abs(rows.mean()) < 0.02 and abs(rows.std() - 1) < 0.02
    norm = rnn.LayerNorm((2, 3), dtype=refimpl.float64)
    assert norm.weight.dtype == np.float64 and norm.weight.shape == (2, 3)
    np.testing.assert_array_equal(norm.weight.data, 1.0)
    np.testing.assert_array_equal(norm.bias.data, 0.0)


def test_rng_and_manual_seed_make_init_reproducible() -> None:
    a = rnn.Linear(3, 4, rng=np.random.default_rng(5))
    b = rnn.Linear(3, 4, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    assert refimpl.manual_seed is rnn.manual_seed is rnn.init.manual_seed
    rnn.manual_seed(11)
    c = rnn.Conv2d(2, 3, 3)
    d = rnn.Conv2d(2, 3, 3)  # the default generator moved on
    rnn.manual_seed(11)
    e = rnn.Conv2d(2, 3, 3)
    assert not np.array_equal(c.weight.data, d.weight.data)
    np.testing.assert_array_equal(c.weight.data, e.weight.data)


def test_dtype_argument() -> None:
    for layer in (
        rnn.Linear(2, 3, dtype=refimpl.float64),
        rnn.Conv1d(1, 2, 3, dtype=refimpl.float64),
        rnn.Embedding(4, 2, dtype=refimpl.float64),
    ):
        assert all(p.dtype == np.float64 for p in layer.parameters())
    assert rnn.Linear(2, 3).weight.dtype == np.float32
    with pytest.raises(TypeError):
        rnn.Linear(2, 3, dtype=refimpl.int64)


def test_constructor_errors_match_torch() -> None:
    for call in (
        lambda nn: nn.Conv2d(3, 4, 3, groups=2),
        lambda nn: nn.Conv2d(4, 3, 3, groups=2),
        lambda nn: nn.Conv2d(4, 4, 3, groups=0),
        lambda nn: nn.Conv2d(4, 4, 3, stride=2, padding="same"),
    ):
        with pytest.raises(ValueError) as ours:
            call(rnn)
        with pytest.raises(ValueError) as theirs:
            call(torch.nn)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        rnn.Embedding(3, 2, padding_idx=3)
    with pytest.raises(NotImplementedError):
        rnn.ReLU(inplace=True)
    with pytest.raises(NotImplementedError):
        rnn.Conv2d(1, 1, 3, padding_mode="reflect")


def test_functional_alias_and_no_torch_import() -> None:
    assert RF.linear is refimpl_functional.linear
    assert RF.cross_entropy is refimpl_functional.cross_entropy
    code = "import sys, refimpl.nn, refimpl.nn.functional; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
