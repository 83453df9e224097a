"""BatchNorm folding: a Dense / convolution whose output feeds only an inference
`BatchNormalization` becomes one layer holding the folded kernel and bias, and the
BatchNormalization leaves the graph.

At inference a BatchNormalization on the channel axis computes, per output channel c,

    y_c = gamma_c * (z_c - mean_c) / sqrt(var_c + eps) + beta_c = s_c * z_c + t_c

with z = x @ W + b the producer's output. So the producer with kernel W * s (each output
channel's weights scaled by s_c) and bias b * s + t computes y itself. Scaling never turns a
zero into a nonzero, so a pruned kernel keeps its pattern: sparse layers are scaled on their
kernel (the mask is unchanged), stored forms (`CompactDense`, `CompactConv2D`, ...) on their
stored values.

Only what the graph shows can be folded: the pair must sit in a Functional or Sequential
graph (nested ones are reached), the producer must be called once, its one output must feed
nothing but the BatchNormalization (not another layer, not a model output), and it must have
no activation of its own (a `Conv2D(..., activation="relu")` followed by a BatchNormalization
computes `bn(relu(z))`, which no kernel and bias reproduce). Whatever is not folded is named,
with the reason, in one warning.
"""
import warnings

import numpy as np
import keras
from keras.src.models.functional import Functional

from sparsekeras import _tree

__all__ = ["fold_batchnorm"]


# ---- what a producer is -----------------------------------------------------------------------

def _np(v):
    if hasattr(v, "numpy"):  # a variable: its value (np.array(variable) warns on NumPy 2)
        return np.asarray(v.numpy())
    return np.asarray(keras.ops.convert_to_numpy(v))


def _stored_columns(indptr, block, n_values):
    """The output channel of each stored value of (block-)CSC arrays whose indptr runs over
    output groups of `block` channels (block-major values: `block` values per stored row)."""
    indptr = _np(indptr).astype(np.int64)
    groups = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))      # one per stored row
    cols = (groups[:, None] * block + np.arange(block)[None, :]).reshape(-1)
    if cols.size != n_values:
        raise ValueError(f"stored structure holds {cols.size} values, the layer {n_values}")
    return cols


def _scale_stored(values, cols):
    def scale(s):
        values.assign((_np(values) * s[cols]).astype(_np(values).dtype))
    return scale


def _scale_axis(variable, axis, reshape=None):
    """Scale `variable` along `axis` by s (or by s reshaped to `reshape`, on the last axes)."""
    def scale(s):
        w = _np(variable)
        if reshape is not None:
            factor = s.reshape(reshape)
        else:
            shape = [1] * w.ndim
            shape[axis] = -1
            factor = s.reshape(shape)
        variable.assign((w * factor).astype(w.dtype))
    return scale


def _kernel_variable(layer, attr):
    """The kernel variable (a sparse layer's own accessor, else the Keras attribute)."""
    getter = getattr(layer, "_kernel_variable", None)
    if getter is not None and attr in ("kernel", "_kernel"):
        return getter()
    var = getattr(layer, "_" + attr, None) if attr == "kernel" else None
    return var if var is not None else getattr(layer, attr)


def _producer(layer):
    """How to fold into `layer`: (n_out, channel_axis, scale(s)) or a reason string.

    channel_axis is the axis of the layer's output that holds its output channels (-1 for
    channels_last, 1 for channels_first)."""
    from sparsekeras.layers import conv as sk_conv
    from sparsekeras.layers import dense as sk_dense

    L = keras.layers
    name = type(layer).__name__
    if not layer.built:
        return "not built"
    if getattr(layer, "quantization_mode", None):
        return f"quantized ({layer.quantization_mode})"
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled"
    if not type(layer).__module__.startswith(("keras.", "sparsekeras.")):
        return (f"its input comes from {layer.name!r} ({name}), a user class whose call may "
                "differ from its base's")
    first = -1 if getattr(layer, "data_format", "channels_last") == "channels_last" else 1

    if isinstance(layer, sk_dense.CompactDense):
        return (layer.units, -1, _scale_stored(
            layer.values, _stored_columns(layer.indptr, layer.block, layer.nnz)))
    if isinstance(layer, sk_conv.CompactConv2D):  # CompactConv1D too
        return (layer.filters, -1, _scale_stored(
            layer.values, _stored_columns(layer.indptr, 1, layer.nnz)))
    if isinstance(layer, sk_conv._CompactSeparable):
        return (layer.filters, -1, _scale_stored(
            layer.pointwise_values,
            _stored_columns(layer.pointwise_indptr, 1, layer.pointwise_nnz)))
    if isinstance(layer, sk_dense.SparseDense) and layer.compacted:
        c = layer._compact
        return (layer.units, -1, _scale_stored(c.values, _np(c.positions) % layer.units))
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return (layer.filters, first, _scale_axis(layer.pointwise_kernel, -1))
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        kernel = _kernel_variable(layer, "kernel")
        c, m = (int(d) for d in kernel.shape[-2:])
        return (c * m, first, _scale_axis(kernel, None, reshape=(c, m)))
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return (layer.filters, first, _scale_axis(_kernel_variable(layer, "kernel"), -2))
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        return (layer.filters, first, _scale_axis(_kernel_variable(layer, "kernel"), -1))
    if type(layer) in (L.Dense, sk_dense.SparseDense):
        return (layer.units, -1, _scale_axis(_kernel_variable(layer, "kernel"), -1))
    return f"its input comes from {layer.name!r} ({name}), not a Dense or convolution"


