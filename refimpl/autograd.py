"""Reverse-mode automatic differentiation over numpy arrays, with torch's semantics.

What `loss.backward()` does, in the order torch does it:

1. Every operation on tensors that require grad records a `Node` (the tensor's `grad_fn`): the
   op's table row, the input tensors, and the arrays its derivative needs ("saved tensors").
2. `backward()` seeds the output's gradient (1 for a scalar), then visits the nodes in the order
   torch's engine does: a node runs once every consumer has sent it its gradient; among ready
   nodes, the most recently created runs first. Gradients arriving at a node are summed in
   arrival order, so a tensor used several times receives the sum of its uses.
3. Each node applies its row's derivative rules (one per input), and the gradient is summed
   back to the input's shape where broadcasting expanded it (`unbroadcast`, the only place).
4. The engine returns each reached leaf's summed gradient, flagged when the array is the
   engine's own (a fresh array nothing else refers to), and `refimpl.tensor` accumulates them:
   the first backward stores a new `.grad` (an owned array itself, as torch's AccumulateGrad
   steals it, else a copy), later ones add in place — until `zero_grad()` clears it. Non-leaf
   tensors keep no `.grad` unless `retain_grad()` set a hook on their node.
5. Unless `retain_graph=True`, the saved arrays are freed; a second backward through a node that
   needed them raises torch's error.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from refimpl.ops import Op


class GradTensor(Protocol):
    """What the engine reads of a tensor (`refimpl.tensor.Tensor` is one; the engine imports no
    tensor module): its values, the node that made it (None for a leaf), whether it needs grad."""

    data: np.ndarray
    grad_fn: Node | None
    requires_grad: bool


# A leaf reached by `run_backward`, the sum of the gradients it received, and whether that is
# the engine's own array (see `_owned`), which the leaf may keep as `.grad` without a copy.
LeafGrad = tuple[GradTensor, np.ndarray, bool]


class _GradMode(threading.local):
    enabled: bool = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    """True unless inside `no_grad()` (thread-local, as in torch)."""
    return _grad_mode.enabled


class _GradModeSwitch:
    """Context manager and decorator (with or without parentheses) that sets grad mode."""

    mode: bool

    def __new__(cls, func: Callable[..., Any] | None = None) -> Any:
        self = super().__new__(cls)
        if func is None:
            return self
        return self(func)

    def __enter__(self) -> None:
        self._previous = _grad_mode.enabled
        _grad_mode.enabled = self.mode

    def __exit__(self, *exc: object) -> None:
        _grad_mode.enabled = self._previous

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        mode_type = type(self)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with mode_type():
                return func(*args, **kwargs)

        return wrapper


class no_grad(_GradModeSwitch):
    """Operations inside record no graph: results do not require grad."""

    mode = False


class enable_grad(_GradModeSwitch):
    """Re-enables graph recording inside a `no_grad` region."""

    mode = True


FREED_GRAPH_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward."
)


class _Freed:
    """Stands in for a freed saved array; keeps only what shape-only derivatives use."""

    __slots__ = ("dtype", "ndim", "shape", "size")
    shape: tuple[int, ...]
    dtype: np.dtype
    ndim: int
    size: int

    def __init__(self, array: np.ndarray | _Freed) -> None:  # a second release re-wraps one
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.size = array.size


_sequence = itertools.count()


class Node:
    """One recorded operation: the `grad_fn` of the tensor it produced."""

    __slots__ = (
        "__weakref__",
        "edges",
        "freed",
        "inputs",
        "op",
        "output",
        "params",
        "retained",
        "saved",
        "sequence_nr",
    )

    def __init__(
        self,
        op: Op,
        inputs: tuple[GradTensor | None, ...],
        arrays: tuple[Any, ...],
        output: np.ndarray,
        params: dict[str, Any],
    ) -> None:
        self.op = op
        # inputs[i] is the tensor that receives gradient i, or None when input i needs none.
        self.inputs = inputs
        # edges[i]: the node gradient i flows to, bound now as in torch (None: inputs[i] is a
        # leaf). An in-place op or detach_() that later rewrites inputs[i].grad_fn does not
        # reroute this node's gradient (nor make the in-place node its own input).
        self.edges = tuple([None if t is None else t.grad_fn for t in inputs])
        # The forward's input arrays (or Python scalars), as the derivative rules take them.
        self.saved = arrays
        # The forward's result; after `release`, a `_Freed` stand-in or (saves=True) None.
        self.output: np.ndarray | _Freed | None = output
        self.params = params
        self.freed = False
        # retain_grad's hook (set by refimpl.tensor): called with the gradient this node
        # receives, before it runs. It must not keep that array (the engine may hand it on).
        self.retained: Callable[[np.ndarray], None] | None = None
        self.sequence_nr = next(_sequence)

    def name(self) -> str:
        return self.op.node_name

    @property
    def next_functions(self) -> tuple[tuple[Node | str | None, int], ...]:
        return tuple(
            (None if t is None else (e if e is not None else "AccumulateGrad"), 0)
            for t, e in zip(self.inputs, self.edges, strict=True)
        )

    def apply(
        self, grad: np.ndarray, grad_owned: bool
    ) -> tuple[list[np.ndarray | None], list[bool]]:
        """The gradient for each input (None where the input needs none), and for each whether
        the engine owns it (see `_owned`). `grad_owned`: whether the engine owns `grad`."""
        op = self.op
        if self.freed and op.saves:
            raise RuntimeError(FREED_GRAPH_MESSAGE)
        output, saved, params = self.output, self.saved, self.params
        grads: list[np.ndarray | None] = []
        owned: list[bool] = []
        for i, tensor in enumerate(self.inputs):
            if tensor is None:
                grads.append(None)
                owned.append(False)
                continue
            if op.variadic:
                variadic_rule = op.derivatives[0]
                assert variadic_rule is not None  # cat and stack: one rule for every input
                g = variadic_rule(i, grad, output, *saved, **params)
            else:
                rule = op.derivatives[i] if i < len(op.derivatives) else None
                if rule is None:
                    raise RuntimeError(
                        f"the derivative for input {i} of {op.name} is not implemented."
                    )
                g = rule(grad, output, *saved, **params)
            g = _conform(np.asarray(g), saved[i], tensor.data.dtype)
            if g is grad:  # passed through: the engine's, if it was, for the first input only
                owned.append(grad_owned)
                grad_owned = False
            else:
                # Fresh (see `_owned`) unless the rule returned an array it was given, or one
                # already returned for another input (not owned twice).
                owned.append(
                    g.base is None
                    and g.flags.writeable
                    and g is not output
                    and not _among(g, saved, grads, params)
                )
            grads.append(g)
        return grads, owned

    def release(self) -> None:
        """Frees the saved arrays. A row whose rules need only shapes (`saves=False`) keeps them,
        so that it can run again; any other row refuses to run once freed, so keeps nothing."""
        self.freed = True
        if self.op.saves:
            self.saved, self.output = (), None
            return
        self.saved = tuple([_Freed(a) if isinstance(a, np.ndarray) else a for a in self.saved])
        assert self.output is not None  # None only once a row that saves arrays is released
        self.output = _Freed(self.output)

    def __repr__(self) -> str:
        return f"<{self.name()} object>"


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sums `grad` back to `shape`, undoing numpy/torch broadcasting (the only place it is done)."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    # Summed from +0.0 as torch's sum_to does, so a sum of -0.0s is +0.0.
    summed = np.add.reduce(grad, axis=axes, keepdims=True, initial=0) if axes else grad
    return summed.reshape(shape)


def _owned(grad: np.ndarray) -> bool:
    """Whether `grad`, made by a derivative rule, a sum or a cast and not one of the arrays the
    rule was given, is a fresh array that nothing else refers to: an ndarray owning its memory,
    writable (not a view, nor the numpy scalar a sum of 0-dim arrays gives). Only such an array
    may become a leaf's `.grad` without a copy, and later be updated in place there."""
    return isinstance(grad, np.ndarray) and grad.base is None and grad.flags.writeable


