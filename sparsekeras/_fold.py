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

Activation folding (`strip(..., fold_activations=True)`): an activation layer (`ReLU()`,
`ReLU(6.0)`, `Activation(fn)`) whose one input is a producer's output, under the same graph
rules (seen through the placeholders of BatchNormalization layers folded before, so
conv -> BN -> ReLU folds whole), becomes the producer's own `activation`: the producer
computes act(x @ W + b), applying it as it stores its output, and the activation layer leaves
the graph. An activation layer after a producer that cannot take it is named in a warning; one
after anything else (an Add, a pooling, a model input) is no candidate.
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


def _own_nodes(graph):
    """The ids of `graph`'s own nodes (a Sequential or a loaded model may hold nodes of a graph
    Keras built and dropped: only these count)."""
    return {id(n) for ns in graph._nodes_by_depth.values() for n in ns}


def _calls(layer, ours):
    return [n for n in layer._inbound_nodes if id(n) in ours]


def _is_producer_kind(layer):
    """Whether `layer` is of a family `_producer` folds into (it may still refuse it: unbuilt,
    quantized, a user subclass, ...)."""
    from sparsekeras.layers import conv as sk_conv
    from sparsekeras.layers import dense as sk_dense

    L = keras.layers
    return isinstance(layer, (
        L.Dense, sk_dense.CompactDense, sk_conv.CompactConv2D, sk_conv._CompactSeparable,
        L.SeparableConv1D, L.SeparableConv2D, L.DepthwiseConv1D, L.DepthwiseConv2D,
        L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose, L.Conv1D, L.Conv2D,
        L.Conv3D))


def _feeds_only(graph, layer, node, x, ours):
    """None when `layer` is called once in `graph`, its one output `x` feeding nothing but
    `node` and not being a model output; else the reason (the check both folds share: the
    folded layer's input must be the value nothing else sees)."""
    calls = _calls(layer, ours)
    if len(calls) != 1:
        return f"{layer.name!r} is called {len(calls)} times (shared weights)"
    if len(_flat(calls[0].output_tensors)) != 1:
        return f"{layer.name!r} has several outputs"
    consumers = [n for n in getattr(layer, "_outbound_nodes", []) if id(n) in ours]
    if len(consumers) != 1 or consumers[0] is not node:
        return f"{layer.name!r}'s output feeds {len(consumers)} layers"
    if any(t is x for t in _flat(graph.outputs)):
        return f"{layer.name!r}'s output is also a model output"
    return None


class _Source:
    """What feeds a call `node`: `producer` (a layer `_producer` folds into, whose output
    reaches `node` alone, maybe through the placeholders of layers folded before) and its
    output `x`; else `reason`, and `follows` telling whether the input does come from a layer
    of a producer family (a Dense or convolution that cannot take the fold) or from something
    else (an Add, a pooling, a model input: no candidate)."""

    def __init__(self, producer=None, x=None, reason=None, follows=False):
        self.producer, self.x, self.reason, self.follows = producer, x, reason, follows


def _source(graph, node, ours):
    """The `_Source` of the call `node` (of a layer with one input) in `graph`."""
    inputs = _flat(node.input_tensors)
    if len(inputs) != 1:
        return _Source(reason=f"{len(inputs)} inputs")
    x = inputs[0]
    while True:
        history = getattr(x, "_keras_history", None)
        if history is None:
            return _Source(reason="its input has no producing layer")
        layer = history.operation
        if isinstance(layer, keras.layers.InputLayer):
            return _Source(reason="its input is a model input")
        if not isinstance(layer, keras.layers.Layer):
            return _Source(reason=f"its input comes from an operation ({type(layer).__name__})")
        if isinstance(layer, keras.Model):
            return _Source(reason=f"its input comes from the nested model {layer.name!r}, "
                           "which ends there")
        if not isinstance(layer, _FoldedLayer):
            break
        # A layer folded before (its placeholder returns its input): look through it when
        # the value it passes on reaches `node` alone.
        # (A placeholder always stands on a producer: the folded layer followed one.)
        reason = _feeds_only(graph, layer, node, x, ours)
        if reason is not None:
            return _Source(reason=reason, follows=True)
        node = _calls(layer, ours)[0]
        inputs = _flat(node.input_tensors)
        if len(inputs) != 1:
            return _Source(reason=f"{layer.name!r} has {len(inputs)} inputs", follows=True)
        x = inputs[0]
    follows = _is_producer_kind(layer)
    found = _producer(layer)
    if isinstance(found, str):
        return _Source(reason=found, follows=follows)
    reason = _feeds_only(graph, layer, node, x, ours)
    if reason is not None:
        return _Source(reason=reason, follows=True)
    return _Source(producer=layer, x=x)


