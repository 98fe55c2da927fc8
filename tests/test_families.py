"""Each OptimizerFamily against the torch optimizer it declares, and the family as the one
place a hyperparameter is declared (everything the harness draws, requires, keys and accepts
follows from its tuple)."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance import families, strategies
from conformance.families import OptimizerFamily, load
from conformance.options import RunOptions, parse_features

FAMILIES = [families.get(name) for name in families.FAMILY_NAMES]


def _construct(family: OptimizerFamily, **kwargs: Any) -> torch.optim.Optimizer:
    optimizer: torch.optim.Optimizer = load(family.torch_class)(
        [torch.zeros(3, requires_grad=True)], **kwargs
    )
    return optimizer


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_defaults_are_torchs(family: OptimizerFamily) -> None:
    parameters = inspect.signature(load(family.torch_class)).parameters
    for h in family.hyperparameters:
        assert parameters[h.name].default == h.default, h.name


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_invalid_rows_are_rejected_and_edges_accepted_by_torch(family: OptimizerFamily) -> None:
    for _, change in family.invalid:
        kwargs = {"lr": 0.1, **change}
        if isinstance(kwargs["lr"], list):
            kwargs["lr"] = torch.tensor(kwargs["lr"])
        with pytest.raises(ValueError):
            _construct(family, **kwargs)
    for _, change in family.edges:
        _construct(family, **{"lr": 0.1, **change})
    for _, _, kwargs, _ in family.configurations:
        _construct(family, **kwargs)
    _construct(family, **family.example)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_state_keys_are_torchs(family: OptimizerFamily) -> None:
    """Every entry torch keeps, with every feature on, is one the family compares."""
    on = {
        h.name: h.default if h.on is None else True if h.default is False else 0.5
        for h in family.hyperparameters
        if h.name != "lr"
    }
    optimizer = _construct(family, **family.valid({"lr": 0.1, **on}))
    p = optimizer.param_groups[0]["params"][0]
    p.grad = torch.ones_like(p)
    optimizer.step()
    assert set(optimizer.state[p]) <= {k.name for k in family.state}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_drawn_hyperparameters_construct_in_torch(
    family: OptimizerFamily, data: st.DataObject
) -> None:
    options = data.draw(strategies.hyperparameters(frozenset(), family))
    _construct(family, **options)
    for h in family.hyperparameters:
        if h.on is not None:
            assert data.draw(h.on) != h.off_value  # "on" is never the value that means off


SGD = families.get("sgd")
SGD_WITHOUT_MAXIMIZE = replace(
    SGD, hyperparameters=tuple(h for h in SGD.hyperparameters if h.name != "maximize")
)


def test_a_hyperparameter_is_one_entry_of_its_family() -> None:
    """SGD without `maximize` in its tuple, and with it: group checks, failure keys, coverage
    and --without all follow from that one entry (drawing: the test below)."""
    sgd, without = SGD, SGD_WITHOUT_MAXIMIZE
    assert "maximize" in sgd.features and "maximize" not in without.features
    assert "maximize" in sgd.names and "maximize" not in without.names
    assert sgd.in_play(lambda k: True if k == "maximize" else None, False) == ["maximize"]
    assert without.in_play(lambda k: True if k == "maximize" else None, False) == []
    assert "maximize" in sgd.reach_needs() and "maximize" not in without.reach_needs()
    assert sgd.argument_of("maximize") == "maximize" and without.argument_of("maximize") is None
    assert "maximize" in RunOptions("refimpl").required_group_keys()
    assert (
        "maximize"
        not in RunOptions("refimpl", without=frozenset({"maximize"})).required_group_keys()
    )


@settings(max_examples=100, deadline=None)
@given(without_it=strategies.hyperparameters(frozenset(), SGD_WITHOUT_MAXIMIZE), changed=st.data())
def test_a_hyperparameter_is_drawn_from_its_entry(
    without_it: dict[str, Any], changed: st.DataObject
) -> None:
    assert "maximize" not in without_it
    name, _ = changed.draw(
        strategies.hyperparameter_change(without_it, frozenset(), SGD_WITHOUT_MAXIMIZE)
    )
    assert name != "maximize"


def test_maximize_is_drawn_with_its_entry() -> None:
    from hypothesis import find

    find(strategies.hyperparameters(frozenset(), SGD), lambda o: o.get("maximize") is True)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_without_takes_the_familys_features(family: OptimizerFamily) -> None:
    assert parse_features(",".join(family.features), family.name) == set(family.features)
    with pytest.raises(ValueError, match="unknown feature"):
        parse_features("nesterov" if family.name != "sgd" else "amsgrad", family.name)
