"""refimpl.optim.SGD against torch.optim.SGD on bad input: every case makes the same bad call on
both (torch tensors on one side, refimpl tensors built from the same values on the other) and
asserts the same exception type and the exact same message.

Calls on an existing optimizer (add_param_group, load_state_dict, zero_grad, step) must also
leave it exactly as it was: defaults, param_groups (hyperparameters, key order and the identity
of every parameter), state, parameter values and grads. That is asserted of torch as well, so
the test documents torch's behaviour rather than a guess. Where torch does leave something
half-done (add_param_group fills in the caller's dict before it finds the error), the test
asserts that refimpl does the same.

Where torch accepts an input that looks bad (a negative lr in add_param_group, a set of
tensors given as `params`, state values that are not dicts), the case asserts that refimpl
accepts it too and ends in the same state.
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import refimpl
import refimpl.nn as rnn


class Lib:
    """One library's side of a case: its tensor factory, Parameter and SGD."""

    def __init__(
        self, name: str, module: ModuleType, parameter: type, optim: str, float32: Any, float64: Any
    ) -> None:
        self.name, self.module, self.Parameter, self.optim = name, module, parameter, optim
        self.float32, self.float64 = float32, float64

    @property
    def SGD(self) -> type:
        # Imported when a case runs, so that a broken refimpl.optim fails each test with its
        # import error instead of hiding the cases from collection.
        return importlib.import_module(self.optim).SGD

    def tensor(self, values: Any, dtype: Any = None, requires_grad: bool = False) -> Any:
        return self.module.tensor(values, dtype=dtype or self.float32, requires_grad=requires_grad)

    def param(self, values: Any = (1.0, -2.0), dtype: Any = None) -> Any:
        return self.Parameter(self.tensor(list(values), dtype))

    def no_grad(self) -> Any:
        return self.module.no_grad()

    def is_grad_enabled(self) -> bool:
        return self.module.is_grad_enabled()

    def __repr__(self) -> str:
        return self.name


TORCH = Lib("torch", torch, torch.nn.Parameter, "torch.optim", torch.float32, torch.float64)
REFIMPL = Lib("refimpl", refimpl, rnn.Parameter, "refimpl.optim", refimpl.float32, refimpl.float64)


def ours() -> Lib:
    """The library under test (a function, so that torch can be checked against itself)."""
    return REFIMPL


# Known differences from torch, each reported: strict, so a fix turns them into failures that
# ask for the marker to go.
KNOWN_DIFFERENCES = {
    "non_leaf_differentiable": "refimpl's SGD raises NotImplementedError for differentiable=True; "
    "torch accepts it (and then accepts non-leaf tensors)",
}


def cases(names: Any) -> list[Any]:
    """Parameter ids for the cases, with the known differences marked xfail(strict=True)."""
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[name]))
        if name in KNOWN_DIFFERENCES
        else name
        for name in names
    ]


# Comparing outcomes ------------------------------------------------------------------------


def raised(call: Callable[[], Any], lib: Lib, expected: BaseException | None = None) -> Exception:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call()
        except Exception as error:
            return error
    if expected is None:
        pytest.fail(f"{lib} raised nothing")
    pytest.fail(f"{lib} raised nothing; torch raises {type(expected).__name__}: {expected}")


Normalise = Callable[[str], str]


def same_error(theirs: Exception, ours_: Exception, normalise: Normalise | None = None) -> None:
    assert type(ours_) is type(theirs), (
        f"torch raises {type(theirs).__name__}: {theirs}; "
        f"refimpl raises {type(ours_).__name__}: {ours_}"
    )
    expected, actual = str(theirs), str(ours_)
    if normalise is not None:
        expected, actual = normalise(expected), normalise(actual)
    assert actual == expected


def class_path(message: str) -> str:
    """`<class 'torch.nn.parameter.Parameter'>` and `<class 'refimpl.nn.parameter.Parameter'>`
    both become `<class 'Parameter'>`: only the library's module path is normalised away,
    the class name must still agree."""
    return re.sub(r"<class '(?:torch|refimpl)(?:\.\w+)*\.(\w+)'>", r"<class '\1'>", message)


# A plain, library-independent description of optimizers and the values they hold ----------


@dataclass
class Fixture:
    """An optimizer with two groups and momentum state, plus two parameters outside it."""

    lib: Lib
    opt: Any
    names: dict[int, str]  # id(parameter) -> its name
    params: dict[str, Any]
    arg: Any = None  # what the case passed to the optimizer, described before and after
    notes: dict[str, Any] = field(default_factory=dict)


