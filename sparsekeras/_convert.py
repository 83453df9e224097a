"""Model-level conversions, on the whole layer tree (nested models, layers inside custom
layers, MultiHeadAttention's projections, keras_hub blocks): `sparsify` (Keras layers -> their
sparse counterparts, from the registry), `strip` (-> stored forms), `densify` (-> plain Keras
layers), `compact` / `decompact`, and `coverage` (what is prunable)."""
import contextlib
import warnings

import numpy as np
import keras

from sparsekeras import _fold, _saving, _tree
from sparsekeras.layers import _registry
from sparsekeras.layers._base import NotConvertible, _PrunableKernel
from sparsekeras.layers.norm import FusedLayerNormalization

__all__ = ["sparsify", "strip", "densify", "compact", "decompact", "coverage", "Report"]


# ---- the report -------------------------------------------------------------------------------

def _is_weight_matrix(v):
    """A trainable variable of rank >= 2 that is not a bias (MultiHeadAttention's query/key/value
    biases are (heads, head_dim): rank 2, but no weight matrix; nothing prunes them)."""
    return len(v.shape) >= 2 and getattr(v, "name", "") != "bias"


def _weight_params(layer, own_only=True):
    """Parameters of the layer's weight matrices (trainable variables of rank >= 2, biases
    excepted)."""
    return sum(int(np.prod(v.shape)) for v in layer.trainable_weights if _is_weight_matrix(v))


def prunable_targets(model):
    """Every (weight, mask) pair GradualPruning prunes in `model`, nested layers included."""
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if id(layer) in seen or not hasattr(layer, "pruning_targets"):
            continue
        seen.add(id(layer))
        found.extend(layer.pruning_targets())
    return found


def target_names(model, targets):
    """A unique log name for each target: its own name (the layer's, or layer/weight), or where
    two share one (the `query` projections of two attention layers), its path in the tree."""
    names = [t.name for t in targets]
    if len(set(names)) == len(names):
        return names
    paths = {id(layer): path for _, layer, path in _tree.walk(model)}
    counts = {n: names.count(n) for n in names}
    out = []
    for t, name in zip(targets, names):
        if counts[name] > 1:
            layer = getattr(t, "layer", t)
            label = getattr(t, "label", "")
            path = paths.get(id(layer), layer.name)
            name = f"{path}/{label}" if label else path
        out.append(name)
    return out


class Report:
    """What `sparsify` did, layer by layer, and how much of the model is now prunable.

    Attributes:
        rows: list of dicts with `path`, `class`, `status` ("converted", "kept", "already
            sparse"), `to` (the sparse class) or `reason`, and `params` (weight-matrix
            parameters of the layer).
        prunable_fraction: fraction of the model's weight-matrix parameters (kernels and
            embeddings: trainable variables of rank >= 2) that GradualPruning can prune.
    """

    def __init__(self, rows, prunable, total):
        self.rows = rows
        self.prunable_params = prunable
        self.total_params = total

    @property
    def prunable_fraction(self):
        return self.prunable_params / self.total_params if self.total_params else 0.0

    def converted(self):
        return [r for r in self.rows if r["status"] == "converted"]

    def kept(self):
        return [r for r in self.rows if r["status"] == "kept"]

    def __str__(self):
        width = max([len("layer")] + [len(r["path"]) for r in self.rows])
        cwidth = max([len("class")] + [len(r["class"]) for r in self.rows])
        lines = [f"{'layer':{width}s}  {'class':{cwidth}s}  {'params':>9s}  result"]
        for r in self.rows:
            what = (f"-> {r['to']}" if r["status"] == "converted" else
                    "already sparse" if r["status"] == "already sparse" else
                    f"kept dense: {r['reason']}")
            lines.append(f"{r['path']:{width}s}  {r['class']:{cwidth}s}  {r['params']:9d}  {what}")
        lines.append(f"prunable: {self.prunable_params} of {self.total_params} weight-matrix "
                     f"parameters ({100 * self.prunable_fraction:.1f}%)")
        return "\n".join(lines)

    __repr__ = __str__


def _prunable_params(model):
    return sum(int(np.prod(t.mask.shape)) for t in prunable_targets(model))


