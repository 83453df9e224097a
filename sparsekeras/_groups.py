"""Coupled channels of a Keras model, found from its Functional graph: what `shrink` removes
together and what `GradualPruning(granularity="channel", coupled=True)` / `"head"` prunes
together.

A *group* is a set of channels that must be removed as one: the output units (filters) of the
layers that produce them, and the matching entries of every layer that reads them. The analysis
walks the graph of a Sequential or Functional model (nested models inlined; a subclassed
model is traced into one first, see `graph_model`) and gives each
tensor a *layout* for its last axis: a sequence of segments, each the channels of one group,
repeated `repeat` times (a Flatten after a convolution repeats the C channels once per spatial
position). Layers act on layouts:

- producers (Dense, Conv1D/2D/3D and their transposes, SeparableConv1D/2D, Embedding,
  MultiHeadAttention's output projection) start a new group of their units; their input rows
  are indexed by the input's layout;
- followers (BatchNormalization, DepthwiseConv with depth_multiplier=1) keep the layout and
  have per-channel weights indexed by it;
- activations, Dropout, pooling, padding, cropping and upsampling keep it;
- Flatten and Reshape keep it when the new last axis is a multiple of the channels;
- Add / Subtract / Multiply / Average / Maximum / Minimum unite the groups of their inputs;
- Concatenate on the channel axis concatenates the segments (offsets);
- MultiHeadAttention's heads form a group of their own (query, key, value and output
  projections shrink together);
- a grouped convolution (groups=G) is a producer whose input and output channels must keep
  equal numbers in each of its G blocks (`Analysis.blocks`): `shrink` checks it and leaves a
  group whole where it does not hold; GradualPruning prunes such groups block by block.

Anything else bounds the groups it touches: they are *fixed* (never pruned), with the reason:
LayerNormalization (its statistics span the channels), the model's inputs and outputs,
any layer or operation not listed above (by name). A removed channel must be one whose value
is exactly zero, so that removing it changes no output. After an activation that does not map
0 to 0 (sigmoid, softplus) or `x + c`, a pruned channel holds a constant instead: the layout
carries that `offset`, through followers and merges, until a product with a zero channel
clears it (a squeeze-excite gate times its block's channels, hard-swish's x * relu6(x + 3) / 6)
or a layer reads it as values (a kernel's input rows, attention), which fixes its groups.
Elementwise keras.ops activations (`keras.ops.relu(x)` in a traced call) act as activation
layers, and keras.ops arithmetic with a number (`x * 0.5`, `x + 3.0`) as activations too.

A custom layer of known call is read through a `LayerAdapter` registered for its exact class
(`register_adapter`): keras_hub's `TransformerEncoder` has one (its feedforward units and its
heads are groups; its hidden width is bounded by its LayerNormalizations).
"""
import inspect

import numpy as np
import keras

__all__ = ["Layout", "Group", "Analysis", "analyze", "graph_model", "LayerAdapter",
           "register_adapter"]

# Activation names that act on each entry alone (whether they keep 0 at 0 is checked).
_ELEMENTWISE = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "tanh",
    "sigmoid", "hard_sigmoid", "softplus", "softsign", "exponential", "mish", "hard_silu",
    "hard_swish", "celu", "squareplus", "tanh_shrink", "hard_tanh", "soft_shrink",
    "hard_shrink", "log_sigmoid", "sparse_plus", "relu_", "identity",
    "gelu_approximate"}  # keras_hub's tanh approximation (BERT's encoders)

L = keras.layers
_PASSTHROUGH = (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
                L.GaussianNoise, L.GaussianDropout, L.ActivityRegularization, L.Identity,
                L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
                L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
                L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
                L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
                L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D,
                L.UpSampling2D, L.UpSampling3D)
_ACTIVATION_LAYERS = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)
# keras.ops operations between two tensors (`x + y` in a Functional model) that act entry by
# entry, as the merge layers do.
_OPS_MERGES = ("Add", "Subtract", "Multiply", "Maximum", "Minimum")
# keras.ops operations between a tensor and a number (`x + 3.0`, `x * (1 / 6)`, as Keras'
# MobileNetV3 writes hard-sigmoid): entry by entry, like an activation.
_OPS_SCALAR = _OPS_MERGES + ("Divide", "TrueDivide")
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D)
# Transposed convolutions: kernel (*taps, filters, in_channels), the output axis before the
# input axis.
_TRANSPOSES = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = tuple(c for c in (getattr(L, "DepthwiseConv1D", None), L.DepthwiseConv2D) if c)


def _keras_class(layer):
    """The Keras class `layer` stands for: its own class, or for a sparsekeras layer the Keras
    class it is registered for. A user's subclass of a Keras layer is not followed (its call
    may differ)."""
    from sparsekeras.layers import _registry

    cls = type(layer)
    if cls.__module__.startswith("keras."):
        return cls
    for keras_cls, sparse_cls in _registry.registered().items():
        if cls is sparse_cls:
            return keras_cls
    return None


def _is(kind, classes):
    return kind is not None and any(kind is c for c in classes)


# ---- layouts and groups -----------------------------------------------------------------------

class Group:
    """A set of coupled channels (union-find node). `size` channels; `kind` "channel" or
    "head"; `fixed`: reasons it is never pruned (empty: prunable)."""

    def __init__(self, gid, size, kind="channel"):
        self.id = gid
        self.size = int(size)
        self.kind = kind
        self.parent = self
        self.fixed = []

    def root(self):
        g = self
        while g.parent is not g:
            g.parent = g.parent.parent
            g = g.parent
        return g

    @property
    def prunable(self):
        return not self.root().fixed


class Layout:
    """The channel structure of a tensor's last axis: `segments` (groups, in order), the whole
    repeated `repeat` times (index r * C + offset + c, C the segments' total size)."""

    def __init__(self, segments, repeat=1, offset=None):
        self.segments = tuple(segments)
        self.repeat = int(repeat)
        # Why this tensor's channels are a nonzero constant, not zero, once pruned (an
        # activation or `x + c` that moves 0 away from 0), or None. Such channels may still be
        # removed where nothing reads them as values: a product with a zero channel (an SE
        # gate, hard-swish) is zero again. A layer that reads them fixes their groups.
        self.offset = offset

    def with_offset(self, offset):
        """This layout, its pruned channels holding a nonzero constant (`offset`: why) or zero
        (None)."""
        if offset == self.offset:
            return self
        return Layout(self.segments, self.repeat, offset)

    @property
    def width(self):
        return sum(g.size for g in self.segments)

    def groups(self):
        return [g.root() for g in self.segments]

    def positions(self):
        """[(root group, (repeat, size) int array of positions on the axis)] per segment."""
        out, offset, width = [], 0, self.width
        for g in self.segments:
            base = offset + np.arange(g.size)
            out.append((g.root(), np.arange(self.repeat)[:, None] * width + base[None, :]))
            offset += g.size
        return out

    def kept(self, keep):
        """Positions kept on the axis, given {root group id: sorted kept channel indices}."""
        parts, offset, width = [], 0, self.width
        for g in self.segments:
            k = keep.get(g.root().id)
            parts.append(offset + (np.arange(g.size) if k is None else np.asarray(k)))
            offset += g.size
        one = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return (np.arange(self.repeat)[:, None] * width + one[None, :]).reshape(-1)

    def shrunk_width(self, keep):
        return sum(len(keep[g.root().id]) if g.root().id in keep else g.size
                   for g in self.segments)

    def shrunk_dim(self, keep):
        """The axis' length once the groups in `keep` are shrunk."""
        return self.repeat * self.shrunk_width(keep)

    def changed(self, keep):
        return any(g.root().id in keep for g in self.segments)