def _among(
    grad: np.ndarray,
    saved: tuple[Any, ...],
    earlier: list[np.ndarray | None],
    params: dict[str, Any],
) -> bool:
    """Whether `grad` is (by identity) a saved array, a gradient already returned for another
    input, or a parameter."""
    for a in saved:
        if grad is a:
            return True
    for a in earlier:
        if grad is a:
            return True
    return any([grad is a for a in params.values()]) if params else False


def _conform(grad: np.ndarray, saved: Any, dtype: np.dtype) -> np.ndarray:
    shape = getattr(saved, "shape", None)
    if shape is not None and grad.shape != shape:
        grad = unbroadcast(grad, shape)
    if grad.dtype != dtype:
        grad = grad.astype(dtype)
    return grad


def _topological_dependencies(root: Node) -> dict[Node, int]:
    """How many gradients each node waits for before it can run."""
    dependencies: dict[Node, int] = {root: 0}
    stack = [root]
    while stack:
        node = stack.pop()
        for parent in node.edges:
            if parent is None:
                continue
            if parent in dependencies:
                dependencies[parent] += 1
            else:
                dependencies[parent] = 1
                stack.append(parent)
    return dependencies


def _size(shape: tuple[int, ...]) -> str:
    return "torch.Size([" + ", ".join(str(n) for n in shape) + "])"