def _model_weight_params(model):
    seen, total = set(), 0
    for v in model.trainable_weights:
        if id(v) not in seen and _is_weight_matrix(v):
            seen.add(id(v))
            total += int(np.prod(v.shape))
    return total


def coverage(model):
    """The fraction of `model`'s weight-matrix parameters (trainable variables of rank >= 2,
    biases excepted: kernels, embeddings) that `GradualPruning` prunes (held by prunable
    sparse layers)."""
    total = _model_weight_params(model)
    return _prunable_params(model) / total if total else 0.0


# ---- sparsify ---------------------------------------------------------------------------------

def _is_sparse(layer):
    return isinstance(layer, _PrunableKernel) or hasattr(layer, "pruning_targets")


def _has_own_weight_matrix(layer):
    """Whether the layer holds a weight matrix that none of its sublayers holds."""
    inner = {id(v) for sub in layer._flatten_layers(include_self=False, recursive=True)
             for v in sub.weights}
    return any(len(v.shape) >= 2 and id(v) not in inner for v in layer.trainable_weights)


def sparsify(model, layer_names=None, switch_sparsity=None, compute="auto", inplace=False,
             verbose=False, return_report=False):
    """A copy of `model` with every layer that has a sparse counterpart (the registry:
    `Dense`, `Conv2D`, `DepthwiseConv2D`, and the others `sparsekeras.layers` registers)
    replaced by it, holding the same weights (masks all ones), ready for `GradualPruning`.

    The whole layer tree is walked: nested models, layers inside custom layers,
    MultiHeadAttention's projections, keras_hub backbones and task models. Weights are matched
    by their path inside each layer. A layer left dense that holds a weight matrix is said
    once, in one warning (and in the report).

    Args:
        model: a Keras model (Sequential, Functional, subclassed; built, or lazily built when
            `inplace=True`).
        layer_names: names of the layers to convert (default: every convertible one); the name
            of a block or nested model converts every convertible layer inside it. A name that
            is not in the model, or names a layer that cannot be converted, is an error.
            Keeping a small output layer dense usually costs nothing and protects accuracy.
        switch_sparsity: passed to each sparse layer that computes through the sparse
            kernels.
        compute: passed to each sparse layer that computes through the sparse kernels.
        inplace: convert `model` itself instead of a copy (a copy is made through Keras
            serialization, which a subclassed model without `get_config` does not support).
        verbose: print the report.
        return_report: return `(model, report)` instead of the model.

    Example:
        >>> sparse_model = sparsekeras.sparsify(model, verbose=True)
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"sparsify expects a Keras model. Received: {type(model).__name__}")
    target = model if inplace else _tree.copy_model(model)
    names = None
    if layer_names is not None:
        if isinstance(layer_names, str):
            raise ValueError(f"`layer_names` must be a list of names. Received: "
                             f"layer_names={layer_names!r}")
        names = set(layer_names)
        present = {layer.name for _, layer, _ in _tree.walk(target)}
        missing = names - present
        if missing:
            raise ValueError(f"sparsify: no layer named {sorted(missing)} in the model. "
                             f"Received: layer_names={sorted(names)}")
    options = {"compute": compute}
    if switch_sparsity is not None:
        options["switch_sparsity"] = switch_sparsity

    rows, replaced, errors = [], set(), []
    holders = _tree.holders_of(target)
    for parent, layer, path in list(_tree.walk(target)):
        if any(path.startswith(p + "/") for p in replaced):
            continue  # inside a layer that was just replaced as a whole
        row = {"path": path, "class": type(layer).__name__, "params": 0}
        # A name selects that layer, or every convertible layer inside it.
        wanted = names is None or any(part in names for part in path.split("/"))
        if _is_sparse(layer):
            row.update(status="already sparse", params=_weight_params(layer))
            rows.append(row)
            replaced.add(path)
            continue
        entry = _registry.lookup(layer)
        reason = None
        if entry is None:
            if not _has_own_weight_matrix(layer):
                if names is not None and layer.name in names and not any(
                        True for _ in _tree.children(layer)):
                    errors.append(f"{layer.name!r} ({type(layer).__name__}) has no weight "
                                  "matrix to prune")
                continue  # a container (its sublayers are visited) or no weight to prune
            base = _registry.registered_base(layer)
            reason = (f"a subclass of {base.__name__}, whose call may differ"
                      if base is not None else "no sparse counterpart")
        elif entry.check is not None:
            reason = entry.check(layer)
        if reason is None and entry is not None and wanted:
            kwargs = _options_for(entry.sparse_class, options)
            try:
                new = entry.convert(layer, **kwargs)
            except NotConvertible as e:
                reason = str(e)
            else:
                _tree.replace_layer(parent, layer, new, holders)
                replaced.add(path)
                row.update(status="converted", to=type(new).__name__,
                           params=_weight_params(new))
                rows.append(row)
                continue
        if not wanted and reason is None:
            continue  # not asked for: not part of the report
        if names is not None and layer.name in names:
            errors.append(f"{layer.name!r} ({type(layer).__name__}): {reason}")
        row.update(status="kept", reason=reason, params=_weight_params(layer))
        rows.append(row)
    if errors:
        raise ValueError("sparsify cannot convert the layers named in layer_names: "
                         + "; ".join(errors))
    _after_structure_change(target)
    _saving.mark(target)
    report = Report(rows, _prunable_params(target), _model_weight_params(target))
    kept = [r for r in report.kept() if r["params"]]
    if kept and names is None:
        listed = ", ".join(f"{r['path']} ({r['class']}: {r['reason']})" for r in kept[:8])
        more = f" and {len(kept) - 8} more" if len(kept) > 8 else ""
        warnings.warn(f"sparsify left {len(kept)} layers with weight matrices dense: {listed}"
                      f"{more}. {100 * report.prunable_fraction:.1f}% of the model's "
                      "weight-matrix parameters are prunable. To prune a layer sparsekeras does "
                      "not convert, subclass sparsekeras.layers.Prunable in its definition or "
                      "register a sparse counterpart with sparsekeras.layers.register; "
                      "sparsify(..., verbose=True) prints the report.", stacklevel=2)
    if verbose:
        print(report)
    return (target, report) if return_report else target


def _options_for(sparse_class, options):
    """The sparsify options the sparse class takes (masked-only layers have no compute
    switch; a `Prunable` class with a compute switch sets `_takes_sparse_options`)."""
    if issubclass(sparse_class, _PrunableKernel) or getattr(sparse_class,
                                                            "_takes_sparse_options", False):
        return dict(options)
    return {}


def _after_structure_change(model):
    """Traced functions read the layers that were replaced: drop them."""
    for attr in ("train_function", "test_function", "predict_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "_functional") and isinstance(model, keras.Sequential):
        pass  # the Sequential's graph was rewired in place


# ---- strip / densify ----------------------------------------------------------------------

def _replace_all(model, make, inplace, what):
    """Replace every layer for which make(layer) returns a layer (top-down; a replaced
    layer's sublayers are not visited)."""
    target = model if inplace else _tree.copy_model(model, what)
    replaced = []
    holders = _tree.holders_of(target)
    for parent, layer, path in list(_tree.walk(target)):
        if any(path.startswith(p + "/") for p in replaced):
            continue
        new = make(layer)
        if new is not None:
            _tree.replace_layer(parent, layer, new, holders)
            replaced.append(path)
    _after_structure_change(target)
    _saving.mark(target)
    return target


def _decompacted_copy_source(model):
    return model


def strip(model, block="auto", inplace=False, fold_batchnorm=True, fold_activations=True,
          fuse_layernorm=True):
    """A compact inference copy of `model`: every sparse layer becomes its stored form
    (`SparseDense` -> `CompactDense`, sparse convolutions -> `CompactConv2D`, and each other
    family's own), holding only its nonzeros, so memory and the saved `.keras` file scale with
    the number of nonzeros; a sparse layer without a stored form becomes its Keras twin with
    the pruned weights stored as zeros. Nested layers are reached. Other layers are copied
    unchanged. The copy is not compiled; compile it to fine-tune its nonzero values.

    By default BatchNormalization is folded first (see `sparsekeras.fold_batchnorm`): a Dense
    or convolution (sparse or not) whose output feeds only an inference BatchNormalization
    takes its scale and shift into its kernel and bias (the sparsity pattern stays), and the
    BatchNormalization leaves the graph; one warning names each one that cannot be folded
    (e.g. after a convolution with its own activation) and why. The stripped model then
    computes as the model does at inference; training it further trains without batch
    statistics (pass `fold_batchnorm=False` to keep them).

    Then, by default, each activation layer whose input is a Dense or convolution's output
    (after BatchNorm folding: conv -> BatchNormalization -> ReLU folds whole) and nothing
    else's is folded into that layer: `ReLU()` and `ReLU(6.0)` (as `activation="relu"` /
    `"relu6"`) and `Activation(fn)` for a function of `keras.activations` (or a registered
    one) become the layer's own `activation`, applied as it stores its output, and the
    activation layer leaves the graph. The outputs are unchanged. One warning names each
    activation layer after a Dense or convolution that cannot fold (the layer has its own
    activation, its output feeds other layers or is a model output, it is called several
    times, `ReLU` with other arguments, `LeakyReLU`, `PReLU`, ...) and why; an activation
    after anything else (an `Add`, a pooling, a model input) is left as it is.

    Args:
        model: a Keras model holding sparse layers.
        block: how the Dense kernels are stored: "auto" (default) takes the block-CSC form
            with (1, G) blocks where the kernel's nonzeros come in such blocks (pruned with
            `granularity="block", block_shape=(1, G)`; see `CompactDense.from_kernel`), else
            CSC; 1 forces CSC; an int G forces (1, G) blocks (zeros inside stored blocks are
            kept).
        inplace: convert `model` itself instead of a copy (folded BatchNormalization layers
            are then replaced by identity layers, so `model` stays the same object).
        fold_batchnorm: fold inference BatchNormalization layers into the layers before them
            (default True).
        fold_activations: fold activation layers into the Dense / convolution before them
            (default True; independent of `fold_batchnorm`).
        fuse_layernorm: replace each `keras.layers.LayerNormalization` (nested ones too) by
            `sparsekeras.layers.FusedLayerNormalization`: the same configuration, weights and
            outputs (within float rounding), computed by one compiled op instead of ten
            TensorFlow ops over the last axis (default True; `densify` puts the Keras layer
            back). A LayerNormalization subclass is left as it is.

    Returns:
        The stripped model.
    """
    if not isinstance(fold_batchnorm, bool):
        raise ValueError(f"`fold_batchnorm` must be True or False. "
                         f"Received: fold_batchnorm={fold_batchnorm!r}")
    if not isinstance(fold_activations, bool):
        raise ValueError(f"`fold_activations` must be True or False. "
                         f"Received: fold_activations={fold_activations!r}")
    if not isinstance(fuse_layernorm, bool):
        raise ValueError(f"`fuse_layernorm` must be True or False. "
                         f"Received: fuse_layernorm={fuse_layernorm!r}")

    def make(layer):
        if hasattr(layer, "to_stored"):
            return layer.to_stored(block=block)
        if _is_sparse(layer) and hasattr(layer, "to_keras"):
            return layer.to_keras()
        if fuse_layernorm and type(layer) is keras.layers.LayerNormalization:
            return FusedLayerNormalization.from_keras(layer)
        return None

    if not (fold_batchnorm or fold_activations):
        return _replace_all(model, make, inplace, "strip")
    target = model if inplace else _tree.copy_model(model, "strip")
    if isinstance(target, keras.Model):
        target, _, skipped = _fold.fold_in_place(target, rebuild=not inplace,
                                                 batchnorm=fold_batchnorm,
                                                 activations=fold_activations)
        _fold.warn_skipped(skipped["batchnorm"], "strip (fold_batchnorm=True)")
        _fold.warn_skipped(skipped["activation"], "strip (fold_activations=True)",
                           kind="activation")
    return _replace_all(target, make, True, "strip")


def densify(model, inplace=False):
    """A plain Keras copy of `model`: every sparse layer becomes its Keras twin (`Dense`,
    `Conv2D`, ...) holding the pruned weights as zeros, so the model loads and runs without
    sparsekeras (TFLite / LiteRT, ONNX, TensorFlow Serving). Nested layers are reached.
    Stored forms (`CompactDense`, ...) become their Keras twins too."""
    def make(layer):
        if hasattr(layer, "to_keras") and (_is_sparse(layer) or hasattr(layer, "to_dense_kernel")
                                           or isinstance(layer, FusedLayerNormalization)):
            return layer.to_keras()
        return None

    plain = _replace_all(model, make, inplace, "densify")
    _mark_called(plain)
    return plain


def _mark_called(model):
    """Keras' ONNX export refuses a model that was never called, even one whose inputs are
    defined (a copy made through a file, as densify's, was not): such a model's export
    signature comes from its inputs, so it counts as called."""
    try:
        has_inputs = bool(model.inputs)
    except (AttributeError, ValueError):  # a subclassed or lazily built model
        has_inputs = False
    if has_inputs:
        model._called = True


def uncompiled(model):
    """Kept for callers of the old name: `strip` copies are never compiled."""
    return model


# ---- compaction -------------------------------------------------------------------------------

def _strategy_scope(model):
    """The model's distribution strategy scope (new variables must be created in it)."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _retrace(model):
    """New traced train step, and test/predict steps traced on their next use: the old ones
    read the variables the layers trained before (or made compute choices their masks no
    longer make, see `_PrunableKernel._switch`). Safe in the middle of `fit`."""
    if hasattr(model, "make_train_function"):
        for layer in model._flatten_layers(include_self=False):
            layer.__dict__.pop("_traced", None)  # see _PrunableKernel._switch
            layer.__dict__.pop("_stale_warned", None)
        model.make_train_function(force=True)
        model.test_function = None
        model.predict_function = None


def _retrace_if_stale(model):
    """Retrace `model`'s steps if a layer's mask changed its compute choice since they were
    traced (the pruning callbacks call this after changing masks)."""
    if any(isinstance(layer, _PrunableKernel) and layer._stale_trace()
           for layer in model._flatten_layers(include_self=False)):
        _retrace(model)


def _built_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    return optimizer if optimizer is not None and getattr(optimizer, "built", False) else None


def _compactable_layers(model):
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True)
            if hasattr(layer, "compact") and hasattr(layer, "compacted")
            and isinstance(layer, _PrunableKernel)]


def compact_layers(model, layers, block="auto"):
    """Compact those of `layers` that can be (built, not compacted, computing through the
    sparse kernels, no kernel constraint), carrying the state of `model.optimizer` over, and
    retrace `model`'s steps if any was. Returns their names."""
    todo = [layer for layer in layers
            if hasattr(layer, "compact") and hasattr(layer, "compacted")
            and layer.built and not layer.compacted
            and layer.uses_sparse_kernels and layer._user_kernel_constraint is None]
    optimizer = _built_optimizer(model)
    with _strategy_scope(model):
        for layer in todo:
            layer.compact(optimizer, block=block)
    if todo:
        _retrace(model)
    return [layer.name for layer in todo]


def compact(model, block="auto"):
    """Compact every compactable sparse layer of `model` (nested ones too) that computes
    through the sparse kernels: it freezes its mask and trains its nonzero values only,
    carrying the state of `model.optimizer` over (see `SparseDense.compact`). Layers below
    their switch sparsity (dense compute) or with a `kernel_constraint` are left as they are.
    Works on any model, subclassed included. Returns the names of the layers compacted.

    `GradualPruning(compact=True)` does this by itself when its schedule ends; call it to
    fine-tune a pruned model, or before `fit` on a model loaded pruned.

    Example:
        >>> sparsekeras.compact(model)      # after pruning
        >>> model.fit(x, y, epochs=5)       # trains the nonzeros only
    """
    return compact_layers(model, _compactable_layers(model), block=block)


def decompact(model):
    """Undo `compact` on every compacted layer of `model`, nested ones included (dense
    trainable kernels again, e.g. to prune further). Returns the names of the layers
    decompacted."""
    todo = [layer for layer in _compactable_layers(model) if layer.compacted]
    optimizer = _built_optimizer(model)
    with _strategy_scope(model):
        for layer in todo:
            layer.decompact(optimizer)
    if todo:
        _retrace(model)
    return [layer.name for layer in todo]