def _has_activation(layer):
    act = getattr(layer, "activation", None)
    return act is not None and act is not keras.activations.linear


def _act_name(act):
    return getattr(act, "__name__", repr(act))


def _pair(graph, bn):
    """(producer, None) when `bn` folds into its producer in `graph`, else (None, reason)."""
    ours = _own_nodes(graph)
    nodes = _calls(bn, ours)
    if len(nodes) != 1:
        return None, f"called {len(nodes)} times"
    node = nodes[0]
    kwargs = getattr(getattr(node, "arguments", None), "kwargs", {}) or {}
    if kwargs.get("training") is True:
        return None, "called with training=True"
    src = _source(graph, node, ours)
    if src.producer is None:
        return None, src.reason
    producer, x = src.producer, src.x
    n_out, channel_axis, _ = _producer(producer)
    if _has_activation(producer):
        return None, (f"{producer.name!r} applies "
                      f"activation={_act_name(producer.activation)!r} before the "
                      "BatchNormalization (bn(act(z)) is no kernel and bias)")
    rank = len(x.shape)
    bn_axis = bn.axis if isinstance(bn.axis, int) else None
    if bn_axis is None or bn_axis % rank != channel_axis % rank:
        return None, (f"axis={bn.axis} is not {producer.name!r}'s channel axis "
                      f"({channel_axis % rank} of rank {rank})")
    if int(x.shape[channel_axis]) != n_out:
        return None, f"{producer.name!r} has {n_out} channels, its output {x.shape}"
    return producer, None


# ---- activation layers ----------------------------------------------------------------------

_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU,
                      keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax)


def _activation_function(layer):
    """The `keras.activations` function computing what the activation layer `layer` computes
    (what its producer's `activation` becomes), or the reason there is none.

    `ReLU()` calls `activations.relu(x)` with the defaults (`nn.relu`), `ReLU(6.0)` calls it
    with max_value=6, which is `nn.relu6`, the op `activations.relu6` calls. An `Activation`
    calls its function on its input, as the producer does on its output: any function that
    serializes by name (Keras' own, or registered) and comes back as itself folds."""
    name = type(layer).__name__
    if type(layer) is keras.layers.ReLU:
        if layer.negative_slope == 0 and layer.threshold == 0:
            if layer.max_value is None:
                return keras.activations.relu
            if layer.max_value == 6:
                return keras.activations.relu6
        return (f"ReLU(max_value={layer.max_value}, negative_slope={layer.negative_slope}, "
                f"threshold={layer.threshold}) is no activation function (only ReLU() and "
                "ReLU(6.0) fold)")
    if type(layer) is keras.layers.Activation:
        fn = layer.activation
        try:
            back = keras.activations.get(keras.activations.serialize(fn))
        except Exception:  # noqa: BLE001  (a lambda, an unregistered function: nothing to save)
            back = None
        if back is not fn:
            return (f"its activation {_act_name(fn)!r} does not serialize as itself (a "
                    "function of keras.activations, or registered, folds)")
        return fn
    if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)):
        return f"a subclass ({name}), whose call may differ"
    return f"{name} has no activation function the producer can take"


