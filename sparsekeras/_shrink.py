"""`sparsekeras.shrink`: a model pruned by whole channels (`granularity="channel"`, best with
`coupled=True`) and whole attention heads (`granularity="head"`) rebuilt as a plain Keras model
with smaller layers: the pruned units, filters and heads are removed, and so are the matching
inputs of every layer that reads them. The coupled channels come from `_groups.analyze`.

Exactness: a channel is removed only where its value is exactly zero in the pruned model
whatever the input (its producers' kernel columns and biases are zero, a BatchNormalization it
passes through gives zero for zero, a depthwise bias is zero, and every activation on its way
maps 0 to 0); a head only where its output-projection rows (or its value projection) are zero.
Then removing it and the consumers' matching inputs changes no output: the shrunk model equals
the pruned one up to float rounding. `GradualPruning(granularity="channel", coupled=True)` (and
`"head"`) zero the biases and BatchNorm scales and offsets of the channels they prune and hold
them at zero while training, so that every channel they prune is removable. A channel pruned
otherwise (a kernel column zeroed, its bias left) is a constant, not a zero: it is kept, and the
report says how many were.
"""
import warnings

import numpy as np
import keras

from sparsekeras import _groups, _saving, _tree
from sparsekeras.layers._base import relative_paths

__all__ = ["shrink", "ShrinkReport"]


class ShrinkReport:
    """What `shrink` did.

    Attributes:
        rows: one dict per group with pruned (zero) channels or heads: `kind` ("channel" or
            "head"), `layers` (the layers whose units define it), `size`, `kept`, `status`
            ("shrunk" or "kept whole") and, when kept whole, `reason`.
        unsupported: [(layer name, reason)] of the layers and patterns the analysis could not
            follow (their channels are left whole).
        params_before, params_after: parameter counts of the pruned model (as plain Keras
            layers: `densify(model)`, no masks) and of the shrunk one.
    """

    def __init__(self, rows, unsupported, before, after):
        self.rows = rows
        self.unsupported = unsupported
        self.params_before = before
        self.params_after = after

    def __str__(self):
        lines = []
        for r in self.rows:
            what = (f"{r['size']} -> {r['kept']}" if r["status"] == "shrunk"
                    else f"{r['size']} kept whole ({r['zero']} zero): {r['reason']}")
            lines.append(f"{r['kind']:7s} {', '.join(r['layers'])}: {what}")
        for name, reason in self.unsupported:
            lines.append(f"not followed: {name}: {reason}")
        lines.append(f"parameters: {self.params_before} -> {self.params_after}")
        return "\n".join(lines)

    __repr__ = __str__


def _producers(analysis, group):
    names = []
    for layer, role, _ in analysis.members(group):
        if role in ("out", "heads") and analysis.label(layer) not in names:
            names.append(analysis.label(layer))
    return names


def _plan(analysis):
    """{root group id: kept indices} for every group with removable channels, and the rows."""
    deads = []
    for g in analysis.groups:
        if g.kind == "head":
            owners = [layer for layer, role, _ in analysis.members(g) if role == "heads"]
            if not owners:
                continue
            dead = np.ones(g.size, bool)
            for layer in owners:
                dead &= _groups.dead_heads(layer)
        else:
            if not any(role == "out" for _, role, _ in analysis.members(g)):
                continue
            dead = _groups.dead_channels(analysis, g)
        if dead.any():
            deads.append((g, dead))
    keep = {g.id: (np.flatnonzero(~dead) if (~dead).any() else np.zeros(1, np.int64))
            for g, dead in deads if not g.fixed}
    _balance(analysis, keep)
    rows = []
    for g, dead in deads:
        row = dict(kind=g.kind, layers=_producers(analysis, g), size=g.size,
                   zero=int(dead.sum()))
        if g.fixed:
            row.update(status="kept whole", kept=g.size, reason="; ".join(g.fixed))
        else:  # a layer keeps one unit at least (a zero one, if all are)
            row.update(status="shrunk", kept=int(keep[g.id].size))
        rows.append(row)
    return keep, rows