def _add_bias(layer, n):
    """Give a built layer created with use_bias=False a zero bias (as its build would have)."""
    tracker = getattr(layer, "_tracker", None)
    if tracker is not None:
        tracker.unlock()
    try:
        bias = layer.add_weight(name="bias", shape=(n,), initializer="zeros", trainable=True)
        layer.bias = bias
        layer.use_bias = True
    finally:
        if tracker is not None:
            tracker.lock()
    return bias


# ---- finding the pairs ------------------------------------------------------------------------

def _graph_of(model):
    """The Functional graph holding `model`'s layers (a Sequential's own), or None."""
    if _tree._is_graph(model):
        return model
    fn = getattr(model, "_functional", None)
    return fn if fn is not None and _tree._is_graph(fn) else None


def _flat(x):
    return [t for t in keras.tree.flatten(x)]


def _pair(graph, bn):
    """(producer, None) when `bn` folds into its producer in `graph`, else (None, reason).

    Only the graph's own nodes count (a Sequential or a loaded model may hold nodes of a
    graph Keras built and dropped)."""
    ours = {id(n) for ns in graph._nodes_by_depth.values() for n in ns}
    nodes = [n for n in bn._inbound_nodes if id(n) in ours]
    if len(nodes) != 1:
        return None, f"called {len(nodes)} times"
    node = nodes[0]
    kwargs = getattr(getattr(node, "arguments", None), "kwargs", {}) or {}
    if kwargs.get("training") is True:
        return None, "called with training=True"
    inputs = _flat(node.input_tensors)
    if len(inputs) != 1:
        return None, f"{len(inputs)} inputs"
    x = inputs[0]
    history = getattr(x, "_keras_history", None)
    if history is None:
        return None, "its input has no producing layer"
    producer = history.operation
    if isinstance(producer, keras.layers.InputLayer):
        return None, "its input is a model input"
    if not isinstance(producer, keras.layers.Layer):
        return None, f"its input comes from an operation ({type(producer).__name__})"
    if isinstance(producer, keras.Model):
        return None, f"its input comes from the nested model {producer.name!r}, which ends there"
    found = _producer(producer)
    if isinstance(found, str):
        return None, found
    n_out, channel_axis, _ = found
    calls = [n for n in producer._inbound_nodes if id(n) in ours]
    if len(calls) != 1:
        return None, f"{producer.name!r} is called {len(calls)} times (shared weights)"
    if len(_flat(calls[0].output_tensors)) != 1:
        return None, f"{producer.name!r} has several outputs"
    consumers = [n for n in getattr(producer, "_outbound_nodes", []) if id(n) in ours]
    if len(consumers) != 1 or consumers[0] is not node:
        return None, f"{producer.name!r}'s output feeds {len(consumers)} layers"
    if any(t is x for t in _flat(graph.outputs)):
        return None, f"{producer.name!r}'s output is also a model output"
    act = getattr(producer, "activation", None)
    if act is not None and act is not keras.activations.linear:
        act_name = getattr(act, "__name__", repr(act))
        return None, (f"{producer.name!r} applies activation={act_name!r} before the "
                      "BatchNormalization (bn(act(z)) is no kernel and bias)")
    rank = len(x.shape)
    bn_axis = bn.axis if isinstance(bn.axis, int) else None
    if bn_axis is None or bn_axis % rank != channel_axis % rank:
        return None, (f"axis={bn.axis} is not {producer.name!r}'s channel axis "
                      f"({channel_axis % rank} of rank {rank})")
    if int(x.shape[channel_axis]) != n_out:
        return None, f"{producer.name!r} has {n_out} channels, its output {x.shape}"
    return producer, None