def _activation_pairs(graph, layer):
    """(producer, fn, None) when the activation layer `layer` folds into its producer in
    `graph`; (None, None, reason) when it follows a producer but cannot fold; (None, None,
    None) when no producer feeds it (not a candidate)."""
    ours = _own_nodes(graph)
    nodes = _calls(layer, ours)
    sources = [_source(graph, n, ours) for n in nodes]
    if not any(s.producer is not None or s.follows for s in sources):
        return None, None, None
    if len(nodes) != 1:
        return None, None, f"called {len(nodes)} times"
    src = sources[0]
    if src.producer is None:
        return None, None, src.reason
    fn = _activation_function(layer)
    if isinstance(fn, str):
        return None, None, fn
    producer = src.producer
    if layer.activity_regularizer is not None:
        return None, None, "it has an activity_regularizer (a loss on its output)"
    if producer.activity_regularizer is not None:
        return None, None, (f"{producer.name!r} has an activity_regularizer (a loss on its "
                            "output, which would then be the activation's)")
    if _has_activation(producer):
        return None, None, (f"{producer.name!r} applies its own "
                            f"activation={_act_name(producer.activation)!r}")
    if layer.compute_dtype != producer.compute_dtype:
        return None, None, (f"it computes in {layer.compute_dtype}, {producer.name!r} in "
                            f"{producer.compute_dtype}")
    return producer, fn, None


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