def _balance(analysis, keep):
    """Leave whole (and say why) the groups that would give a grouped convolution unequal
    numbers of channels in its blocks; repeated until every grouped convolution is balanced."""
    changed = True
    while changed:
        changed = False
        for layer, layout, n_blocks in analysis.blocks:
            if not layout.changed(keep):
                continue
            kept = layout.kept(keep)
            counts = np.bincount(kept // (layout.width // n_blocks), minlength=n_blocks)
            if len(set(counts.tolist())) > 1:
                reason = (f"{layer.name}: grouped convolution (groups={n_blocks}) would keep "
                          f"unequal channels per group {counts.tolist()}")
                for g in layout.groups():
                    if g.id in keep:
                        del keep[g.id]
                        g.fixed.append(reason)
                changed = True


def _grouped_kernel(kernel, n_blocks, inp, out):
    """A grouped convolution's kernel (..., C_in / G, F) keeping input channels `inp` and
    filters `out` (positions over C_in and F, or None: all): block by block."""
    cin_g, f = kernel.shape[-2], kernel.shape[-1]
    f_g = f // n_blocks
    pieces = []
    for b in range(n_blocks):
        rows = (np.arange(cin_g) if inp is None
                else inp[(inp >= b * cin_g) & (inp < (b + 1) * cin_g)] - b * cin_g)
        cols = (np.arange(b * f_g, (b + 1) * f_g) if out is None
                else out[(out >= b * f_g) & (out < (b + 1) * f_g)])
        pieces.append(np.take(np.take(kernel, rows, axis=-2), cols, axis=-1))
    return np.concatenate(pieces, axis=-1)


# ---- rebuilding ---------------------------------------------------------------------------------

def _roles(analysis, layer):
    entry = analysis.bindings.get(id(layer))
    return entry[1] if entry is not None else {}


def _width_fn(analysis, keep):
    """width(layer, role): the shrunk width of a layer's axis, None where unchanged."""
    def width(layer, role):
        lay = _roles(analysis, layer).get(role)
        return lay.shrunk_width(keep) if lay is not None and lay.changed(keep) else None
    return width


def _new_config(analysis, keep, layer):
    """The layer's config with its reduced sizes (None: unchanged)."""
    roles = _roles(analysis, layer)
    config = layer.get_config()
    adapter = _groups.adapter_for(layer)
    if adapter is not None:
        return adapter.config(layer, config, _width_fn(analysis, keep))
    changed = False
    out = roles.get("out")
    if isinstance(layer, keras.layers.MultiHeadAttention):
        heads = roles.get("heads")
        if heads is not None and heads.changed(keep):
            config["num_heads"] = heads.shrunk_width(keep)
            changed = True
        if (out is not None and out.changed(keep)) or (
                roles.get("query") is not None and roles["query"].changed(keep)):
            config["output_shape"] = out.shrunk_width(keep)
            changed = True
        return config if changed else None
    if out is not None and out.changed(keep):
        for key in ("units", "filters", "output_dim"):
            if key in config:
                config[key] = out.shrunk_width(keep)
                changed = True
                break
    reshape = roles.get("reshape")
    if reshape is not None and reshape.changed(keep) and isinstance(layer, keras.layers.Reshape):
        target = list(config["target_shape"])
        if target[-1] != -1:
            target[-1] = reshape.shrunk_dim(keep)
            config["target_shape"] = tuple(target)
            changed = True
    return config if changed else None


def _slices(analysis, keep, layer):
    """{weight path inside the layer: {axis: kept indices}}."""
    roles = _roles(analysis, layer)

    def idx(role):
        lay = roles.get(role)
        return lay.kept(keep) if lay is not None and lay.changed(keep) else None

    out, inp = idx("out"), idx("in")
    L = keras.layers
    rules = {}
    adapter = _groups.adapter_for(layer)
    if adapter is not None:  # the rules of its inner layers, under their names
        for prefix, inner in adapter.inner(layer).items():
            for path, rule in _slices(analysis, keep, inner).items():
                rules[f"{prefix}/{path}"] = rule
        return rules
    if isinstance(layer, L.MultiHeadAttention):
        heads = idx("heads")
        for name, role in (("query", "query"), ("key", "key"), ("value", "value")):
            rules[f"{name}/kernel"] = {0: idx(role), 1: heads}
            rules[f"{name}/bias"] = {0: heads}
        rules["attention_output/kernel"] = {0: heads, 2: out}
        rules["attention_output/bias"] = {0: out}
    elif isinstance(layer, L.Embedding):
        rules["embeddings"] = {1: out}
    elif isinstance(layer, L.BatchNormalization):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            rules[name] = {0: inp}
    elif isinstance(layer, (L.DepthwiseConv2D, getattr(L, "DepthwiseConv1D", L.DepthwiseConv2D))):
        rules["kernel"] = {-2: inp}
        rules["bias"] = {0: inp}
    elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        m = layer.depth_multiplier
        rows = None if inp is None else (inp[:, None] * m + np.arange(m)[None, :]).reshape(-1)
        rules["depthwise_kernel"] = {-2: inp}
        rules["pointwise_kernel"] = {-2: rows, -1: out}
        rules["bias"] = {0: out}
    elif isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        rules["kernel"] = {-2: out, -1: inp}  # (*taps, filters, in_channels)
        rules["bias"] = {0: out}
    elif isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) and layer.groups > 1:
        rules["kernel"] = ("grouped", layer.groups, inp, out)
        rules["bias"] = {0: out}
    elif isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)):
        rules["kernel"] = {-2: inp, -1: out} if not isinstance(layer, L.Dense) else {0: inp,
                                                                                      1: out}
        rules["bias"] = {0: out}
    return rules


