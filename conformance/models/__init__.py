"""Small models as data, built twice from the same numbers: in torch and in refimpl.

`spec`: what a model is (`ModelSpec`: layers or an op graph, loss, seed; its shapes, ops, kinks
and gradient ULP budget). `forward`: the forward pass and loss both libraries run through their
functional APIs, and the kinks it hits. `data`: initial values and batches, drawn with numpy.
`build`: `build(spec, dtype, lib)`, a `Model` in either library. `scales`: what a gradient's (or
the loss's) rounding error is measured against (conformance.magnitudes' terms, the forward's
rounding carried into the gradient) and where no budget can hold.

Import order: spec ← forward ← data ← build; scales reads spec, forward and data.
"""

from conformance.models.build import Model, build
from conformance.models.data import batch, initial_values
from conformance.models.scales import (
    SCALE_FLOOR,
    cancelling_op,
    forward_error_bounds,
    grad_error_ulps,
    gradient_magnitudes,
    gradient_scales,
    loss_forward_error_bound,
    loss_scale,
    zero_gradient_parameters,
)
from conformance.models.spec import (
    ACTIVATIONS,
    ALL_OPS,
    BINARY_OPS,
    CLASS_LOSSES,
    DTYPES,
    GRAD_BUDGET_CAP,
    GRAD_BUDGET_SCALE,
    GRAPH_LOSSES,
    GRAPH_OPS,
    JOIN_OPS,
    KINDS,
    KINKED_OPS,
    KINKS,
    L1_LIKE,
    LAYER_OPS,
    LIBS,
    LOSSES,
    REDUCTION_OPS,
    REDUCTIONS,
    SHAPE_OPS,
    SMOOTH_OPS,
    SOFTMAX_OPS,
    GraphOp,
    Layer,
    ModelSpec,
    Param,
    Shape,
    conv_out,
    graph_op_shape,
    kinks_of,
    ops_of,
)
from refimpl.ops import OPS

__all__ = [
    "ACTIVATIONS",
    "ALL_OPS",
    "BINARY_OPS",
    "CLASS_LOSSES",
    "DTYPES",
    "GRAD_BUDGET_CAP",
    "GRAD_BUDGET_SCALE",
    "GRAPH_LOSSES",
    "GRAPH_OPS",
    "JOIN_OPS",
    "KINDS",
    "KINKED_OPS",
    "KINKS",
    "L1_LIKE",
    "LAYER_OPS",
    "LIBS",
    "LOSSES",
    "OPS",
    "REDUCTIONS",
    "REDUCTION_OPS",
    "SCALE_FLOOR",
    "SHAPE_OPS",
    "SMOOTH_OPS",
    "SOFTMAX_OPS",
    "GraphOp",
    "Layer",
    "Model",
    "ModelSpec",
    "Param",
    "Shape",
    "batch",
    "build",
    "cancelling_op",
    "conv_out",
    "forward_error_bounds",
    "grad_error_ulps",
    "gradient_magnitudes",
    "gradient_scales",
    "graph_op_shape",
    "initial_values",
    "kinks_of",
    "loss_forward_error_bound",
    "loss_scale",
    "ops_of",
    "zero_gradient_parameters",
]
