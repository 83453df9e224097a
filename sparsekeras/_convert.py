"""Model-level conversions: `sparsify` (Dense -> SparseDense), `strip` (-> CompactDense) and
`compact` / `decompact` (SparseDense training its nonzeros only, or its dense kernel)."""
import contextlib

import keras

from sparsekeras.layers import (CompactConv2D, CompactDense, SparseConv2D, SparseDense,
                                SparseDepthwiseConv2D)

__all__ = ["sparsify", "strip", "compact", "decompact"]


def _clone_with(model, replace):
    """Clone a Sequential/Functional model, replacing layers by `replace(layer)` (or None to keep
    a fresh copy of the layer), then copy weights of the unreplaced layers."""
    if not isinstance(model, (keras.Sequential, keras.Model)) or (
            not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network",
                                                                    hasattr(model, "_operations"))):
        raise ValueError("sparsify/strip work on Sequential and Functional models; for a subclassed "
                         f"model, use sparsekeras.layers in its definition. Received: {type(model).__name__}")
    replaced = {}

    def clone_fn(layer):
        new = replace(layer)
        if new is None:
            new = layer.__class__.from_config(layer.get_config())
        else:
            replaced[layer.name] = new
        return new

    clone = keras.models.clone_model(model, clone_function=clone_fn, recursive=True)
    old_layers = _all_layers(model)
    new_layers = _all_layers(clone)
    if len(old_layers) != len(new_layers):
        raise ValueError(f"cloning {model.name} gave {len(new_layers)} layers for {len(old_layers)}")
    for old, new in zip(old_layers, new_layers):
        if old.name in replaced or isinstance(old, keras.Model):
            continue
        if getattr(old, "compacted", False):  # the clone is not: transfer Dense's layout
            store = {}
            old.save_own_variables(store)
            new.load_own_variables(store)
        elif old.weights:
            new.set_weights(old.get_weights())
    return clone, replaced


def uncompiled(model):
    """The same layers in a new, uncompiled model (keras.models.clone_model compiles its clone
    when the original was compiled, and a saved file then carries optimizer slots)."""
    if not model.compiled:
        return model
    if isinstance(model, keras.Sequential):
        return keras.Sequential([keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype)]
                                + list(model.layers), name=model.name)
    return keras.Model(model.inputs, model.outputs, name=model.name)