def _weight_paths(layer):
    """{path of each weight inside `layer`: variable}, from the names of its sublayers (a
    converted inner layer's variables may not carry the outer layer's path); the variables'
    own paths where the names collide."""
    out = {}

    def walk(obj, prefix):
        for v in list(obj._trainable_variables) + list(obj._non_trainable_variables):
            out.setdefault(prefix + v.name, []).append(v)
        for sub in obj._layers:
            walk(sub, prefix + sub.name + "/")

    walk(layer, "")
    if any(len(v) > 1 for v in out.values()) or sum(map(len, out.values())) != len(layer.weights):
        return relative_paths(layer)
    return {path: v[0] for path, v in out.items()}


def _take(value, rule):
    if isinstance(rule, tuple):
        _, n_blocks, inp, out = rule
        return _grouped_kernel(value, n_blocks, inp, out)
    for axis, index in (rule or {}).items():
        if index is not None:
            value = np.take(value, index, axis=axis)
    return value


class _Rebuilder:
    def __init__(self, analysis, keep):
        self.analysis = analysis
        self.keep = keep
        self.pairs = []
        self.cache = {}

    def layer(self, layer):
        if id(layer) in self.cache:
            return self.cache[id(layer)]
        if isinstance(layer, keras.Model):
            new = self.model(layer)
        elif not isinstance(layer, keras.layers.Layer):
            new = layer  # a keras.ops operation (x + y): stateless, its channels left whole
        else:
            adapter = _groups.adapter_for(layer)
            new = None if adapter is None else adapter.inline(
                layer, _width_fn(self.analysis, self.keep), self._make)
            if new is None:
                new = self._make(layer)
        self.cache[id(layer)] = new
        return new

    def _make(self, layer, name=None):
        """`layer` rebuilt from its (reduced) config, under `name` if given; its weights are
        copied (sliced) by `copy_weights`."""
        config = _new_config(self.analysis, self.keep, layer) or layer.get_config()
        if name is not None:
            config = dict(config, name=name)
        try:
            new = type(layer).from_config(config)
        except Exception as e:  # (the layer's own config: say which, and why)
            raise ValueError(
                f"shrink rebuilds every layer from its config, and layer {layer.name!r} "
                f"({type(layer).__module__}.{type(layer).__name__}) cannot be rebuilt from "
                f"its own get_config() ({type(e).__name__}: {e}); a Functional model holding "
                "it could not be loaded back either. Prune it without shrinking "
                "(granularity='unstructured' or 'block', then sparsekeras.strip), or give "
                "the layer a get_config() that its from_config() accepts.") from e
        self.pairs.append((layer, new))
        return new

    def _input(self, model, i, tensor):
        lay = _roles(self.analysis, model).get(f"input{i}")
        shape = list(tensor.shape)
        if lay is not None and lay.changed(self.keep):
            shape[-1] = lay.shrunk_dim(self.keep)
        return keras.Input(batch_shape=tuple(shape), dtype=tensor.dtype,
                           name=getattr(tensor, "name", None))

    def model(self, model):
        if isinstance(model, keras.Sequential):
            (x,) = model.inputs
            layers = [self.layer(layer) for layer in model.layers]
            return keras.Sequential([self._input(model, 0, x)] + layers, name=model.name)
        flat = keras.tree.flatten(model.input)
        new_flat = [self._input(model, i, t) for i, t in enumerate(flat)]
        inputs = keras.tree.pack_sequence_as(model.input, new_flat)
        outputs = model._run_through_graph(inputs, operation_fn=self.layer)
        return keras.Model(inputs, outputs, name=model.name)

    def copy_weights(self):
        for old, new in self.pairs:
            rules = _slices(self.analysis, self.keep, old)
            mine = _weight_paths(new)
            # A weight created without a name is named from a process-wide counter
            # ('variable_54'), so its twin in the rebuilt layer has another name: such weights
            # are matched by their position in the layer's weights (same class, same config).
            by_position = dict(zip(map(id, old.weights), new.weights)) \
                if len(old.weights) == len(new.weights) else {}
            for path, var in _weight_paths(old).items():
                value = _take(_groups._np(var), rules.get(path))
                target = mine.get(path, by_position.get(id(var)))
                if target is None or tuple(target.shape) != value.shape:
                    raise ValueError(
                        f"shrink: weight {path!r} of layer {old.name!r} "
                        f"({type(old).__name__}) does not fit the rebuilt layer "
                        f"({None if target is None else tuple(target.shape)} vs {value.shape})")
                target.assign(value)