def _fold_pair(producer, bn):
    """Fold the inference BatchNormalization `bn` into `producer`'s weights."""
    n, _, scale = _producer(producer)
    mean = _np(bn.moving_mean).astype(np.float64)
    var = _np(bn.moving_variance).astype(np.float64)
    gamma = _np(bn.gamma).astype(np.float64) if bn.gamma is not None else np.ones(n)
    beta = _np(bn.beta).astype(np.float64) if bn.beta is not None else np.zeros(n)
    s = gamma / np.sqrt(var + float(bn.epsilon))
    shift = beta - mean * s
    scale(s)
    bias = getattr(producer, "bias", None)
    if bias is None:
        bias = _add_bias(producer, n)
    b = _np(bias)
    bias.assign((b.astype(np.float64) * s + shift).astype(b.dtype))


# ---- rebuilding the graphs without the folded layers -----------------------------------------

@keras.saving.register_keras_serializable(package="sparsekeras")
class FoldedBatchNormalization(keras.layers.Layer):
    """Where a folded BatchNormalization was (its input, unchanged), in a graph not rebuilt
    without it (`fold_batchnorm(..., inplace=True)`, or a model class that cannot be
    rebuilt)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.built = True

    def call(self, inputs, training=None, mask=None):
        # The graph node replays the BatchNormalization's call arguments (training, mask).
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _rebuild(model, cache):
    """`model` with the `FoldedBatchNormalization` layers of its graph (and of nested graphs) left out: a new
    Sequential / Functional sharing the other layers, or `model` itself where its class cannot
    be rebuilt (there the `FoldedBatchNormalization` placeholders stay: they return their input)."""
    if id(model) in cache:
        return cache[id(model)]
    out = model
    if type(model) is keras.Sequential:
        layers = [_rebuild(layer, cache) for layer in model.layers
                  if not isinstance(layer, FoldedBatchNormalization)]
        first = model._layers[0] if model._layers else None
        if isinstance(first, keras.layers.InputLayer):
            inp = keras.Input(batch_shape=first.batch_shape, dtype=first._dtype,
                              name=first.name)
            out = keras.Sequential([inp] + layers, name=model.name, trainable=model.trainable)
        elif not model.built:
            out = keras.Sequential(layers, name=model.name, trainable=model.trainable)
    elif type(model) is Functional:
        if _graph_of(model) is not None and any(
                isinstance(layer, FoldedBatchNormalization) or layer is not _rebuild(layer, cache)
                for layer in model.layers):
            def call(layer, *args, **kwargs):
                if isinstance(layer, FoldedBatchNormalization):
                    return args[0]
                return layer(*args, **kwargs)

            out = keras.models.clone_model(model, clone_function=lambda l: _rebuild(l, cache),
                                           call_function=call)
            out.trainable = model.trainable
    cache[id(model)] = out
    return out


def _remaining_placeholders(model):
    return [layer.name for _, layer, _ in _tree.walk(model) if isinstance(layer, FoldedBatchNormalization)]


# ---- the public function ----------------------------------------------------------------------

def fold_in_place(model, rebuild=True):
    """Fold every foldable (producer, BatchNormalization) pair of `model` (changed in place).

    Returns (model, folded, skipped): the model (a rebuilt one when `rebuild` and the graphs
    allow it, else `model` with placeholders returning their input where the BatchNormalization
    layers were), the list of (producer path, bn name) folded, and the list of
    (bn path, reason) not folded."""
    graphs = [(model, _graph_of(model))] + [
        (layer, _graph_of(layer)) for _, layer, _ in _tree.walk(model)
        if isinstance(layer, keras.Model)]
    owner = {}
    for parent, graph in graphs:
        if graph is None:
            continue
        for op in graph._operations:
            owner.setdefault(id(op), (parent, graph))
    folded, skipped = [], []
    paths = {id(layer): path for _, layer, path in _tree.walk(model)}
    for _, layer, path in list(_tree.walk(model)):
        if type(layer) is not keras.layers.BatchNormalization:
            if isinstance(layer, keras.layers.BatchNormalization):
                skipped.append((path, f"a subclass ({type(layer).__name__}), whose call may "
                                "differ"))
            continue
        if id(layer) not in owner:
            skipped.append((path, "inside a layer's own call, or a Sequential built without "
                            "an Input (no graph to follow)"))
            continue
        parent, graph = owner[id(layer)]
        producer, reason = _pair(graph, layer)
        if producer is None:
            skipped.append((path, reason))
            continue
        _fold_pair(producer, layer)
        placeholder = FoldedBatchNormalization(name=layer.name)
        _tree.replace_layer(parent, layer, placeholder)
        folded.append((paths.get(id(producer), producer.name), path))
    if folded and rebuild:
        model = _rebuild(model, {})
        left = _remaining_placeholders(model)
        if left:
            skipped.extend((name, "folded; kept as an identity (its model's class cannot be "
                            "rebuilt without it)") for name in left)
    return model, folded, skipped


def warn_skipped(skipped, what):
    """One warning naming every BatchNormalization not folded, with its reason."""
    missed = [(p, r) for p, r in skipped if not r.startswith("folded;")]
    if missed:
        listed = "; ".join(f"{p}: {r}" for p, r in missed[:10])
        more = f" and {len(missed) - 10} more" if len(missed) > 10 else ""
        warnings.warn(f"{what} left {len(missed)} BatchNormalization layers unfolded: {listed}"
                      f"{more}.", stacklevel=3)


def fold_batchnorm(model, inplace=False, return_report=False):
    """A copy of `model` where each Dense / convolution whose output feeds only an inference
    `BatchNormalization` holds the folded kernel and bias, and the BatchNormalization is gone.

    Folded producers: `Dense`, `Conv1D` / `Conv2D` / `Conv3D` (grouped too), their transposes,
    `DepthwiseConv1D` / `DepthwiseConv2D`, the pointwise part of `SeparableConv1D` /
    `SeparableConv2D`, their sparse counterparts (`SparseDense`, `SparseConv2D`, ...: the
    kernel is scaled per output channel, so the mask and the sparsity pattern stay) and their
    stored forms (`CompactDense`, `CompactConv2D`, ...: the stored values are scaled). The
    outputs equal the model's at inference within float rounding (1e-5 relative in float32).
    `sparsekeras.strip` folds by default.

    A pair folds when the graph shows it: both in a Functional or Sequential graph (nested
    models are reached), the producer called once, its one output feeding only the
    BatchNormalization (no other layer, not a model output), no activation inside the
    producer (`Conv2D(..., activation="relu")` then BatchNormalization cannot fold), and the
    BatchNormalization normalizing the producer's channel axis. Every BatchNormalization not
    folded is named, with the reason, in one warning. Plain `Sequential` and Functional models
    are rebuilt without the folded layers (sharing the other layers); inside a Functional
    subclass with its own constructor (a keras_hub backbone) the BatchNormalization is
    replaced by an identity layer instead.

    Training after folding trains the folded layers without batch statistics: fold for
    inference.

    Args:
        model: a built Keras model.
        inplace: fold `model` itself (its layers are changed; each folded BatchNormalization
            is replaced by an identity layer in its graph, so `model` stays the same object)
            instead of a copy made through Keras serialization.
        return_report: return `(model, report)`, report a dict with `folded` (list of
            (producer path, BatchNormalization path)) and `skipped` (list of (path, reason)).

    Returns:
        The folded model (or `(model, report)`).

    Raises:
        ValueError: `model` is not a Keras model, or cannot be copied (then say `inplace=True`).

    Example:
        >>> folded = sparsekeras.fold_batchnorm(model)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"fold_batchnorm expects a Keras model. Received: "
                         f"{type(model).__name__}")
    target = model if inplace else _tree.copy_model(model, "fold_batchnorm")
    out, folded, skipped = fold_in_place(target, rebuild=not inplace)
    _drop_traces(out)
    from sparsekeras._convert import _mark_called

    _mark_called(out)  # a rebuilt model exports (Keras' ONNX export wants a called model)
    warn_skipped(skipped, "fold_batchnorm")
    if return_report:
        return out, {"folded": folded, "skipped": skipped}
    return out


def _drop_traces(model):
    for attr in ("train_function", "test_function", "predict_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