def _all_layers(model):
    """Every layer of a model, nested models' layers included, in a stable order."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)]


def sparsify(model, layer_names=None, switch_sparsity=None, compute="auto"):
    """A copy of a Sequential/Functional model with its `keras.layers.Dense`, `Conv2D` and
    `DepthwiseConv2D` layers replaced by `SparseDense`, `SparseConv2D` and
    `SparseDepthwiseConv2D` layers holding the same weights (mask all ones), ready for
    `GradualPruning`. Conv layers with `groups > 1` or channels_first data are kept as they are.

    Args:
        model: a built Keras model.
        layer_names: names of the layers to convert (default: all convertible ones). Keeping a small output
            layer dense usually costs nothing and protects accuracy.
        switch_sparsity, compute: passed to each sparse layer.

    Example:
        >>> sparse_model = sparsekeras.sparsify(model, layer_names=["hidden1", "hidden2"])
    """
    weights = {}
    if layer_names is not None:
        layer_names = set(layer_names)
        missing = layer_names - {layer.name for layer in _all_layers(model)}
        if missing:
            raise ValueError(f"sparsify: no layer named {sorted(missing)} in the model. "
                             f"Received: layer_names={sorted(layer_names)}")

    def replace(layer):
        if layer_names is not None and layer.name not in layer_names:
            return None
        kwargs = {"compute": compute}
        if switch_sparsity is not None:
            kwargs["switch_sparsity"] = switch_sparsity
        if type(layer) is keras.layers.Dense:
            new = SparseDense.from_dense(layer, **kwargs)
        elif (type(layer) is keras.layers.Conv2D and layer.groups == 1
              and layer.data_format == "channels_last"):
            new = SparseConv2D.from_conv(layer, **kwargs)
        elif (type(layer) is keras.layers.DepthwiseConv2D
              and layer.data_format == "channels_last"):
            new = SparseDepthwiseConv2D.from_depthwise(layer, **kwargs)
        else:
            return None
        weights[layer.name] = layer.get_weights()
        return new

    clone, replaced = _clone_with(model, replace)
    for name, layer in replaced.items():
        kernel_and_bias = weights[name]
        kernel = layer.kernel if isinstance(layer, SparseDepthwiseConv2D) else layer._kernel
        kernel.assign(kernel_and_bias[0])
        if layer.bias is not None:
            layer.bias.assign(kernel_and_bias[1])
        # The mask is still the all-ones one `build` made its structure from: nothing to refresh.
    return clone


def strip(model, block="auto"):
    """A compact inference copy of a Sequential/Functional model: every `SparseDense` becomes a
    `CompactDense`, every `SparseConv2D` / `SparseDepthwiseConv2D` a `CompactConv2D`, holding only
    its nonzeros (CSC arrays), so memory and the saved `.keras` file scale with the number of
    nonzeros. Other layers are copied unchanged. The copy is not
    compiled (no optimizer state to carry); compile it to fine-tune its nonzero values.

    block: how the Dense kernels are stored: "auto" (default) takes the block-CSC form with
    (1, G) blocks where the kernel's nonzeros come in such blocks (pruned with
    `granularity="block", block_shape=(1, G)`; see `CompactDense.from_kernel`), else CSC; 1
    forces CSC; an int G forces (1, G) blocks (zeros inside stored blocks are kept).
    """
    def replace(layer):
        if isinstance(layer, SparseDense):
            kernel = keras.ops.convert_to_numpy(layer.kernel) * keras.ops.convert_to_numpy(layer.mask)
            bias = keras.ops.convert_to_numpy(layer.bias) if layer.bias is not None else None
            return CompactDense.from_kernel(kernel, bias, name=layer.name, block=block,
                                            activation=keras.activations.serialize(layer.activation),
                                            dtype=layer.dtype_policy)
        if isinstance(layer, (SparseConv2D, SparseDepthwiseConv2D)):
            kernel = keras.ops.convert_to_numpy(layer.kernel) * keras.ops.convert_to_numpy(layer.mask)
            bias = keras.ops.convert_to_numpy(layer.bias) if layer.bias is not None else None
            build = (CompactConv2D.from_depthwise_kernel if isinstance(layer, SparseDepthwiseConv2D)
                     else CompactConv2D.from_kernel)
            return build(kernel, bias, name=layer.name, strides=layer.strides,
                         padding=layer.padding, dilation_rate=layer.dilation_rate,
                         activation=keras.activations.serialize(layer.activation),
                         dtype=layer.dtype_policy)
        return None

    clone, _ = _clone_with(model, replace)
    return uncompiled(clone)



def _strategy_scope(model):
    """The model's distribution strategy scope (new variables must be created in it)."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _retrace(model):
    """New traced train step, and test/predict steps traced on their next use: the old ones
    read the variables the layers trained before. Safe in the middle of `fit`."""
    if hasattr(model, "make_train_function"):
        model.make_train_function(force=True)
        model.test_function = None
        model.predict_function = None


def _built_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    return optimizer if optimizer is not None and getattr(optimizer, "built", False) else None


def _sparse_dense_layers(model):
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True)
            if isinstance(layer, SparseDense)]


def compact_layers(model, layers, block="auto"):
    """Compact those of `layers` that can be (SparseDense, built, not compacted, computing
    through the sparse kernels, no kernel constraint), carrying the state of `model.optimizer`
    over, and retrace `model`'s steps if any was. Returns their names."""
    todo = [layer for layer in layers
            if isinstance(layer, SparseDense) and layer.built and not layer.compacted
            and layer.uses_sparse_kernels and layer._user_kernel_constraint is None]
    optimizer = _built_optimizer(model)
    with _strategy_scope(model):
        for layer in todo:
            layer.compact(optimizer, block=block)
    if todo:
        _retrace(model)
    return [layer.name for layer in todo]


def compact(model, block="auto"):
    """Compact every `SparseDense` layer of `model` (nested ones too) that computes through the
    sparse kernels: it freezes its mask and trains its nonzero values only, carrying the
    state of `model.optimizer` over (see `SparseDense.compact`). Layers below their switch
    sparsity (dense compute) or with a `kernel_constraint` are left as they are. Works on any
    model, subclassed included. Returns the names of the layers compacted.

    `GradualPruning(compact=True)` does this by itself when its schedule ends; call it to
    fine-tune a pruned model, or before `fit` on a model loaded pruned.

    Example:
        >>> sparsekeras.compact(model)      # after pruning
        >>> model.fit(x, y, epochs=5)       # trains the nonzeros only
    """
    return compact_layers(model, _sparse_dense_layers(model), block=block)


def decompact(model):
    """Undo `compact` on every compacted `SparseDense` of `model` (dense trainable kernels again,
    e.g. to prune further). Returns the names of the layers decompacted."""
    todo = [layer for layer in _sparse_dense_layers(model) if layer.compacted]
    optimizer = _built_optimizer(model)
    with _strategy_scope(model):
        for layer in todo:
            layer.decompact(optimizer)
    if todo:
        _retrace(model)
    return [layer.name for layer in todo]