def _model_classes(model):
    """["name (Class)"] of `model` and the models nested in it that are instances of their own
    Functional subclass (keras_hub's tasks and backbones, a user's class), which `shrink`
    rebuilds as plain Functional models."""
    return [f"{layer.name!r} ({type(layer).__name__})"
            for layer in [model] + [layer for _, layer, _ in _tree.walk(model)]
            if isinstance(layer, keras.Model) and not _saving._config_built(layer)]


# ---- public -------------------------------------------------------------------------------------

def shrink(model, fold_batchnorm=False, return_report=False, verbose=False):
    """A plain Keras copy of `model` with its pruned channels and heads removed.

    Every group of coupled channels (see `sparsekeras.callbacks.GradualPruning`'s
    `coupled=True`: a layer's output units with the residual additions, concatenations,
    BatchNormalizations and depthwise convolutions they pass through, and the inputs of the
    layers that read them) whose channels are exactly zero in `model` loses those channels in
    every member: smaller `units` / `filters` / BatchNormalization / depthwise layers, the
    matching input rows of the consumers (every C-th entry after a Flatten, the right offsets
    after a Concatenate), and fewer `num_heads` in MultiHeadAttention. The result holds only
    Keras layers: it saves, loads and runs without sparsekeras, and exports to SavedModel,
    LiteRT and ONNX. Its outputs equal `model`'s (float tolerance).

    keras_hub's `TransformerEncoder` is followed inside (its feedforward units and heads; see
    `sparsekeras._groups.LayerAdapter` for other layers of known call). A subclassed model is
    traced: its `call` run on symbolic inputs of the shape it was built with gives a Functional
    graph over its layers (checked to compute what the model computes), and the shrunk model
    is that graph, Functional. So is a model of its own Functional subclass (keras_hub's tasks
    and backbones): the shrunk copy is a plain Functional model without the class's methods
    (a task's `generate()`), and a warning names each such model.

    Left whole, with the reason in the report: the model's inputs and outputs, the channels a
    LayerNormalization normalizes over (a Transformer's residual width), channels that pass
    through a layer the analysis does not follow (named in a warning), channels that would
    leave a grouped convolution's blocks unequal, channels that a layer reads after an
    activation (or `x + c`) that does not map 0 to 0 (a squeeze-excite gate's sigmoid is fine:
    it multiplies channels that are zero), and channels whose kernel is zero but whose bias is
    not (a constant, not a zero).

    Args:
        model: a built Sequential, Functional or (traceable) subclassed model (nested models
            inside are followed), pruned: sparsekeras layers (they are read through `densify`) or plain Keras layers
            holding zeros.
        fold_batchnorm: also fold each inference BatchNormalization into the layer before it
            (`sparsekeras._fold.fold_batchnorm`) once shrunk.
        return_report: return `(model, ShrinkReport)`.
        verbose: print the report.

    Returns:
        The shrunk model (not compiled), or `(model, report)`.

    Raises:
        ValueError: for a model without a layer graph whose call cannot be traced (the
            message names its class, why, and what to do), or a bad argument.

    Example:
        >>> small = sparsekeras.shrink(pruned_model)
        >>> small.export("model.tflite", format="litert")
    """
    from sparsekeras._convert import _mark_called, densify

    if not isinstance(fold_batchnorm, bool):
        raise ValueError(f"`fold_batchnorm` must be True or False. Received: "
                         f"fold_batchnorm={fold_batchnorm!r}")
    # A subclassed model: the Functional model traced from its call (its own layers), which
    # densify copies: the shrunk model is Functional.
    plain = densify(_groups.graph_model(model, "shrink"))
    analysis = _groups.analyze(plain)
    keep, rows = _plan(analysis)
    rebuilder = _Rebuilder(analysis, keep)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*build.*")
        small = rebuilder.model(plain)
    rebuilder.copy_weights()
    if fold_batchnorm:
        try:
            from sparsekeras._fold import fold_batchnorm as fold
        except ImportError as e:
            raise ValueError("shrink(fold_batchnorm=True) needs sparsekeras._fold."
                             f"fold_batchnorm, which is not available ({e}).") from e
        small = fold(small)  # a rebuilt copy: no placeholder layer is left
    _mark_called(small)
    report = ShrinkReport(rows, list(analysis.unsupported), plain.count_params(),
                          small.count_params())
    if analysis.unsupported:
        # Named in the warning: the layers that alone keep some layer's units whole; the others
        # (whose channels a LayerNormalization, a model input or output bounds anyway) are
        # counted, and all are in the report.
        costly = _groups.costly_unsupported(analysis)
        listed = "; ".join(f"{n} ({r})" for n, r in costly[:8])
        more = f" and {len(costly) - 8} more" if len(costly) > 8 else ""
        rest = len(analysis.unsupported) - len(costly)
        note = (f"{rest} other layer(s) not followed, whose channels are kept whole for another "
                "reason too (a LayerNormalization, a model input or output): "
                + ", ".join(n for n, _ in analysis.unsupported if (n, _) not in costly)[:300]
                + " (report.unsupported has the reasons)") if rest else ""
        if costly:
            warnings.warn(f"shrink left the channels around these layers whole (not followed): "
                          f"{listed}{more}." + (f" Also {note}." if note else ""), stacklevel=2)
        else:
            warnings.warn(f"shrink: {note}.", stacklevel=2)
    classed = _model_classes(plain)
    if classed:
        warnings.warn(
            "shrink returns plain Keras models: " + ", ".join(classed) + " come back as "
            "Functional models, without their classes' own methods and arguments (a keras_hub "
            "task's generate() and preprocessor, a backbone's token_embedding). Use the pruned "
            "model (or strip it) where you need those.", stacklevel=2)
    whole = [r for r in rows if r["status"] == "kept whole" and "model output" not in r["reason"]]
    if whole:
        listed = "; ".join(f"{', '.join(r['layers'])}: {r['zero']} zero {r['kind']}s kept "
                           f"({r['reason']})" for r in whole[:8])
        warnings.warn(f"shrink kept pruned channels whole: {listed}.", stacklevel=2)
    if verbose:
        print(report)
    return (small, report) if return_report else small