class Analysis:
    """The result of `analyze`: the groups and, for every layer, the layouts of the axes that
    groups index.

    Attributes:
        groups: every root group (channel groups and head groups).
        bindings: {id(layer): (layer, {role: Layout})}. Roles: "in" (the input's channels
            of a producer or follower), "out" (a producer's units), "reshape" (the output of
            a Reshape), "query" / "key" / "value" / "heads" (MultiHeadAttention).
        unsupported: [(layer or operation name, reason)] for what the analysis could not follow.
        kinds: {id(layer): "producer" | "follower" | "mha" | "reshape"}.
    """

    def __init__(self):
        self.bindings = {}
        self.kinds = {}
        self.unsupported = []
        self.blocks = []  # [(layer, Layout, G)]: equal kept channels in each of G blocks
        self.owners = {}  # id(inner layer) -> the adapted layer holding it
        self._all = []

    def label(self, layer):
        """`layer`'s name, prefixed with the adapted layer's holding it ("encoder/dense")."""
        owner = self.owners.get(id(layer))
        return f"{owner.name}/{layer.name}" if owner is not None else layer.name

    @property
    def groups(self):
        seen, out = set(), []
        for g in self._all:
            r = g.root()
            if id(r) not in seen:
                seen.add(id(r))
                out.append(r)
        return out

    def prunable_groups(self, kind="channel"):
        return [g for g in self.groups if g.kind == kind and not g.fixed]

    def members(self, group):
        """[(layer, role, positions (repeat, size))] of every layer axis indexed by `group`."""
        out = []
        for layer, roles in self.bindings.values():
            for role, layout in roles.items():
                for g, pos in layout.positions():
                    if g is group:
                        out.append((layer, role, pos))
        return out