class _FoldedLayer(keras.layers.Layer):
    """Where a folded layer was (its input, unchanged), in a graph not rebuilt without it
    (`fold_batchnorm(..., inplace=True)`, `strip(..., inplace=True)`, or a model class that
    cannot be rebuilt)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.built = True

    def call(self, inputs, training=None, mask=None):
        # The graph node replays the folded layer's call arguments (training, mask).
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="sparsekeras")
class FoldedBatchNormalization(_FoldedLayer):
    """Where a folded BatchNormalization was (its input, unchanged), in a graph not rebuilt
    without it (`fold_batchnorm(..., inplace=True)`, or a model class that cannot be
    rebuilt)."""


@keras.saving.register_keras_serializable(package="sparsekeras")
class FoldedActivation(_FoldedLayer):
    """Where an activation layer folded into the layer before it was (its input, unchanged:
    the producer applies the activation), in a graph not rebuilt without it
    (`strip(..., inplace=True)`, or a model class that cannot be rebuilt)."""


_PLACEHOLDERS = {"batchnorm": FoldedBatchNormalization, "activation": FoldedActivation}


def _rebuild(model, cache):
    """`model` with the placeholders of folded layers (`FoldedBatchNormalization`,
    `FoldedActivation`) of its graph (and of nested graphs) left out: a new Sequential /
    Functional sharing the other layers, or `model` itself where its class cannot be rebuilt
    (there the placeholders stay: they return their input)."""
    if id(model) in cache:
        return cache[id(model)]
    out = model
    if type(model) is keras.Sequential:
        layers = [_rebuild(layer, cache) for layer in model.layers
                  if not isinstance(layer, _FoldedLayer)]
        first = model._layers[0] if model._layers else None
        if isinstance(first, keras.layers.InputLayer):
            inp = keras.Input(batch_shape=first.batch_shape, dtype=first._dtype,
                              name=first.name)
            out = keras.Sequential([inp] + layers, name=model.name, trainable=model.trainable)
        elif not model.built:
            out = keras.Sequential(layers, name=model.name, trainable=model.trainable)
    elif type(model) is Functional:
        if _graph_of(model) is not None and any(
                isinstance(layer, _FoldedLayer) or layer is not _rebuild(layer, cache)
                for layer in model.layers):
            def call(layer, *args, **kwargs):
                if isinstance(layer, _FoldedLayer):
                    return args[0]
                return layer(*args, **kwargs)

            out = keras.models.clone_model(model, clone_function=lambda l: _rebuild(l, cache),
                                           call_function=call)
            out.trainable = model.trainable
    cache[id(model)] = out
    return out


def _remaining_placeholders(model):
    """(name, kind) of each placeholder left in `model`."""
    return [(layer.name, kind) for _, layer, _ in _tree.walk(model)
            for kind, cls in _PLACEHOLDERS.items() if type(layer) is cls]


# ---- the public function ----------------------------------------------------------------------

def _owners(model):
    """id(layer) -> (parent, graph) for every layer that is an operation of a graph in the
    tree of `model` (the model's own, nested Sequential / Functional ones)."""
    graphs = [(model, _graph_of(model))] + [
        (layer, _graph_of(layer)) for _, layer, _ in _tree.walk(model)
        if isinstance(layer, keras.Model)]
    owner = {}
    for parent, graph in graphs:
        if graph is None:
            continue
        for op in graph._operations:
            owner.setdefault(id(op), (parent, graph))
    return owner


def _fold_batchnorms(model, folded, skipped):
    owner = _owners(model)
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
        _tree.replace_layer(parent, layer, FoldedBatchNormalization(name=layer.name))
        folded.append((paths.get(id(producer), producer.name), path))


def _fold_activations(model, folded, skipped):
    """Fold each activation layer whose input comes from a producer (maybe through the
    placeholders of folded BatchNormalization layers) into it. An activation layer with no
    graph to follow, or whose input does not come from a Dense or convolution, is no
    candidate: it is left as it is, unnamed."""
    owner = _owners(model)
    paths = {id(layer): path for _, layer, path in _tree.walk(model)}
    for _, layer, path in list(_tree.walk(model)):
        if not isinstance(layer, _ACTIVATION_LAYERS) or id(layer) not in owner:
            continue
        parent, graph = owner[id(layer)]
        producer, fn, reason = _activation_pairs(graph, layer)
        if producer is None:
            if reason is not None:
                skipped.append((path, reason))
            continue
        producer.activation = fn
        _tree.replace_layer(parent, layer,
                            FoldedActivation(name=layer.name, dtype=layer.dtype_policy.name))
        folded.append((paths.get(id(producer), producer.name), path))


def fold_in_place(model, rebuild=True, batchnorm=True, activations=False):
    """Fold every foldable (producer, BatchNormalization) pair of `model` when `batchnorm`,
    then every foldable (producer, activation layer) pair when `activations` (`model`'s layers
    are changed in place).

    Returns (model, folded, skipped): the model (a rebuilt one when `rebuild` and the graphs
    allow it, else `model` with placeholders returning their input where the folded layers
    were), and two dicts keyed "batchnorm" and "activation": `folded[kind]` the list of
    (producer path, folded layer path), `skipped[kind]` the list of (path, reason) not
    folded."""
    folded = {"batchnorm": [], "activation": []}
    skipped = {"batchnorm": [], "activation": []}
    if batchnorm:
        _fold_batchnorms(model, folded["batchnorm"], skipped["batchnorm"])
    if activations:
        _fold_activations(model, folded["activation"], skipped["activation"])
    if any(folded.values()) and rebuild:
        model = _rebuild(model, {})
        for name, kind in _remaining_placeholders(model):
            skipped[kind].append((name, "folded; kept as an identity (its model's class "
                                  "cannot be rebuilt without it)"))
    return model, folded, skipped


def warn_skipped(skipped, what, kind="BatchNormalization"):
    """One warning naming every layer (of `kind`) not folded, with its reason."""
    missed = [(p, r) for p, r in skipped if not r.startswith("folded;")]
    if missed:
        listed = "; ".join(f"{p}: {r}" for p, r in missed[:10])
        more = f" and {len(missed) - 10} more" if len(missed) > 10 else ""
        warnings.warn(f"{what} left {len(missed)} {kind} layers unfolded: {listed}"
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
    folded, skipped = folded["batchnorm"], skipped["batchnorm"]
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