def describe(value: Any, names: dict[int, str]) -> Any:
    """Tensors become ("param", name) when they are one of the fixture's parameters (so the
    identity of every parameter is checked), otherwise (type, dtype, shape, values,
    requires_grad); containers keep their type and order."""
    if isinstance(value, (torch.Tensor, refimpl.Tensor)):
        if id(value) in names:
            return ("param", names[id(value)])
        array = np.array(value.detach().numpy(), copy=True)
        return (
            type(value).__name__,
            array.dtype.name,
            array.shape,
            tuple(array.ravel().tolist()),
            bool(value.requires_grad),
        )
    if isinstance(value, dict):
        return ("dict", [(describe(k, names), describe(v, names)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [describe(v, names) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(repr(describe(v, names)) for v in value))
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def snapshot(fx: Fixture) -> dict[str, Any]:
    opt = fx.opt
    return {
        "defaults": describe(opt.defaults, fx.names),
        "param_groups": describe(opt.param_groups, fx.names),
        "state": describe(dict(opt.state), fx.names),
        "values": {n: describe(p.detach(), {}) for n, p in fx.params.items()},
        "grads": {n: describe(p.grad, {}) for n, p in fx.params.items()},
        "grad_ids": {n: id(p.grad) for n, p in fx.params.items()},
    }


def cross(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot without what cannot agree across libraries (object ids)."""
    return {k: v for k, v in snap.items() if k != "grad_ids"}


def build(lib: Lib) -> Fixture:
    """Two groups with different hyperparameters, after one momentum step (so the state holds
    momentum buffers), with fresh grads. Every value is dyadic, so the step is exact."""
    a, b, c = lib.param([1.0, -2.0]), lib.param([0.5]), lib.param([3.0, 4.0, 5.0])
    d, e = lib.param([7.0, 8.0]), lib.param([-1.0])
    opt = lib.SGD(
        [{"params": [a, b]}, {"params": [c], "lr": 0.25, "momentum": 0.25}],
        lr=0.5,
        momentum=0.5,
        weight_decay=0.25,
    )
    a.grad, b.grad, c.grad = (
        lib.tensor([0.25, -0.5]),
        lib.tensor([1.0]),
        lib.tensor([0.0, 1.0, -2.0]),
    )
    opt.step()
    a.grad, b.grad, c.grad = (
        lib.tensor([2.0, 0.0]),
        lib.tensor([-1.0]),
        lib.tensor([1.0, 1.0, 1.0]),
    )
    params = {"a": a, "b": b, "c": c, "d": d, "e": e}
    return Fixture(lib, opt, {id(p): n for n, p in params.items()}, params)


# Constructor: bad arguments ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    call: Callable[[Lib], Any]
    normalise: Normalise | None = None


def sgd(*args: Any, **kwargs: Any) -> Callable[[Lib], Any]:
    """`SGD([param], *args, **kwargs)` with a fresh parameter."""
    return lambda L: L.SGD([L.param()], *args, **kwargs)


CONSTRUCTOR_CASES: dict[str, Case] = {
    "lr_negative": Case(sgd(lr=-0.1)),
    # f"{lr}" formats a 0-dim tensor as its item(): torch writes -0.10000000149011612, a
    # Python float, with nothing torch-specific in it, so the message must match exactly.
    "lr_negative_tensor_float32": Case(lambda L: L.SGD([L.param()], lr=L.tensor(-0.1))),
    "lr_negative_tensor_float64": Case(
        lambda L: L.SGD([L.param()], lr=L.tensor(-0.1, dtype=L.float64))
    ),
    "lr_tensor_two_elements": Case(lambda L: L.SGD([L.param()], lr=L.tensor([0.1, 0.2]))),
    "lr_tensor_empty": Case(lambda L: L.SGD([L.param()], lr=L.tensor([]))),
    "lr_tensor_2x2": Case(lambda L: L.SGD([L.param()], lr=L.tensor([[0.1, 0.2], [0.3, 0.4]]))),
    "lr_string": Case(sgd(lr="0.1")),
    "lr_none": Case(sgd(lr=None)),
    "lr_and_momentum_negative_reports_lr": Case(sgd(lr=-1.0, momentum=-1.0)),
    "momentum_negative": Case(sgd(lr=0.1, momentum=-0.5)),
    "momentum_tensor_two_elements": Case(
        lambda L: L.SGD([L.param()], momentum=L.tensor([0.1, 0.2]))
    ),
    "weight_decay_negative": Case(sgd(lr=0.1, weight_decay=-0.01)),
    "weight_decay_negative_tensor": Case(lambda L: L.SGD([L.param()], weight_decay=L.tensor(-0.1))),
    "weight_decay_tensor_two_elements": Case(
        lambda L: L.SGD([L.param()], weight_decay=L.tensor([0.1, 0.2]))
    ),
    "nesterov_without_momentum": Case(sgd(lr=0.1, nesterov=True)),
    "nesterov_with_dampening": Case(sgd(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    "nesterov_negative_momentum_reports_momentum": Case(sgd(lr=0.1, momentum=-0.9, nesterov=True)),
    "fused_and_foreach": Case(sgd(lr=0.1, fused=True, foreach=True)),
    "fused_and_differentiable": Case(sgd(lr=0.1, fused=True, differentiable=True)),
    "fused_foreach_differentiable_reports_differentiable": Case(
        sgd(lr=0.1, fused=True, foreach=True, differentiable=True)
    ),
    "unexpected_keyword": Case(sgd(lr=0.1, betas=(0.9, 0.999))),
    "too_many_positional": Case(sgd(0.1, 0.9, 0, 0, False, True)),
    "empty_list": Case(lambda L: L.SGD([], lr=0.1)),
    "empty_generator": Case(lambda L: L.SGD((p for p in []), lr=0.1)),
    "params_none": Case(lambda L: L.SGD(None, lr=0.1)),
    "params_int": Case(lambda L: L.SGD(5, lr=0.1)),
    # torch names the tensor type the legacy way; refimpl must name it the same way for the
    # same dtype, so these compare exactly.
    "params_single_tensor_float32": Case(lambda L: L.SGD(L.tensor([1.0, 2.0]), lr=0.1)),
    "params_single_tensor_float64": Case(
        lambda L: L.SGD(L.tensor([1.0, 2.0], dtype=L.float64), lr=0.1)
    ),
    "params_single_parameter": Case(lambda L: L.SGD(L.param(), lr=0.1)),
    "params_single_parameter_float64": Case(lambda L: L.SGD(L.param(dtype=L.float64), lr=0.1)),
    "param_int": Case(lambda L: L.SGD([L.param(), 3], lr=0.1)),
    "param_float": Case(lambda L: L.SGD([2.5], lr=0.1)),
    "param_none": Case(lambda L: L.SGD([L.param(), None], lr=0.1)),
    "param_list_of_lists": Case(lambda L: L.SGD([[L.param()], [L.param()]], lr=0.1)),
    "param_numpy_array": Case(lambda L: L.SGD([np.zeros(2)], lr=0.1)),
    "param_string_in_group": Case(lambda L: L.SGD([{"params": "ab"}], lr=0.1)),
    "tensor_then_dict": Case(lambda L: L.SGD([L.param(), {"params": [L.param()]}], lr=0.1)),
    # torch embeds the class repr of the non-dict (torch.nn.parameter.Parameter); only the
    # module path is normalised, see class_path.
    "dict_then_tensor": Case(
        lambda L: L.SGD([{"params": [L.param()]}, L.param()], lr=0.1), class_path
    ),
    "non_leaf": Case(lambda L: L.SGD([L.param() * 2], lr=0.1)),
    "non_leaf_in_group": Case(lambda L: L.SGD([{"params": [L.param(), L.param() + 1]}])),
    "group_without_params": Case(lambda L: L.SGD([{"lr": 0.1}], lr=0.1)),
    "second_group_without_params": Case(
        lambda L: L.SGD([{"params": [L.param()]}, {"lr": 0.1}], lr=0.1)
    ),
    "set_in_group": Case(lambda L: L.SGD([{"params": {L.param()}}], lr=0.1)),
    "param_in_two_groups": Case(
        lambda L: (lambda p: L.SGD([{"params": [p]}, {"params": [p, L.param()]}], lr=0.1))(
            L.param()
        )
    ),
    "named_and_unnamed_params": Case(lambda L: L.SGD([("w", L.param()), L.param()], lr=0.1)),
    "named_and_unnamed_groups": Case(
        lambda L: L.SGD([{"params": [("w", L.param())]}, {"params": [L.param()]}], lr=0.1)
    ),
}


@pytest.mark.parametrize("name", cases(CONSTRUCTOR_CASES))
def test_constructor_rejects(name: str) -> None:
    case = CONSTRUCTOR_CASES[name]
    theirs = raised(lambda: case.call(TORCH), TORCH)
    lib = ours()
    same_error(theirs, raised(lambda: case.call(lib), lib, theirs), case.normalise)


# Constructor: inputs torch accepts ---------------------------------------------------------


ACCEPTED_CONSTRUCTOR_CASES: dict[str, Callable[[Lib], tuple[Any, dict[int, str]]]] = {}


def accepted(name: str):
    def register(function: Callable[[Lib], tuple[Any, dict[int, str]]]):
        ACCEPTED_CONSTRUCTOR_CASES[name] = function
        return function

    return register


def named(*params: Any) -> dict[int, str]:
    return {id(p): f"p{i}" for i, p in enumerate(params)}


@accepted("set_of_params")  # only a set *inside a group* is refused; a bare set is listed
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    p = L.param()
    return L.SGD({p}, lr=0.1), named(p)


@accepted("dampening_negative")  # SGD checks lr, momentum and weight_decay only
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    p = L.param()
    return L.SGD([p], lr=0.1, momentum=0.9, dampening=-1.0), named(p)


@accepted("lr_nan")  # nan < 0 is False
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    p = L.param()
    return L.SGD([p], lr=float("nan")), named(p)


@accepted("empty_group")  # an empty list is refused, a group with no parameters is not
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    return L.SGD([{"params": []}], lr=0.1), {}


@accepted("non_leaf_retaining_grad")
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    q = L.param() * 2
    q.retain_grad()
    return L.SGD([q], lr=0.1), named(q)


@accepted("non_leaf_differentiable")
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    q = L.param() * 2
    return L.SGD([q], lr=0.1, differentiable=True), named(q)


@accepted("fused_alone")
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    p = L.param()
    return L.SGD([p], lr=0.1, fused=True), named(p)


@accepted("tuple_of_params_and_generator_group")
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    p, q = L.param(), L.param([3.0])
    return L.SGD(({"params": (x for x in [p])}, {"params": q, "lr": 0.5}), lr=0.1), named(p, q)


@accepted("named_params")
def _(L: Lib) -> tuple[Any, dict[int, str]]:
    p, q = L.param(), L.param([3.0])
    return L.SGD([("w", p), ("b", q)], lr=0.1), named(p, q)


@pytest.mark.parametrize("name", cases(ACCEPTED_CONSTRUCTOR_CASES))
def test_constructor_accepts_what_torch_accepts(name: str) -> None:
    build_case = ACCEPTED_CONSTRUCTOR_CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theirs, their_names = build_case(TORCH)
        mine, my_names = build_case(ours())
    assert describe(mine.defaults, my_names) == describe(theirs.defaults, their_names)
    assert describe(mine.param_groups, my_names) == describe(theirs.param_groups, their_names)
    assert (
        describe(dict(mine.state), my_names)
        == describe(dict(theirs.state), their_names)
        == ("dict", [])
    )


# Calls on an existing optimizer ------------------------------------------------------------


@dataclass(frozen=True)
class OptCase:
    """`call(lib, fixture)` makes the bad call; `arg(lib, fixture)`, when given, builds the
    argument first so that what the call does to it can be compared too."""

    call: Callable[[Lib, Fixture], Any]
    arg: Callable[[Lib, Fixture], Any] | None = None
    normalise: Normalise | None = None


def add_group(build_arg: Callable[[Lib, Fixture], Any]) -> OptCase:
    return OptCase(lambda L, fx: fx.opt.add_param_group(fx.arg), build_arg)


def load(build_arg: Callable[[Lib, Fixture], Any]) -> OptCase:
    return OptCase(lambda L, fx: fx.opt.load_state_dict(fx.arg), build_arg)


def saved(L: Lib, fx: Fixture) -> dict[str, Any]:
    """The fixture's own state dict, before the case edits it."""
    return fx.opt.state_dict()


def edited(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Lib, Fixture], Any]:
    """The fixture's state dict after `edit` has changed it in place (its result is ignored)."""

    def build_arg(L: Lib, fx: Fixture) -> Any:
        state_dict = saved(L, fx)
        edit(state_dict)
        return state_dict

    return build_arg


def first_group(state_dict: dict[str, Any]) -> dict[str, Any]:
    return state_dict["param_groups"][0]


OPT_CASES: dict[str, OptCase] = {
    # add_param_group ------------------------------------------------------------------
    "add_group_list": add_group(lambda L, fx: [fx.params["d"]]),
    # torch embeds type(param_group): only the module path is normalised, see class_path.
    "add_group_tensor": OptCase(
        lambda L, fx: fx.opt.add_param_group(fx.arg), lambda L, fx: fx.params["d"], class_path
    ),
    "add_group_none": add_group(lambda L, fx: None),
    "add_group_without_params": add_group(lambda L, fx: {"lr": 0.1}),
    "add_group_set": add_group(lambda L, fx: {"params": {fx.params["d"]}, "lr": 0.25}),
    # From here on torch has already written list(params) back into the caller's dict (and,
    # for the overlap, filled in every default) when it raises; refimpl must do the same.
    "add_group_int_param": add_group(lambda L, fx: {"params": (fx.params["d"], 5)}),
    "add_group_list_param": add_group(lambda L, fx: {"params": [[fx.params["d"]]]}),
    "add_group_non_leaf": add_group(lambda L, fx: {"params": [fx.params["d"] * 2]}),
    "add_group_overlap": add_group(
        lambda L, fx: {"params": [fx.params["d"], fx.params["a"]], "lr": 0.125}
    ),
    "add_group_overlap_single_tensor": add_group(lambda L, fx: {"params": fx.params["c"]}),
    "add_group_overlap_duplicate_and_shared": add_group(
        lambda L, fx: {"params": [fx.params["e"], fx.params["e"], fx.params["b"]]}
    ),
    "add_group_named_to_unnamed": add_group(lambda L, fx: {"params": [("w", fx.params["d"])]}),
    "add_group_some_names_missing": add_group(
        lambda L, fx: {"params": [("w", fx.params["d"]), fx.params["e"]]}
    ),
    # load_state_dict --------------------------------------------------------------------
    "load_none": load(lambda L, fx: None),
    "load_list": load(lambda L, fx: [1, 2]),
    "load_missing_param_groups": load(edited(lambda sd: sd.pop("param_groups"))),
    "load_missing_state": load(edited(lambda sd: sd.pop("state"))),
    "load_fewer_groups": load(edited(lambda sd: sd["param_groups"].pop())),
    "load_more_groups": load(
        edited(lambda sd: sd["param_groups"].append({**first_group(sd), "params": [9]}))
    ),
    "load_group_smaller": load(edited(lambda sd: first_group(sd)["params"].pop())),
    "load_group_larger": load(edited(lambda sd: first_group(sd)["params"].append(7))),
    "load_groups_swapped": load(edited(lambda sd: sd["param_groups"].reverse())),
    "load_param_groups_int": load(edited(lambda sd: sd.update(param_groups=5))),
    "load_param_groups_dict": load(
        edited(lambda sd: sd.update(param_groups={"params": [0, 1, 2]}))
    ),
    "load_group_without_params": load(edited(lambda sd: first_group(sd).pop("params"))),
    "load_group_param_id_unhashable": load(
        edited(lambda sd: first_group(sd).update(params=[[0], [1]]))
    ),
    "load_state_list": load(edited(lambda sd: sd.update(state=[]))),
    "load_state_none": load(edited(lambda sd: sd.update(state=None))),
    # zero_grad / step misuse -----------------------------------------------------------
    "zero_grad_misspelt_keyword": OptCase(lambda L, fx: fx.opt.zero_grad(set_to_None=True)),
    "zero_grad_too_many_positional": OptCase(lambda L, fx: fx.opt.zero_grad(True, True)),
    "step_closure_not_callable": OptCase(lambda L, fx: fx.opt.step(5)),
    "step_unexpected_keyword": OptCase(lambda L, fx: fx.opt.step(closure=None, lr=0.1)),
}


def run_opt_case(
    lib: Lib, case: OptCase, expected: Exception | None = None
) -> tuple[Exception, Any, Any, Any, Any]:
    fx = build(lib)
    fx.arg = None if case.arg is None else case.arg(lib, fx)
    arg_before = describe(fx.arg, fx.names)
    before = snapshot(fx)
    error = raised(lambda: case.call(lib, fx), lib, expected)
    after = snapshot(fx)
    assert after == before, f"{lib} changed the optimizer while raising {error!r}"
    return error, before, arg_before, describe(fx.arg, fx.names), fx


@pytest.mark.parametrize("name", cases(OPT_CASES))
def test_bad_call_leaves_optimizer_unchanged(name: str) -> None:
    case = OPT_CASES[name]
    theirs, their_before, their_arg, their_arg_after, _ = run_opt_case(TORCH, case)
    mine, my_before, my_arg, my_arg_after, _ = run_opt_case(ours(), case, theirs)
    same_error(theirs, mine, case.normalise)
    assert cross(my_before) == cross(their_before), "the fixtures differ before the call"
    assert my_arg == their_arg, "the arguments differ before the call"
    assert my_arg_after == their_arg_after, "the call left its argument differently"


def test_torch_fills_in_the_callers_group_before_refusing_it() -> None:
    """Documents the half-done part of torch's add_param_group (and holds refimpl to it): a
    group refused for sharing a parameter has already had list(params) and every default
    written into it, while the optimizer itself is untouched."""
    for lib in (TORCH, ours()):
        fx = build(lib)
        d, a = fx.params["d"], fx.params["a"]
        group = {"params": (d, a), "lr": 0.125}
        with pytest.raises(ValueError, match="more than one parameter group"):
            fx.opt.add_param_group(group)
        assert type(group["params"]) is list and group["params"][0] is d
        assert list(group) == [
            "params",
            "lr",
            "momentum",
            "dampening",
            "weight_decay",
            "nesterov",
            "maximize",
            "foreach",
            "differentiable",
            "fused",
        ]
        assert group["lr"] == 0.125 and group["momentum"] == 0.5 and len(fx.opt.param_groups) == 2


# Calls on an existing optimizer that torch accepts -----------------------------------------


ACCEPTED_OPT_CASES: dict[str, OptCase] = {
    # SGD validates its hyperparameters in __init__ only: add_param_group takes anything.
    "add_group_negative_lr": add_group(lambda L, fx: {"params": [fx.params["d"]], "lr": -1.0}),
    "add_group_invalid_nesterov": add_group(
        lambda L, fx: {
            "params": [fx.params["d"]],
            "momentum": -1.0,
            "nesterov": True,
            "dampening": 0.5,
            "weight_decay": -2.0,
        }
    ),
    # defaults fill in every option the group leaves out (SGD has no required option)
    "add_group_defaults_fill_in": add_group(lambda L, fx: {"params": [fx.params["d"]]}),
    "add_group_single_tensor": add_group(lambda L, fx: {"params": fx.params["d"], "lr": 0.125}),
    "add_group_tuple_and_extra_key": add_group(
        lambda L, fx: {"params": (fx.params["d"], fx.params["e"]), "name": "head"}
    ),
    "add_group_empty": add_group(lambda L, fx: {"params": []}),
    # load_state_dict copies state it cannot match to a parameter as it is, and does not look
    # inside the values
    "load_state_value_not_dict": load(edited(lambda sd: sd["state"].update({0: 5}))),
    "load_state_unknown_key": load(edited(lambda sd: sd["state"].update({"x": {"k": 1}}))),
    "load_group_param_ids_strings": load(
        edited(
            lambda sd: [
                g.update(params=[f"id{i}" for i in g["params"]]) for g in sd["param_groups"]
            ]
        )
    ),
    "load_group_changed_hyperparameters": load(
        edited(lambda sd: first_group(sd).update(lr=-3.0, nesterov=True, extra="kept"))
    ),
    "load_own_state_dict": load(saved),
    # zero_grad on parameters without grads, either way
    "zero_grad_no_grads": OptCase(
        lambda L, fx: ([setattr(p, "grad", None) for p in fx.params.values()], fx.opt.zero_grad())
    ),
    "zero_grad_no_grads_keep": OptCase(
        lambda L, fx: (
            [setattr(p, "grad", None) for p in fx.params.values()],
            fx.opt.zero_grad(set_to_none=False),
        )
    ),
    "zero_grad_some_grads_keep": OptCase(
        lambda L, fx: (setattr(fx.params["b"], "grad", None), fx.opt.zero_grad(set_to_none=False))
    ),
    "zero_grad_truthy_set_to_none": OptCase(lambda L, fx: fx.opt.zero_grad("no")),
    "step_without_grads": OptCase(
        lambda L, fx: ([setattr(p, "grad", None) for p in fx.params.values()], fx.opt.step())
    ),
}


def run_accepted(lib: Lib, case: OptCase) -> tuple[dict[str, Any], Any, Fixture]:
    fx = build(lib)
    fx.arg = None if case.arg is None else case.arg(lib, fx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        case.call(lib, fx)
    return snapshot(fx), describe(fx.arg, fx.names), fx


@pytest.mark.parametrize("name", cases(ACCEPTED_OPT_CASES))
def test_call_accepted_as_torch_accepts_it(name: str) -> None:
    case = ACCEPTED_OPT_CASES[name]
    their_after, their_arg, their_fx = run_accepted(TORCH, case)
    my_after, my_arg, my_fx = run_accepted(ours(), case)
    assert cross(my_after) == cross(their_after)
    assert my_arg == their_arg
    for fx in (their_fx, my_fx):  # what torch does, asserted of both
        if case.arg is not None and "add_group" in name:
            assert fx.opt.param_groups[-1] is fx.arg  # the caller's dict itself is appended
        if name == "zero_grad_some_grads_keep":
            assert fx.params["b"].grad is None
            assert np.array_equal(fx.params["a"].grad.detach().numpy(), [0.0, 0.0])


def test_zero_grad_keep_zeroes_the_same_grad_tensors() -> None:
    for lib in (TORCH, ours()):
        fx = build(lib)
        grads = {n: p.grad for n, p in fx.params.items()}
        fx.opt.zero_grad(set_to_none=False)
        for n, p in fx.params.items():
            assert p.grad is grads[n]
            if p.grad is not None:
                assert not p.grad.detach().numpy().any()
        fx.opt.zero_grad()
        assert all(p.grad is None for p in fx.params.values())


# Warnings ----------------------------------------------------------------------------------


DUPLICATE = (
    "optimizer contains a parameter group with duplicate parameters; in future, this "
    "will cause an error; see github.com/pytorch/pytorch/issues/40967 for more "
    "information"
)


def _duplicate_in_constructor(L: Lib) -> list[Any]:
    p = L.param()
    return L.SGD([p, L.param([3.0]), p], lr=0.1).param_groups[0]["params"]


def _duplicate_in_add_param_group(L: Lib) -> list[Any]:
    fx = build(L)
    d = fx.params["d"]
    fx.opt.add_param_group({"params": [d, d]})
    return fx.opt.param_groups[-1]["params"]


@pytest.mark.parametrize(
    "make",
    [_duplicate_in_constructor, _duplicate_in_add_param_group],
    ids=["constructor", "add_param_group"],
)
def test_duplicate_parameter_warns(make: Callable[[Lib], list[Any]]) -> None:
    results = []
    for lib in (TORCH, ours()):
        with pytest.warns(UserWarning) as record:
            params = make(lib)
        assert [(w.category, str(w.message)) for w in record] == [(UserWarning, DUPLICATE)]
        assert params[0] is params[-1]  # the duplicate is kept
        results.append(len(params))
    assert results[0] == results[1]


# step with a closure that raises -----------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("outer_grad", [True, False], ids=["grad_enabled", "no_grad"])
def test_step_closure_raising_propagates_and_changes_nothing(outer_grad: bool) -> None:
    snaps = []
    for lib in (TORCH, ours()):
        fx = build(lib)
        error = Boom("closure failed")
        seen: list[bool] = []

        def closure(lib: Lib = lib, error: Boom = error, seen: list[bool] = seen) -> Any:
            seen.append(lib.is_grad_enabled())
            raise error

        before = snapshot(fx)
        if outer_grad:
            with pytest.raises(Boom) as info:
                fx.opt.step(closure)
        else:
            with lib.no_grad(), pytest.raises(Boom) as info:
                fx.opt.step(closure)
        assert info.value is error and str(info.value) == "closure failed"
        assert seen == [True], f"{lib}: the closure runs with grad enabled"
        assert lib.is_grad_enabled()  # restored on the way out (no_grad exited too)
        after = snapshot(fx)
        assert after == before, f"{lib} changed the optimizer"
        snaps.append(cross(after))
    assert snaps[0] == snaps[1]


def test_step_closure_raising_inside_no_grad_keeps_grad_disabled() -> None:
    for lib in (TORCH, ours()):
        fx = build(lib)

        def closure() -> Any:
            raise Boom

        with lib.no_grad():
            with pytest.raises(Boom):
                fx.opt.step(closure)
            assert not lib.is_grad_enabled(), f"{lib} did not restore the outer grad mode"