class _Walker:
    def __init__(self, model):
        self.model = model
        self.a = Analysis()
        self._memo = {}
        self._nodes = {}
        self._out_groups = {}

    # groups
    def new(self, size, kind="channel", fixed=None):
        g = Group(len(self.a._all), size, kind)
        self.a._all.append(g)
        if fixed:
            g.fixed.append(fixed)
        return g

    def fresh(self, tensor, reason):
        """A layout of new fixed channels for a tensor the analysis cannot follow."""
        shape = getattr(tensor, "shape", None)
        width = shape[-1] if shape else 0
        return Layout([self.new(width or 0, fixed=reason)])

    def fix(self, layout, reason):
        for g in layout.groups():
            if reason not in g.fixed:
                g.fixed.append(reason)

    def unite(self, a, b, reason):
        """Make two layouts the same channels (an Add); fixes both if their structures differ."""
        sa, sb = [g.size for g in a.segments], [g.size for g in b.segments]
        if sa != sb or a.repeat != b.repeat:
            self.fix(a, reason)
            self.fix(b, reason)
            return False
        for ga, gb in zip(a.groups(), b.groups()):
            if ga is not gb:
                if ga.kind != gb.kind:
                    self.fix(Layout([ga, gb]), reason)
                gb.parent = ga
                ga.fixed.extend(r for r in gb.fixed if r not in ga.fixed)
        return True

    def bind(self, layer, kind, role, layout):
        """Record that `layer`'s `role` axis is indexed by `layout` (a shared layer's second
        call must index the same channels)."""
        entry = self.a.bindings.setdefault(id(layer), (layer, {}))
        self.a.kinds[id(layer)] = kind
        old = entry[1].get(role)
        if old is None:
            entry[1][role] = layout
        elif old is not layout:
            self.unite(old, layout, f"{layer.name}: a shared layer called on different channels")

    def read(self, layout, who):
        """`who` reads `layout`'s channels as values (a kernel's input rows, attention): a
        channel that holds a nonzero constant once pruned cannot go (its group is fixed)."""
        if layout is not None and layout.offset:
            self.fix(layout, f"{layout.offset}, and {who} reads it")
        return layout

    def unsupported(self, name, reason):
        if (name, reason) not in self.a.unsupported:
            self.a.unsupported.append((name, reason))

    # walking
    def layout(self, tensor, ctx=(), bound=None):
        key = (id(tensor), ctx)
        if key in self._memo:
            return self._memo[key]
        bound = bound or {}
        if id(tensor) in bound.get(ctx, {}):
            out = bound[ctx][id(tensor)]
        else:
            history = getattr(tensor, "_keras_history", None)
            if history is None:
                out = self.fresh(tensor, "a constant or non-Keras tensor")
            else:
                op, node_index, tensor_index = history
                if isinstance(op, keras.layers.InputLayer):
                    out = self.fresh(tensor, f"model input {op.name!r}")
                else:
                    outs = self.node(op, op._inbound_nodes[node_index], ctx, bound)
                    out = outs[tensor_index]
        self._memo[key] = out
        return out

    def node(self, op, node, ctx, bound):
        key = (id(node), ctx)
        if key not in self._nodes:
            self._nodes[key] = self._visit(op, node, ctx, bound)
        return self._nodes[key]

    def _visit(self, op, node, ctx, bound):
        args = node.arguments
        inputs = [t for t in args.keras_tensors]
        lays = [self.layout(t, ctx, bound) for t in inputs]
        outputs = list(node.outputs)
        name = getattr(op, "name", type(op).__name__)

        def opaque(reason):
            self.unsupported(name, reason)
            for lay in lays:
                self.fix(lay, f"{name}: {reason}")
            return [self.fresh(t, f"{name}: {reason}") for t in outputs]

        if isinstance(op, keras.Model):
            return self._nested(op, node, ctx, bound, lays, inputs, opaque)
        adapter = adapter_for(op)
        if adapter is not None:
            return adapter.visit(self, op, node, inputs, lays, outputs, opaque)
        kind = _keras_class(op) if isinstance(op, keras.layers.Layer) else None
        if (kind is None and type(op).__name__ in _OPS_MERGES
                and type(op).__module__.startswith("keras.src.ops.")
                and len(inputs) == 2 == len(keras.tree.flatten(node.arguments.args))
                and not node.arguments.kwargs):
            # x + y, x * y ... on two tensors: elementwise, like the merge layers
            kind = L.Multiply if type(op).__name__ == "Multiply" else L.Add
        if (kind is None and type(op).__name__ in _OPS_SCALAR
                and type(op).__module__.startswith("keras.src.ops.") and len(inputs) == 1
                and len(node.arguments.args) == 2 and not node.arguments.kwargs
                and all(a is inputs[0] or _is_number(a) for a in node.arguments.args)):
            # x + 3.0, x * 0.5: entry by entry (the number stays where it was)
            args = node.arguments.args
            return [self._zero_check(
                op, lambda z: op(*[z if a is inputs[0] else a for a in args]), lays[0])]
        if (kind is None and type(op).__name__ == "GetItem"
                and type(op).__module__ == "keras.src.ops.numpy" and len(inputs) == 1
                and _keeps_last_axis(node.arguments.args, len(inputs[0].shape))):
            return [lays[0]]  # x[:, 0, :] (a [CLS] token): other axes indexed, channels kept
        if (kind is None and type(op).__module__ in ("keras.src.ops.nn", "keras.src.ops.numpy")
                and type(op).__name__.lower() in _ELEMENTWISE and len(inputs) == 1
                and len(keras.tree.flatten(node.arguments.args)) == 1
                and not node.arguments.kwargs):
            # keras.ops.relu(x), keras.ops.tanh(x)... (a subclassed model's call, traced): an
            # activation, entry by entry
            return [self._zero_check(op, lambda z: op(z), lays[0])]
        if kind is None:
            return opaque(f"{type(op).__name__} is not followed (not a Keras layer the "
                          "channel analysis knows)")
        if getattr(op, "data_format", "channels_last") != "channels_last":
            return opaque(f"data_format={op.data_format!r} (channels_last only)")
        many = _is(kind, _MERGES + (L.Concatenate, L.MultiHeadAttention))
        if not many and len(lays) != 1:
            return opaque(f"called on {len(lays)} tensors")
        x = lays[0] if lays else None
        if _is(kind, (L.Dense,) + _CONVS + _TRANSPOSES):
            grouped = _is(kind, _CONVS) and getattr(op, "groups", 1) != 1
            if grouped and x.repeat != 1:
                return opaque(f"grouped convolution (groups={op.groups}) on a reshaped input")
            self.bind(op, "producer", "in", self.read(x, name))
            out = self._producer(op, op.units if _is(kind, (L.Dense,)) else op.filters)
            if grouped:
                self.a.blocks.append((op, x, op.groups))
                self.a.blocks.append((op, out, op.groups))
            return [self._activation(op, getattr(op, "activation", None), out)]
        if _is(kind, _SEPARABLE):
            # The depthwise part has no bias: a zero input channel stays zero up to the
            # pointwise kernel, whose rows (channel * depth_multiplier + j) read it.
            self.bind(op, "producer", "in", self.read(x, name))
            out = self._producer(op, op.filters)
            return [self._activation(op, op.activation, out)]
        if _is(kind, _DEPTHWISE):
            if op.depth_multiplier != 1:
                return opaque(f"depth_multiplier={op.depth_multiplier} (1 only)")
            self.bind(op, "follower", "in", x)
            return [self._activation(op, op.activation, x)]
        if _is(kind, (L.BatchNormalization,)):
            axis = op.axis if isinstance(op.axis, int) else (op.axis[0] if len(op.axis) == 1
                                                             else None)
            rank = len(inputs[0].shape)
            if axis is None or axis % rank != rank - 1:
                return opaque(f"axis={op.axis} (the last axis only)")
            self.bind(op, "follower", "in", x)
            return [x]
        if _is(kind, (L.Embedding,)):
            return [self._producer(op, op.output_dim)]
        if _is(kind, (L.LayerNormalization,)):
            reason = f"{name}: LayerNormalization normalizes over the channels"
            self.fix(x, reason)
            return [self.fresh(outputs[0], reason)]
        if _is(kind, _PASSTHROUGH):
            return [x]
        if _is(kind, _ACTIVATION_LAYERS):
            if _is(kind, (L.Activation,)) and not _elementwise(op.activation):
                return opaque(f"activation {_act_name(op.activation)!r} is not elementwise")
            return [self._zero_check(op, lambda z: op(z), x)]
        if _is(kind, (L.Flatten, L.Reshape)):
            width = x.width
            new = outputs[0].shape[-1]
            if not width or new is None or new % width:
                return opaque(f"the new last axis ({new}) is not a multiple of the channels "
                              f"({width})")
            out = Layout(x.segments, new // width)
            if _is(kind, (L.Reshape,)):
                self.bind(op, "reshape", "reshape", out)
            return [out]
        if _is(kind, _MERGES):
            shapes = {t.shape[-1] for t in inputs}
            if len(shapes) != 1:
                return opaque("broadcasts its inputs' last axes")
            for other in lays[1:]:
                self.unite(lays[0], other, f"{name}: inputs of different channel structure")
            offsets = [lay.offset for lay in lays]
            if _is(kind, (L.Multiply,)) and None in offsets:
                return [lays[0].with_offset(None)]  # times a channel that is zero: zero
            return [lays[0].with_offset(next((o for o in offsets if o), None))]
        if _is(kind, (L.Concatenate,)):
            rank = len(inputs[0].shape)
            offset = next((lay.offset for lay in lays if lay.offset), None)
            if op.axis % rank == rank - 1:
                if any(lay.repeat != 1 for lay in lays):
                    return opaque("concatenates flattened tensors")
                return [Layout([g for lay in lays for g in lay.segments], offset=offset)]
            for other in lays[1:]:
                self.unite(lays[0], other, f"{name}: inputs of different channel structure")
            return [lays[0].with_offset(offset)]
        if _is(kind, (L.MultiHeadAttention,)):
            return self._mha(op, node, inputs, lays, outputs, opaque)
        return opaque(f"{kind.__name__} is not followed by the channel analysis")

    def _producer(self, op, units):
        g = self._out_groups.get(id(op))
        if g is None:
            g = self._out_groups[id(op)] = self.new(units)
        out = Layout([g])
        self.bind(op, self.a.kinds.get(id(op), "producer"), "out", out)
        return out

    def _activation(self, op, fn, layout):
        """The layout of `layout` after `op`'s activation `fn`."""
        if fn is None:
            return layout
        if not _elementwise(fn):
            # Bounds its own units only (reported where they hold pruned zeros): a softmax
            # classifier is the usual case, and a model output anyway.
            self.fix(layout, f"{op.name}: activation {_act_name(fn)!r} is not elementwise")
            return layout
        return self._zero_check(op, fn, layout)

    def _zero_check(self, op, fn, layout):
        """`layout` after the elementwise `fn`: with an offset if `fn` moves 0 away from 0
        (the layer that reads it, if any, fixes its groups: `read`)."""
        if layout.offset:
            return layout
        z = np.zeros((1, 4), np.float32)
        value = np.asarray(keras.ops.convert_to_numpy(fn(z)))
        if np.any(value != 0):
            what = "its activation maps" if isinstance(op, keras.layers.Layer) else "maps"
            return layout.with_offset(f"{getattr(op, 'name', type(op).__name__)}: {what} 0 to "
                                      f"{float(value.flat[0]):g}, so a pruned channel is not "
                                      "zero")
        return layout

    def _mha(self, op, node, inputs, lays, outputs, opaque):
        try:
            bound = inspect.signature(op.call).bind(*node.arguments.args,
                                                    **node.arguments.kwargs)
        except TypeError:
            return opaque("call arguments not understood")
        args = bound.arguments
        by_id = {id(t): lay for t, lay in zip(inputs, lays)}
        q, v = args.get("query"), args.get("value")
        k = args.get("key") if args.get("key") is not None else v
        named = {"query": q, "key": k, "value": v}
        if any(t is None or id(t) not in by_id for t in named.values()):
            return opaque("query/key/value not found among its inputs")
        if getattr(op, "_gate_dense", None) is not None:
            return opaque("use_gate=True is not followed")
        out_shape = getattr(op, "_output_shape", None)
        if out_shape and len(tuple(out_shape)) != 1:
            return opaque(f"output_shape={out_shape} (one axis only)")
        for role, t in named.items():
            self.bind(op, "mha", role, self.read(by_id[id(t)], op.name))
        for t, lay in zip(inputs, lays):  # masks: not channels
            if all(t is not x for x in named.values()):
                self.fix(lay, f"{op.name}: an attention mask input")
        heads = self._out_groups.get((id(op), "heads"))
        if heads is None:
            heads = self._out_groups[(id(op), "heads")] = self.new(op.num_heads, kind="head")
        self.bind(op, "mha", "heads", Layout([heads]))
        out = self._producer(op, outputs[0].shape[-1])
        self.a.kinds[id(op)] = "mha"
        rest = [self.fresh(t, f"{op.name}: attention scores") for t in outputs[1:]]
        return [out] + rest

    def _nested(self, model, node, ctx, bound, lays, inputs, opaque):
        inner_inputs = list(getattr(model, "inputs", None) or [])
        args = keras.tree.flatten(node.arguments.args) + keras.tree.flatten(
            [v for k, v in node.arguments.kwargs.items() if k not in ("training", "mask")])
        args = [a for a in args if a is not None]
        if not inner_inputs or len(args) != len(inner_inputs) or not getattr(model, "outputs",
                                                                               None):
            return opaque(f"nested model {type(model).__name__} without a traceable graph")
        by_id = {id(t): lay for t, lay in zip(inputs, lays)}
        if any(id(a) not in by_id for a in args):
            return opaque("nested model called on non-tensor arguments")
        inner_ctx = ctx + (id(node),)
        bound = dict(bound)
        bound[inner_ctx] = {id(t): by_id[id(a)] for t, a in zip(inner_inputs, args)}
        for i, a in enumerate(args):
            self.bind(model, "nested", f"input{i}", by_id[id(a)])
        return [self.layout(t, inner_ctx, bound) for t in keras.tree.flatten(model.outputs)]


# ---- custom layers that hold prunable Keras layers (adapters) ------------------------------------

class LayerAdapter:
    """How the channel analysis reads a custom layer (one exact class) whose call is known: which
    of its inner Keras layers form groups, and how `shrink` rebuilds it with fewer units.

    Subclasses implement `visit` (bind the inner layers as the walker binds Keras layers; return
    the output layouts) and `config` (the layer's config with its reduced sizes). `inner` names
    the sublayers whose weights are sliced (their rules are those of the Keras layers they are).
    """

    def visit(self, walker, layer, node, inputs, layouts, outputs, opaque):
        raise NotImplementedError

    def inner(self, layer):
        """{sublayer name inside `layer`: sublayer} of the inner layers the analysis binds."""
        return {}

    def config(self, layer, config, width):
        """`config` with reduced sizes, or None if unchanged. `width(inner, role)` is the shrunk
        width of an inner layer's axis (None: unchanged)."""
        return None

    def inline(self, layer, width, make):
        """None (rebuild the layer from `config`), or a function standing for the layer in the
        rebuilt graph (called as the layer was), made of the inner layers rebuilt by
        `make(inner, name)`: for a change the layer's config cannot express."""
        return None


class _TransformerEncoderAdapter(LayerAdapter):
    """keras_hub's `TransformerEncoder`: a self-attention block and a feedforward block, each
    with a residual addition and a LayerNormalization over the hidden width (which stays).

    The feedforward units (`_feedforward_intermediate_dense`, read by
    `_feedforward_output_dense`) are one group: with its heads whole, `shrink` rebuilds the
    encoder from its config with a smaller `intermediate_dim`. Its attention heads are a head
    group too, but the encoder derives the heads' size as hidden_dim // num_heads in `build`,
    so its config cannot hold fewer heads of the same size: when heads go, `shrink` writes the
    encoder out as the Keras layers and operations its `call` runs (MultiHeadAttention with
    fewer heads, Dropout, residual additions, LayerNormalization, the two Dense layers, and the
    padding mask's expand_dims / cast), named "<encoder>_<inner layer>": a plain Keras block
    with the same outputs. That needs the mask as an argument (`padding_mask` or
    `attention_mask`, as keras_hub's backbones pass it): an encoder that reads an implicit
    Keras mask keeps its heads, with that reason."""

    IMPLICIT = ("called without padding_mask / attention_mask (an implicit Keras mask is not "
                "rewritten), so its heads stay")

    def inner(self, layer):
        return {sub.name: sub for sub in (layer._self_attention_layer,
                                          layer._feedforward_intermediate_dense,
                                          layer._feedforward_output_dense)}

    NAMES = ("_self_attention_layer", "_feedforward_intermediate_dense",
             "_feedforward_output_dense")
    MASKS = frozenset({"padding_mask", "attention_mask", "training"})

    def _missing(self, op):
        """Why the block `op` has not the inner layers the analysis reads (None: it has)."""
        if not op.built or not all(hasattr(op, n) for n in self.NAMES):
            return (f"a {type(op).__name__} without the inner layers "
                    f"{', '.join(self.NAMES)} (another keras_hub version)")
        return None

    def _not_followed(self, op, node):
        """Why the block `op` called at `node` is not read (None: it is)."""
        missing = self._missing(op)
        if missing is not None:
            return missing
        extra = set(node.arguments.kwargs) - self.MASKS
        if extra or len(keras.tree.flatten(node.arguments.args)) != 1:
            return f"called with {sorted(extra) or 'several positional arguments'}"
        return None

    def visit(self, w, op, node, inputs, lays, outputs, opaque):
        reason = self._not_followed(op, node)
        if reason is not None:
            return opaque(reason)
        if getattr(op._self_attention_layer, "_gate_dense", None) is not None:
            return opaque("its attention has use_gate=True")
        explicit = any(node.arguments.kwargs.get(k) is not None
                       for k in ("padding_mask", "attention_mask"))
        return self._block(w, op, node.arguments.args[0], inputs, lays, outputs,
                           None if explicit else f"{op.name}: {self.IMPLICIT}")

    @staticmethod
    def _block(w, op, x, inputs, lays, outputs, heads_fixed, others=None):
        """Bind a keras_hub Transformer block's inner layers: the hidden width (its input
        sequence `x` and the output, residual) fixed by its LayerNormalizations, the heads a
        group (fixed with the reason `heads_fixed`, or None), the feedforward units a group.
        Its other inputs are fixed, as attention masks or with the reason `others` gives
        ({id(tensor): reason})."""
        mha = op._self_attention_layer
        ff1, ff2 = op._feedforward_intermediate_dense, op._feedforward_output_dense
        residual = f"{op.name}: LayerNormalization over the hidden width (residual)"
        for t, lay in zip(inputs, lays):
            w.fix(lay, residual if t is x else (others or {}).get(
                id(t), f"{op.name}: an attention mask input"))
        res = w.fresh(outputs[0], residual)
        _TransformerEncoderAdapter._attention(w, mha, res, res, heads_fixed,
                                              int(outputs[0].shape[-1]), residual)
        w.bind(ff1, "producer", "in", res)
        units = w._producer(ff1, ff1.units)
        w.bind(ff2, "producer", "in", w.read(w._activation(ff1, ff1.activation, units),
                                             ff2.name))
        w.fix(w._producer(ff2, ff2.units), residual)
        w.bind(op, "adapter", "encoder", res)  # marks the outer layer for shrink's rebuild
        for inner in (mha, ff1, ff2):
            w.a.owners[id(inner)] = op
        return [res]

    @staticmethod
    def _attention(w, mha, query, memory, heads_fixed, width, out_fixed):
        """Bind an attention layer inside a block: its query read from `query`, keys and
        values from `memory`, its heads a group (fixed with `heads_fixed`, or None), its
        `width` outputs fixed with the reason `out_fixed`."""
        w.bind(mha, "mha", "query", query)
        for role in ("key", "value"):
            w.bind(mha, "mha", role, memory)
        w.bind(mha, "mha", "heads", Layout([w.new(mha.num_heads, kind="head",
                                                  fixed=heads_fixed)]))
        w.fix(w._producer(mha, width), out_fixed)
        w.a.kinds[id(mha)] = "mha"

    def config(self, layer, config, width):
        units = width(layer._feedforward_intermediate_dense, "out")
        if units is None:
            return None
        config = dict(config)
        config["intermediate_dim"] = units
        return config

    def inline(self, layer, width, make):
        """A function that runs `layer`'s call as Keras layers on Keras tensors, with its
        inner layers rebuilt by `make(inner, new_name)` (None: the layer is rebuilt from its
        config instead: its heads are whole)."""
        if width(layer._self_attention_layer, "heads") is None:
            return None
        p = layer.name + "_"
        mha, ln1, drop1 = (make(sub, p + sub.name) for sub in (
            layer._self_attention_layer, layer._self_attention_layer_norm,
            layer._self_attention_dropout))
        ln2, ff1, ff2, drop2 = (make(sub, p + sub.name) for sub in (
            layer._feedforward_layer_norm, layer._feedforward_intermediate_dense,
            layer._feedforward_output_dense, layer._feedforward_dropout))
        first = layer.normalize_first
        ops = keras.ops

        def call(inputs, padding_mask=None, attention_mask=None, training=None):
            # keras_hub's merge_padding_and_attention_mask, with the mask given explicitly
            mask = None
            if padding_mask is not None:
                mask = ops.cast(ops.expand_dims(padding_mask, axis=1), "int32")
            if attention_mask is not None:
                am = ops.cast(attention_mask, "int32")
                mask = am if mask is None else ops.minimum(mask, am)
            x = residual = inputs
            if first:
                x = ln1(x)
            x = drop1(mha(query=x, value=x, attention_mask=mask, training=training),
                      training=training)
            x = x + residual
            if not first:
                x = ln1(x)
            residual = x
            if first:
                x = ln2(x)
            x = drop2(ff2(ff1(x)), training=training) + residual
            return x if first else ln2(x)

        return call


class _TransformerDecoderAdapter(_TransformerEncoderAdapter):
    """keras_hub's `TransformerDecoder` (GPT-2 and the other decoder-only backbones; BART's
    decoder, with cross-attention): its feedforward units are one group, and `shrink`
    rebuilds the decoder from its config with a smaller `intermediate_dim`. Its heads (and
    its cross-attention's) stay, and the report says why: its call (causal mask, key/value
    caches for generation) is not written out. The encoder's sequence it attends to is the
    encoder's hidden width, which stays too."""

    HEADS = ("a TransformerDecoder's heads are not removed (its causal, cached self-attention "
             "is not written out), so they stay")
    ARGS = frozenset({"decoder_sequence", "encoder_sequence", "decoder_padding_mask",
                      "decoder_attention_mask", "encoder_padding_mask",
                      "encoder_attention_mask", "use_causal_mask", "training"})

    def inner(self, layer):
        out = super().inner(layer)
        cross = getattr(layer, "_cross_attention_layer", None)
        if cross is not None:
            out[cross.name] = cross
        return out

    def visit(self, w, op, node, inputs, lays, outputs, opaque):
        missing = self._missing(op)
        if missing is not None:
            return opaque(missing)
        try:
            args = inspect.signature(op.call).bind(*node.arguments.args,
                                                   **node.arguments.kwargs).arguments
        except TypeError:
            return opaque("call arguments not understood")
        extra = sorted(k for k, v in args.items() if k not in self.ARGS and v is not None)
        if extra:
            return opaque(f"called with {extra}")
        x, enc = args.get("decoder_sequence"), args.get("encoder_sequence")
        cross = getattr(op, "_cross_attention_layer", None)
        by_id = {id(t): lay for t, lay in zip(inputs, lays)}
        if id(x) not in by_id or (cross is not None) != (enc is not None) or (
                enc is not None and id(enc) not in by_id):
            return opaque("its decoder / encoder sequences not found among its inputs")
        heads = f"{op.name}: {self.HEADS}"
        memory = f"{op.name}: the encoder's sequence its cross-attention reads"
        out = self._block(w, op, x, inputs, lays, outputs, heads,
                          {id(enc): memory} if enc is not None else None)
        if cross is not None:
            self._attention(w, cross, out[0], by_id[id(enc)], heads,
                            int(outputs[0].shape[-1]), memory)
            w.a.owners[id(cross)] = op
        return out

    def inline(self, layer, width, make):
        return None  # heads stay: the config's smaller intermediate_dim says it all


# Exact classes (module.qualname) read through an adapter: a subclass may call differently.
_ADAPTERS = {
    "keras_hub.src.layers.modeling.transformer_encoder.TransformerEncoder":
        _TransformerEncoderAdapter(),
    "keras_hub.src.layers.modeling.transformer_decoder.TransformerDecoder":
        _TransformerDecoderAdapter(),
}


def register_adapter(cls, adapter):
    """Read every layer of exactly class `cls` through `adapter` (a `LayerAdapter`)."""
    if not isinstance(adapter, LayerAdapter):
        raise ValueError(f"`adapter` must be a LayerAdapter. Received: adapter={adapter!r}")
    _ADAPTERS[f"{cls.__module__}.{cls.__qualname__}"] = adapter


def adapter_for(layer):
    """The `LayerAdapter` registered for `layer`'s exact class (through the thin subclass that
    marks a user's layer holding sparse layers), or None."""
    from sparsekeras._saving import _Sparsified

    cls = type(layer)
    if issubclass(cls, _Sparsified):  # (subclass, _Sparsified, the user's class, ...)
        cls = cls.__mro__[2]
    return _ADAPTERS.get(f"{cls.__module__}.{cls.__qualname__}")


def costly_unsupported(analysis):
    """The entries of `analysis.unsupported` that keep some group of a producer whole on their
    own (no other reason than layers not followed: a LayerNormalization, a model input or
    output would keep it whole anyway)."""
    texts = {f"{n}: {r}": (n, r) for n, r in analysis.unsupported}
    producers = set()
    for layer, roles in analysis.bindings.values():
        for role, layout in roles.items():
            if role in ("out", "heads"):
                producers.update(id(g) for g in layout.groups())
    found = []
    for g in analysis.groups:
        if id(g) not in producers or not g.fixed or any(r not in texts for r in g.fixed):
            continue
        for r in g.fixed:
            if texts[r] not in found:
                found.append(texts[r])
    return [u for u in analysis.unsupported if u in found]


def _keeps_last_axis(args, rank):
    """Whether `x[key]` (args = (x, key)) indexes other axes only, with constant ints and
    slices, keeping the last axis whole and last."""
    if len(args) != 2:
        return False
    # (a list once the model went through a .keras file)
    key = tuple(args[1]) if isinstance(args[1], (tuple, list)) else (args[1],)
    if any(k is None or not isinstance(k, (int, slice, type(Ellipsis))) for k in key):
        return False
    if any(isinstance(k, slice) and not all(isinstance(v, (int, type(None)))
                                            for v in (k.start, k.stop, k.step)) for k in key):
        return False
    if sum(k is Ellipsis for k in key) > 1:
        return False
    if key and key[-1] is Ellipsis:
        return True
    if Ellipsis in key or len(key) == rank:  # the last entry indexes the last axis
        return key[-1] == slice(None)
    return len(key) < rank


def _is_number(a):
    return isinstance(a, (int, float, np.number)) and not isinstance(a, bool)


def _act_name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


def _elementwise(fn):
    return _act_name(fn) in _ELEMENTWISE


_NEEDS_GRAPH = ("Build the same layers as a Functional model (keras.Model(inputs, outputs)), or "
                "give the Sequential a keras.Input, and load the weights into it.")


def graph_model(model, what="The channel analysis"):
    """`model` itself if it is a Sequential or Functional model with a layer graph; for a
    subclassed (or lazily built) model, a Functional model over the model's own layers, traced
    by running its `call` on symbolic inputs of the shape it was built with, and checked to
    hold all its weights and to compute what it computes (on a random input).

    Raises:
        ValueError: naming the model's class and why its graph could not be had (not built,
            several call arguments, a call that symbolic tensors cannot run, weights used
            outside its layers, a traced graph that computes something else).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a Keras model. Received: model of type "
                         f"{type(model).__name__}")
    try:
        outputs, inputs = model.outputs, model.inputs
    except (AttributeError, ValueError):
        outputs = inputs = None
    if outputs and inputs:
        return model
    return _trace(model, what)


def _trace(model, what):
    def fail(why, cause=None):
        raise ValueError(
            f"{what} needs the layer graph of a Sequential or Functional model; "
            f"{model.name!r} ({type(model).__name__}) has none (a subclassed model, or a "
            f"Sequential without keras.Input), and its call could not be traced: {why}. "
            + _NEEDS_GRAPH) from cause

    shapes = getattr(model, "_build_shapes_dict", None)
    if not model.built or not shapes:
        fail("it is not built (call it once on data first)")
    if len(shapes) != 1:
        fail(f"it was built with several arguments {sorted(shapes)}")
    shape = next(iter(shapes.values()))
    dtype = getattr(model, "input_dtype", None) or "float32"
    try:
        inputs = keras.tree.map_shape_structure(
            lambda s: keras.Input(batch_shape=(None,) + tuple(s[1:]), dtype=dtype), shape)
        traced = keras.Model(inputs, model.call(inputs), name=model.name)
    except Exception as e:  # what symbolic tensors cannot run: tf ops, Python on values...
        fail(f"running its call on symbolic inputs failed ({type(e).__name__}: "
             f"{str(e)[:300]})", e)
    missing = {id(v) for v in model.weights} - {id(v) for v in traced.weights}
    if missing:
        fail(f"its call uses {len(missing)} weight(s) outside the layers it calls")
    rng = np.random.default_rng(0)
    x = keras.tree.map_shape_structure(
        lambda s: rng.random((2,) + tuple(s[1:])).astype(dtype), shape)
    expected, got = (keras.tree.flatten(f(x)) for f in (model, traced))
    if len(expected) != len(got) or not all(
            np.allclose(_np(a), _np(b), rtol=1e-4, atol=1e-5) for a, b in zip(expected, got)):
        fail("the traced graph computes something else than its call (Python control flow "
             "on values, or state the graph does not hold)")
    return traced


def check_graph(model, what="The channel analysis"):
    """(inputs, outputs) of `graph_model(model)`: raises a ValueError naming the model's class
    when it has no layer graph and its call cannot be traced."""
    g = graph_model(model, what)
    return g.inputs, g.outputs


def analyze(model):
    """The coupled channel groups of a Sequential or Functional `model` (nested models
    inlined), or of a subclassed model whose call can be traced (`graph_model`).

    Args:
        model: a built Keras model (sparsekeras layers are read as the Keras layers they
            stand for).

    Returns:
        An `Analysis` (its bindings are on the model's own layers).

    Raises:
        ValueError: for a model with no layer graph whose call cannot be traced, or one that
            is not built.
    """
    model = graph_model(model)
    outputs = model.outputs
    w = _Walker(model)
    for t in keras.tree.flatten(outputs):
        lay = w.layout(t)
        w.fix(lay, "model output")
    return w.a


# ---- reading the weights of a group's members ---------------------------------------------------

def _np(v):
    if v is None:
        return None
    # A variable's value (np.asarray on a Keras variable warns on NumPy 2).
    if hasattr(v, "numpy"):
        return np.asarray(v.numpy())
    return np.asarray(keras.ops.convert_to_numpy(v))


def _out_axis(layer):
    """The axis of `layer`'s produced kernel (`_produced`) that indexes its output units."""
    return -2 if isinstance(layer, _TRANSPOSES) else -1


def _columns(layer, array):
    """`array` (the layer's produced kernel or its mask) as (fan-in, output units)."""
    a = np.moveaxis(np.asarray(array), _out_axis(layer), -1)
    return a.reshape(-1, a.shape[-1])


def _produced(layer):
    """(kernel, bias) of `layer`'s output units (None where absent): the units are the
    kernel's axis `_out_axis(layer)`."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        dense = layer._output_dense
        return dense.kernel, dense.bias
    if isinstance(layer, keras.layers.Embedding):
        return layer.embeddings, None
    if isinstance(layer, _SEPARABLE):
        return layer.pointwise_kernel, layer.bias
    return layer.kernel, getattr(layer, "bias", None)


def _bn_offset(layer):
    """A BatchNormalization's output for a zero input, per channel (inference)."""
    n = int(layer.moving_mean.shape[0])
    gamma = _np(layer.gamma) if layer.gamma is not None else np.ones(n, np.float32)
    beta = _np(layer.beta) if layer.beta is not None else np.zeros(n, np.float32)
    mean, var = _np(layer.moving_mean), _np(layer.moving_variance)
    return beta - gamma * mean / np.sqrt(var + layer.epsilon)


def dead_channels(analysis, group):
    """Bool array (group.size,): True where the channel is exactly zero in the model whatever
    the input (its producers' kernel columns and biases are zero, its BatchNormalizations give
    zero for zero, its depthwise biases are zero), so removing it changes no output."""
    dead = np.ones(group.size, bool)
    for layer, role, pos in analysis.members(group):
        kind = analysis.kinds[id(layer)]
        if role == "out":
            kernel, bias = (_np(v) for v in _produced(layer))
            zero = ~np.any(_columns(layer, kernel) != 0, axis=0)
            if bias is not None:
                zero &= bias.reshape(-1) == 0
            dead &= zero[pos].all(axis=0)
        elif role == "in" and kind == "follower":
            if isinstance(layer, keras.layers.BatchNormalization):
                dead &= (_bn_offset(layer) == 0)[pos].all(axis=0)
            elif getattr(layer, "bias", None) is not None:
                dead &= (_np(layer.bias) == 0)[pos].all(axis=0)
    return dead


def dead_heads(layer):
    """Bool array (num_heads,): heads whose contribution to the output is exactly zero (their
    rows of the output projection are zero, or their value projection and bias are)."""
    out = _np(layer._output_dense.kernel)
    dead = ~np.any(out.reshape(out.shape[0], -1) != 0, axis=1)
    value = _np(layer._value_dense.kernel)
    vzero = ~np.any(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1) != 0, axis=1)
    if layer._value_dense.bias is not None:
        vb = _np(layer._value_dense.bias)
        vzero &= ~np.any(vb.reshape(vb.shape[0], -1) != 0, axis=1)
    return dead | vzero


def block_ids(analysis, group):
    """The block (of a grouped convolution) of each channel of `group`: None when no grouped
    convolution constrains it, an int array (size,) when every one that does splits it the
    same way and the group is the whole axis there, else a string saying why not."""
    found = None
    for layer, layout, n_blocks in analysis.blocks:
        if not any(g is group for g in layout.groups()):
            continue
        if len(layout.segments) != 1 or layout.repeat != 1:
            return (f"{layer.name}: a grouped convolution over channels of several groups "
                    "(a concatenation)")
        ids = np.arange(group.size) // (group.size // n_blocks)
        if found is not None and not np.array_equal(found, ids):
            return f"{layer.name}: grouped convolutions with different groups"
        found = ids
    return found


def _rms_columns(a, axis=-1):
    a = np.moveaxis(np.asarray(a, np.float64), axis, -1)
    a = a.reshape(-1, a.shape[-1])
    return np.sqrt(np.mean(a * a, axis=0)) if a.shape[0] else np.zeros(a.shape[1])


def channel_scores(analysis, group):
    """Score per channel of `group`: the sum over its producers (and depthwise followers) of
    the RMS of the channel's kernel entries (the L2 norm over sqrt(fan-in), so members of
    different fan-in weigh alike)."""
    score = np.zeros(group.size)
    for layer, role, pos in analysis.members(group):
        kind = analysis.kinds[id(layer)]
        if role == "out":
            score += _rms_columns(_columns(layer, _np(_produced(layer)[0])))[pos].sum(axis=0)
        elif role == "in" and kind == "follower" and not isinstance(
                layer, keras.layers.BatchNormalization):
            score += _rms_columns(_np(layer.kernel), axis=-2)[pos].sum(axis=0)
    return score


def _mha_projections(layer):
    return [layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense]


def head_scores(layer):
    """Score per head of a MultiHeadAttention: the RMS of the head's query, key and value
    kernel entries and of its output-projection rows, summed."""
    q, k, v, o = (_np(d.kernel) for d in _mha_projections(layer))
    return (_rms_columns(q, 1) + _rms_columns(k, 1) + _rms_columns(v, 1)
            + _rms_columns(o, 0))


# ---- pruning coupled channels and heads (GradualPruning) ----------------------------------------

def _mask_of(layer):
    """What holds the mask of a producer's output kernel (None: no mask): the sparsekeras layer
    itself (`mask`, `set_mask`), or for a layer with several masks (SparseSeparableConv's
    depthwise and pointwise kernels, SparseEmbedding's table) the `MaskTarget` of the weight
    whose last axis is the layer's units (the pointwise kernel, the table)."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        layer = layer._output_dense
    if hasattr(layer, "set_mask") and hasattr(layer, "mask"):
        return layer
    if hasattr(layer, "pruning_targets") and isinstance(layer, (L.Embedding,) + _SEPARABLE
                                                         + _TRANSPOSES):
        weight = _produced(layer)[0]
        for target in layer.pruning_targets():
            if target.kernel is weight:
                return target
    return None


def _select(scores, sizes, forced, sparsity, scope, floor, blocks=None):
    """Pruned flags per group: the lowest-score channels (forced ones always), `sparsity` of
    each group ("layer") or of all of them ("global", each group keeping at least
    max(1, ceil(floor * size)))."""
    pruned = [f.copy() for f in forced]
    if blocks is None:
        blocks = [None] * len(scores)
    for i, ids in enumerate(blocks):
        if ids is None:
            continue
        # A grouped convolution's blocks lose the same number of channels (this group's own
        # rate: `sparsity`, whatever the scope).
        sizes_b = np.bincount(ids)
        want = max(int(round(sparsity * sizes_b.min())),
                   int(np.bincount(ids, weights=forced[i]).max()))
        want = min(want, int(sizes_b.min()) - 1)
        for b in range(sizes_b.size):
            members = np.flatnonzero(ids == b)
            s = np.where(forced[i][members], -np.inf, scores[i][members])
            pruned[i][members[np.argsort(s, kind="stable")[:want]]] = True
    free = [i for i, ids in enumerate(blocks) if ids is None]
    scores = [scores[i] for i in free]
    sizes = [sizes[i] for i in free]
    sub = [pruned[i] for i in free]
    forced = [forced[i] for i in free]
    _select_free(scores, sizes, forced, sparsity, scope, floor, sub)
    return pruned


def _select_free(scores, sizes, forced, sparsity, scope, floor, pruned):
    if scope == "layer":
        for i, (s, n) in enumerate(zip(scores, sizes)):
            want = min(max(int(round(sparsity * n)), int(forced[i].sum())), n - 1)
            order = np.argsort(np.where(forced[i], -np.inf, s), kind="stable")
            pruned[i][order[:want]] = True
        return
    keep_min = [max(1, int(np.ceil(floor * n))) for n in sizes]
    total = sum(sizes)
    target = int(round(sparsity * total)) - sum(int(f.sum()) for f in forced)
    flat = [(s[j], i, j) for i, s in enumerate(scores) for j in range(len(s)) if not forced[i][j]]
    flat.sort(key=lambda t: (t[0], t[1], t[2]))
    left = [n - int(f.sum()) for n, f in zip(sizes, forced)]
    for score, i, j in flat:
        if target <= 0:
            break
        if left[i] <= keep_min[i]:
            continue
        pruned[i][j] = True
        left[i] -= 1
        target -= 1


def prune_plan(analysis, sparsity, granularity, scope="layer", floor=0.0):
    """The masks and held-at-zero entries that prune `sparsity` of the coupled channels
    (granularity "channel") or attention heads ("head") of an analysed sparsekeras model.

    Returns:
        masks: {id(mask variable): (layer or MaskTarget, new bool mask)} for the masks
            that change (each a subset of its current mask).
        holds: [(variable, keep array broadcastable to it)]: the biases, BatchNorm scales,
            offsets (and moving means) of the pruned channels, to be zeroed and held at zero
            (a pruned channel is then exactly zero, so `shrink` removes it).
        skipped: [(group's layer names, reason)] of groups that cannot be pruned here.
    """
    masks, holds, skipped = {}, [], []

    def current(layer):
        # By the mask variable: a layer's MaskTarget is a new object at every call.
        if id(layer.mask) not in masks:
            masks[id(layer.mask)] = (layer, _np(layer.mask) != 0)
        return masks[id(layer.mask)][1]

    units, scores, sizes, forced, blocks = [], [], [], [], []
    if granularity == "head":
        for g in analysis.prunable_groups("head"):
            owners = [layer for layer, role, _ in analysis.members(g) if role == "heads"]
            projections = [p for layer in owners for p in _mha_projections(layer)]
            if not owners or any(_mask_of(p) is None for p in projections):
                skipped.append(([layer.name for layer in owners], "no pruning masks "
                                "(use sparsekeras.sparsify: SparseMultiHeadAttention)"))
                continue
            units.append((g, owners))
            blocks.append(None)
            scores.append(sum(head_scores(layer) for layer in owners))
            sizes.append(g.size)
            gone = np.zeros(g.size, bool)
            for layer in owners:
                o = _np(layer._output_dense.mask)
                gone |= ~np.any(o.reshape(o.shape[0], -1) != 0, axis=1)
            forced.append(gone)
    else:
        for g in analysis.prunable_groups("channel"):
            members = analysis.members(g)
            producers = [(layer, pos) for layer, role, pos in members if role == "out"]
            if not producers:
                continue
            bare = [layer.name for layer, _ in producers if _mask_of(layer) is None]
            if bare:
                skipped.append(([layer.name for layer, _ in producers],
                                f"no kernel mask coupled pruning can set on {bare} (sparsify "
                                "them, with prunable=True)"))
                continue
            ids = block_ids(analysis, g)
            if isinstance(ids, str):
                skipped.append(([layer.name for layer, _ in producers], ids))
                continue
            blocks.append(ids)
            units.append((g, members))
            scores.append(channel_scores(analysis, g))
            sizes.append(g.size)
            gone = np.zeros(g.size, bool)
            for layer, pos in producers:
                col = ~np.any(_columns(layer, _np(_mask_of(layer).mask)) != 0, axis=0)
                gone |= col[pos].any(axis=0)
            forced.append(gone)
    pruned = _select(scores, sizes, forced, sparsity, scope, floor, blocks)

    for (g, stuff), cut in zip(units, pruned):
        if granularity == "head":
            keep = ~cut
            for layer in stuff:
                for p in _mha_projections(layer)[:3]:
                    m = current(_mask_of(p))
                    m &= keep[None, :, None]
                    if p.bias is not None:
                        holds.append((p.bias, keep[:, None]))
                o = current(_mask_of(layer._output_dense))
                o &= keep[:, None, None]
            continue
        for layer, role, pos in stuff:
            kind = analysis.kinds[id(layer)]
            axis_keep = np.ones(int(pos.max()) + 1 if pos.size else 0, bool)
            axis_keep[pos[:, cut].reshape(-1)] = False
            if role == "out":
                owner = _mask_of(layer)
                axis = _out_axis(layer)
                width = int(owner.mask.shape[axis])
                k = np.ones(width, bool)
                k[:axis_keep.size] = axis_keep
                m = current(owner)
                m &= k if axis == -1 else k[:, None]
                bias = _produced(layer)[1]
                if bias is not None:
                    holds.append((bias, k))
            elif role == "in" and kind == "follower":
                if isinstance(layer, keras.layers.BatchNormalization):
                    width = int(layer.moving_mean.shape[0])
                    k = np.ones(width, bool)
                    k[:axis_keep.size] = axis_keep
                    # The moving mean of a channel that is zero stays zero once zeroed: then
                    # the channel is zero in inference even with scale=False.
                    for v in (layer.gamma, layer.beta, layer.moving_mean):
                        if v is not None:
                            holds.append((v, k))
                else:  # depthwise, depth_multiplier 1: (..., C, 1) kernel, (C,) bias
                    width = int(layer.kernel.shape[-2])
                    k = np.ones(width, bool)
                    k[:axis_keep.size] = axis_keep
                    if hasattr(layer, "set_mask"):
                        m = current(layer)
                        m &= k[:, None]
                    if getattr(layer, "bias", None) is not None:
                        holds.append((layer.bias, k))
    return masks, holds, skipped