def run_backward(
    root: GradTensor, gradient: Any = None, retain_graph: bool | None = None
) -> list[LeafGrad]:
    """The gradients of `root.backward(gradient, retain_graph)` (`gradient`: an array, or None
    for a scalar root) for the leaves, in the order they were reached, which is the order torch
    accumulates them in; the caller stores them in `.grad`. See the module docstring."""
    if not root.requires_grad:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    if gradient is None:
        if root.data.size != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs")
        seed, seed_owned = np.ones(root.data.shape, dtype=root.data.dtype), True
    else:
        seed, seed_owned = np.asarray(gradient), False  # the caller's
        if seed.shape != root.data.shape:
            raise RuntimeError(
                f"Mismatch in shape: grad_output[0] has a shape of {_size(seed.shape)} and "
                f"output[0] has a shape of {_size(root.data.shape)}."
            )
        if seed.dtype != root.data.dtype:
            seed, seed_owned = seed.astype(root.data.dtype), True

    if root.grad_fn is None:
        return [(root, seed, seed_owned)]
    return _propagate(root.grad_fn, seed, seed_owned, keep=bool(retain_graph))


def _propagate(root: Node, seed: np.ndarray, seed_owned: bool, keep: bool) -> list[LeafGrad]:
    """Runs the nodes in torch's order; returns each reached leaf with its summed gradient and
    whether the engine owns that array (see `_owned`), in the order the leaves were reached."""
    dependencies = _topological_dependencies(root)
    buffers: dict[Node, np.ndarray] = {root: seed}
    owned_buffers: set[Node] = {root} if seed_owned else set()  # buffers the engine owns
    leaf_grads: dict[int, LeafGrad] = {}
    ready: list[tuple[int, Node]] = [(-root.sequence_nr, root)]
    while ready:
        node = heapq.heappop(ready)[1]
        grad = buffers.pop(node)
        grad_owned = node in owned_buffers
        if node.retained is not None:
            node.retained(grad)
        grads, owned_grads = node.apply(grad, grad_owned)
        if not keep:
            node.release()
        for tensor, parent, g, owned in zip(
            node.inputs, node.edges, grads, owned_grads, strict=True
        ):
            if g is None:  # also where the input needs no gradient (tensor is None)
                continue
            if parent is None:
                assert tensor is not None  # g is a gradient: apply gives None for no tensor
                key = id(tensor)
                previous = leaf_grads.get(key)
                if previous is not None:
                    g = previous[1] + g
                    owned = _owned(g)
                leaf_grads[key] = (tensor, g, owned)
                continue
            if parent in buffers:
                buffers[parent] = g = buffers[parent] + g
                if _owned(g):
                    owned_buffers.add(parent)
                else:
                    owned_buffers.discard(parent)
            else:
                buffers[parent] = g
                if owned:
                    owned_buffers.add(parent)
            dependencies[parent] -= 1
            if dependencies[parent] == 0:
                heapq.heappush(ready, (-parent.sequence_nr, parent))
    return list(leaf_grads.values())
