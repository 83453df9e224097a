"""Dynamic sparse training callbacks: `RigL` and `SET` (re-exported by `sparsekeras.callbacks`).

The network is sparse from the first step: each prunable layer gets a random mask at its
density (ERK or uniform, `sparsekeras._dst`), the SparseDense layers are compacted so that they
train their kept values only, on the sparse kernels, and every `update_every` steps a fraction
of each layer's weights moves: the smallest active ones are dropped and as many inactive ones
grown (RigL: where the dense gradient is largest; SET: at random).

The callbacks only orchestrate; the mask maths are in `sparsekeras._dst`.
"""
import time
import warnings

import numpy as np
import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from sparsekeras import _compact, _convert, _dst
from sparsekeras.layers import _base
from sparsekeras.layers._base import _PrunableKernel
from sparsekeras.layers.embedding import _TableTarget

__all__ = ["RigL", "SET"]


def _kernel_of(target):
    """The trainable variable of a target's pruned weight (a decompacted layer's kernel)."""
    if hasattr(target, "_kernel_variable"):
        return target._kernel_variable()
    return target.kernel


def _dense_kernel(target):
    """The target's weight as a NumPy array; a compacted layer's scattered from its values in
    NumPy (TensorFlow's eager scatter_nd of 1.7M values into 16M takes longer)."""
    if getattr(target, "compacted", False) and hasattr(target, "_compact"):
        c = target._compact
        return _compact.dense_from_values(keras.ops.convert_to_numpy(c.values),
                                          keras.ops.convert_to_numpy(c.positions),
                                          tuple(target.mask.shape))
    return keras.ops.convert_to_numpy(_kernel_of(target))


def _abs_in_place(tensor):
    """|tensor| as a NumPy array, in the one copy out of TensorFlow (16M entries: no second)."""
    value = np.array(keras.ops.convert_to_numpy(tf.convert_to_tensor(tensor)))
    return np.abs(value, out=value)


def _target_layer(target):
    return getattr(target, "layer", target)


def _state_slots(optimizer, variable):
    """The state variables (momentum, second moment, EMA...) that each built optimizer of the
    chain (a LossScaleOptimizer and the one it wraps) keeps for `variable`, of its shape."""
    slots = []
    for opt in _compact._chain(optimizer) if optimizer is not None else []:
        if not getattr(opt, "built", False):
            continue
        idx = opt._trainable_variables_indices.get(opt._var_key(variable))
        if idx is None:
            continue
        n = len(opt._trainable_variables)
        for name, attr in list(vars(opt).items()):
            if name in ("_variables", "_trainable_variables") or not isinstance(attr, list):
                continue
            if len(attr) != n:
                continue
            slot = attr[idx]
            if (isinstance(slot, keras.Variable) and slot is not variable
                    and tuple(slot.shape) == tuple(variable.shape)):
                slots.append(slot)
    return slots


def zero_optimizer_state(optimizer, variable, positions):
    """Set to zero, at the flat `positions`, the optimizer state kept for `variable`.
    Returns the number of state variables changed."""
    positions = np.asarray(positions, np.int64)
    if len(positions) == 0:
        return 0
    slots = _state_slots(optimizer, variable)
    for slot in slots:
        value = np.array(keras.ops.convert_to_numpy(slot)).reshape(-1)
        value[positions] = 0
        slot.assign(value.reshape(tuple(variable.shape)))
    return len(slots)


def move_compacted(layer, new_mask, optimizer):
    """Give a compacted (CSC, block 1) SparseDense the mask `new_mask` with the same number of
    kept weights, staying compacted: its values variable, the optimizer's state of it and the
    structure are rewritten in place (kept weights keep their value and state, grown ones start
    at zero), so the traced training step, which reads them as variables, needs no retrace."""
    c = layer._compact
    old_positions = keras.ops.convert_to_numpy(c.positions).astype(np.int64)
    lookup = np.full(int(np.prod(layer.mask.shape)), -1, np.int64)
    lookup[old_positions] = np.arange(len(old_positions))
    slots = _state_slots(optimizer, c.values)
    old = [np.asarray(keras.ops.convert_to_numpy(v)) for v in [c.values] + slots]
    # The mask's assign hook recomputes the compacted structure (the same nnz is checked).
    layer.mask.assign(np.asarray(new_mask, bool).astype(layer.mask.dtype))
    positions = keras.ops.convert_to_numpy(c.positions).astype(np.int64)
    source = lookup[positions]
    kept = source >= 0
    for var, value in zip([c.values] + slots, old):
        carried = np.zeros(len(positions), value.dtype)
        carried[kept] = value[source[kept]]
        var.assign(carried)
    # The optimizer saves this state in the kernel's layout (see _compact._DENSE_LAYOUT): the
    # positions it scatters to are the new ones.
    for opt in _compact._chain(optimizer) if optimizer is not None else []:
        views = _compact._DENSE_LAYOUT.get(opt, {})
        for key, entry in list(views.items()):
            if any(entry[0] is slot for slot in slots):
                views[key] = (entry[0], positions, entry[2])


def _probe_call(layer, kernel):
    """A dense `call` for a compacted SparseDense that multiplies by the tensor `kernel`, so
    that a tape gives the loss's gradient w.r.t. every entry of the kernel (RigL's scores)."""
    def call(inputs, training=None):
        if isinstance(inputs, tf.SparseTensor):
            y = tf.sparse.sparse_dense_matmul(inputs, tf.cast(kernel, inputs.dtype))
        else:
            x = tf.convert_to_tensor(inputs)
            y = tf.tensordot(x, tf.cast(kernel, x.dtype), axes=[[x.shape.rank - 1], [0]])
        y = tf.cast(y, layer.compute_dtype)
        if layer.bias is not None:
            y = y + tf.cast(layer.bias, y.dtype)
        return layer.activation(y) if layer.activation is not None else y
    return call


def _in_place(target, block=1):
    """Whether a target's mask can move without leaving its compacted state: compacted in
    (1, block) blocks, the storage that a mask made of whole (r, block) blocks keeps at the
    same number of stored values."""
    return (getattr(target, "compacted", False) and getattr(target, "compact_block", None) == block
            and hasattr(target, "_compact"))


class _DynamicSparsity(keras.callbacks.Callback):
    """What RigL and SET share (see `RigL` for the arguments)."""

    _grows_by_gradient = False

    def __init__(self, sparsity=0.9, distribution="erk", update_every=100, drop_fraction=0.3,
                 end_step=None, seed=None, decay="cosine", exclude=(), compact=True,
                 log_dir=None, log_layers=False, granularity="unstructured",
                 block_shape=(1, 1), rescale_init=False):
        super().__init__()
        if not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"Expected `sparsity` in [0, 1). Received: sparsity={sparsity}")
        if distribution not in _dst.DISTRIBUTIONS:
            raise ValueError(f"Expected `distribution` in {_dst.DISTRIBUTIONS}. "
                             f"Received: distribution={distribution!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"Expected `update_every` a positive integer. "
                             f"Received: update_every={update_every!r}")
        if not 0.0 <= float(drop_fraction) <= 1.0:
            raise ValueError(f"Expected `drop_fraction` in [0, 1]. "
                             f"Received: drop_fraction={drop_fraction}")
        if end_step is not None and (isinstance(end_step, bool) or not isinstance(end_step, int)
                                     or end_step < 1):
            raise ValueError(f"Expected `end_step` None or a positive integer. "
                             f"Received: end_step={end_step!r}")
        if decay not in ("cosine", "constant"):
            raise ValueError(f"Expected `decay` in ('cosine', 'constant'). Received: decay={decay!r}")
        if isinstance(exclude, str):
            raise ValueError(f"Expected `exclude` a list of layer names. Received: exclude={exclude!r}")
        if granularity not in _dst.GRANULARITIES:
            raise ValueError(f"Expected `granularity` in {_dst.GRANULARITIES}. "
                             f"Received: granularity={granularity!r}")
        if not isinstance(rescale_init, bool):
            raise ValueError(f"Expected `rescale_init` True or False. "
                             f"Received: rescale_init={rescale_init!r}")
        self.rescale_init = rescale_init
        self.granularity = granularity
        self.block_shape = (_dst.check_block_shape(block_shape) if granularity == "block"
                            else (1, 1))
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.update_every = update_every
        self.drop_fraction = float(drop_fraction)
        self.end_step = end_step
        # One seed for every decision, drawn now when not given, so that every replica and a
        # resumed fit (same callback object or same seed) decide alike.
        self.seed = int(np.random.default_rng().integers(2**31)) if seed is None else int(seed)
        self.decay = decay
        self.exclude = tuple(exclude)
        self.compact = bool(compact)
        self.log_dir = log_dir
        self.log_layers = bool(log_layers)
        self.updates = []  # one dict per mask update: step, fraction, moved, per-layer moved
        self._kernels = {}  # id(target) -> its dense kernel, read once per update
        self._targets = []
        self._end = None
        self._last_step = -1
        self._moved_since_epoch = 0
        self._writer = None

    # ---- Keras hooks --------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._targets = self._find_targets()
        self._end = self._resolve_end_step()
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        step = int(self.model.optimizer.iterations.numpy())
        # Masks are drawn at the first step; a resumed fit keeps the (sparse) masks it loaded.
        # A model trained dense before (every mask all ones, optimizer past step 0) gets its
        # masks now too: skipping them would train it dense, silently.
        if step == 0 or (self.sparsity > 0 and self.overall_sparsity() == 0.0):
            self.init_masks()
        self._compact_all()
        self._last_step = step - 1

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step == self._last_step:
            return
        # With steps_per_execution > 1 Keras calls this once per execution: an update step
        # that fell inside the last execution is done now (with its own step's decisions).
        first = self._last_step + 1 if self._last_step < step else step
        self._last_step = step
        due = [t for t in range(max(first, step - 100000), step + 1)
               if _dst.is_update_step(t, self.update_every, self._end)]
        if due:
            self.update_masks(due[-1])

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["sparsity"] = self.overall_sparsity()

    def on_epoch_end(self, epoch, logs=None):
        values = {"sparsity": self.overall_sparsity(), "moved": float(self._moved_since_epoch)}
        if self.log_layers:
            for t, name in zip(self._targets, _convert.target_names(self.model, self._targets)):
                values[f"sparsity/{name}"] = float(t.sparsity)
        self._moved_since_epoch = 0
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            with self._writer.as_default(step=int(self.model.optimizer.iterations.numpy())):
                for name, value in values.items():
                    tf.summary.write(name, tf.constant(value, tf.float32), metadata=metadata)
            self._writer.flush()

    # ---- setup --------------------------------------------------------------------------

    def _find_targets(self):
        targets = [t for t in _convert.prunable_targets(self.model)
                   if t.name not in self.exclude and _target_layer(t).name not in self.exclude]
        if not targets:
            raise ValueError(f"{type(self).__name__} found no prunable layer in the model (after "
                             f"exclude={list(self.exclude)}): use sparsekeras.layers.SparseDense "
                             "(or sparsekeras.sparsify(model)).")
        unbuilt = [t.name for t in targets if not t.built]
        if unbuilt:
            raise ValueError(f"{type(self).__name__} needs built layers; not built: {unbuilt}. "
                             "Build the model (call it on a batch) before fit.")
        if self.granularity == "block":
            for t in targets:
                try:
                    _dst.block_grid(tuple(t.mask.shape), self.block_shape)
                except ValueError as e:
                    raise ValueError(f"{type(self).__name__}: layer {t.name!r}: {e} Pass "
                                     "another block_shape or exclude=[...] the layer.") from None
        return targets

    @property
    def _compact_block(self):
        """The (1, G) block width the SparseDense layers are compacted in."""
        return self.block_shape[1]

    def _random_mask(self, shape, density, generator):
        if self.granularity == "block":
            grid = _dst.block_grid(shape, self.block_shape)
            return _dst.expand_blocks(_dst.random_mask(grid, density, generator), shape,
                                      self.block_shape)
        return _dst.random_mask(shape, density, generator)

    def _drop_grow(self, weights, mask, fraction, generator, score):
        """drop_grow on entries, or with block granularity on the grid of blocks (scores: the
        blocks' L2 norms of weights and of gradients); flat element indices either way."""
        if self.granularity != "block":
            return _dst.drop_grow(weights, mask, fraction, generator, score)
        shape, bs = mask.shape, self.block_shape
        blocks = _dst.block_mask_of(mask, bs)
        new, dropped, grown = _dst.drop_grow(
            _dst.block_norms(weights, bs), blocks, fraction, generator,
            None if score is None else _dst.block_norms(score, bs))
        return (_dst.expand_blocks(new, shape, bs), _dst.block_positions(dropped, shape, bs),
                _dst.block_positions(grown, shape, bs))

    def _resolve_end_step(self):
        if self.end_step is not None:
            return self.end_step
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if not epochs or not steps:
            raise ValueError(f"{type(self).__name__} cannot tell the number of training steps "
                             "(the data has no known length): pass end_step. Received: "
                             "end_step=None")
        # RigL stops moving weights at 75% of training.
        return max(1, int(0.75 * epochs * steps))

    def layer_densities(self):
        """The density of each target (same order as `targets`) under the distribution."""
        shapes = [tuple(t.mask.shape) for t in self._targets]
        return _dst.densities(shapes, self.sparsity, self.distribution)

    @property
    def targets(self):
        """The (weight, mask) targets the callback trains sparse (after on_train_begin)."""
        return list(self._targets)

    def _optimizer(self):
        return _convert._built_optimizer(self.model)

    def _decompact(self, targets):
        """Decompact the compacted layers among `targets`; returns whether any was."""
        done = False
        with _convert._strategy_scope(self.model):
            for t in targets:
                if getattr(t, "compacted", False):
                    t.decompact(self._optimizer())
                    done = True
        return done

    def _compact_all(self):
        """Compact the SparseDense layers on the sparse path (the others train masked)."""
        if not self.compact:
            return []
        try:
            _compact.check_optimizer(self.model.optimizer)
        except ValueError as e:
            warnings.warn(f"{type(self).__name__} does not compact the layers (they train "
                          f"masked, at dense cost): {e}", stacklevel=2)
            self.compact = False
            return []
        optimizer = self.model.optimizer
        if not getattr(optimizer, "built", False):
            # Built on the dense kernels first (as its first step would), so that compaction
            # swaps their state and registers it for saving in the kernel's layout: a
            # checkpoint then loads into the uncompacted model.
            with _convert._strategy_scope(self.model):
                optimizer.build(self.model.trainable_variables)
        return _convert.compact_layers(
            self.model, [t for t in self._targets if isinstance(t, keras.layers.Layer)],
            block=self._compact_block)

    def init_masks(self):
        """Give every target a random mask at its density (seeded), pruned weights zeroed;
        with `rescale_init`, the kept weights of each product target (not lookup tables)
        multiplied by 1 / sqrt(density)."""
        was_compacted = self._decompact(self._targets)
        for i, (t, d) in enumerate(zip(self._targets, self.layer_densities())):
            mask = self._random_mask(tuple(t.mask.shape), d, _dst.rng(self.seed, 0, 0, i))
            with _base.retrace_after():  # retraced below if a compute choice changed
                t.set_mask(mask)
            kernel = _kernel_of(t)
            if self.rescale_init and 0 < d < 1 and not isinstance(t, _TableTarget):
                # Sparsity-aware initialization (Evci et al. 2022, "Gradient flow in sparse
                # neural networks"): a unit keeps about density * fan_in of its inputs, so
                # its pre-activation variance is the dense initializer's times density;
                # 1 / sqrt(density) gives it back. Pruned entries are zero either way.
                kernel.assign(kernel * np.asarray(1.0 / np.sqrt(d), kernel.dtype))
            zero_optimizer_state(self._optimizer(), kernel, np.flatnonzero(~mask))
        if was_compacted:
            _convert._retrace(self.model)
        _convert._retrace_if_stale(self.model)

    # ---- updates ------------------------------------------------------------------------

    def _grow_scores(self, step):
        """Per target, the scores of its inactive entries (None: grow at random)."""
        return [None] * len(self._targets)

    def update_masks(self, step):
        """Move weights at `step`: per target, drop the drop_fraction(step) active weights of
        smallest magnitude and grow as many inactive ones; grown weights and their optimizer
        state start at zero, kept weights keep theirs. Returns the number of weights moved."""
        fraction = _dst.drop_fraction_at(step, self.drop_fraction, self._end, self.decay)
        if fraction <= 0:
            return 0
        start = time.perf_counter()
        # Compacted CSC layers move in place (no new variables, no retrace); others (block
        # storage) are decompacted and compacted again, which carries the state as well.
        decompacted = self._decompact([t for t in self._targets
                                       if not _in_place(t, self._compact_block)])
        self._kernels = {}
        scores = self._grow_scores(step)
        optimizer = self._optimizer()
        per_layer = {}
        for i, (t, score) in enumerate(zip(self._targets, scores)):
            in_place = _in_place(t, self._compact_block)
            weights = self._kernels.pop(id(t), None)
            if weights is None:
                weights = _dense_kernel(t)
            mask = keras.ops.convert_to_numpy(t.mask) != 0
            new_mask, dropped, grown = self._drop_grow(weights, mask, fraction,
                                                       _dst.rng(self.seed, step, 0, i), score)
            if len(grown) and in_place:
                with _convert._strategy_scope(self.model):
                    move_compacted(t, new_mask, optimizer)
            elif len(grown):
                kernel = _kernel_of(t)
                # Grown weights start at zero (they are, a pruned weight is kept at zero; said
                # here so that nothing else needs to hold for it).
                flat = np.array(weights).reshape(-1)
                flat[grown] = 0
                kernel.assign(flat.reshape(weights.shape))
                with _base.retrace_after():  # retraced below if a compute choice changed
                    t.set_mask(new_mask)
                # A layer trained masked (not compacted) has optimizer state at its pruned
                # entries (their gradient is not zero): a grown weight's state starts at zero.
                zero_optimizer_state(optimizer, kernel, np.concatenate([dropped, grown]))
            per_layer[t.name] = len(grown)
        self._kernels = {}
        moved = int(sum(per_layer.values()))
        compacted = self._compact_all()
        if decompacted and not compacted:
            _convert._retrace(self.model)
        _convert._retrace_if_stale(self.model)
        self._moved_since_epoch += moved
        self.updates.append(dict(step=step, fraction=fraction, moved=moved,
                                 sparsity=self.overall_sparsity(), layers=per_layer,
                                 seconds=time.perf_counter() - start))
        return moved

    def overall_sparsity(self):
        """Fraction of the targets' entries that are pruned (weighted by size)."""
        total = sum(int(np.prod(t.mask.shape)) for t in self._targets)
        pruned = sum(float(t.sparsity) * int(np.prod(t.mask.shape)) for t in self._targets)
        return pruned / total if total else 0.0


class SET(_DynamicSparsity):
    """Sparse Evolutionary Training (Mocanu et al. 2018): sparse from the first step; every
    `update_every` steps, per layer, drop the smallest-magnitude active weights and grow as
    many at random.

    Same arguments as `RigL` except `data` and `batch_size` (SET needs no gradient).

    Example:
        >>> model.fit(x, y, epochs=10, callbacks=[sparsekeras.callbacks.SET(sparsity=0.9,
        ...                                                                  seed=0)])
    """


class RigL(_DynamicSparsity):
    """Rigged Lottery (Evci et al. 2020): dynamic sparse training that regrows where the dense
    gradient is largest.

    At the start of `fit` (step 0), each prunable layer (every target of
    `prunable_targets(model)`) gets a random mask at its density, and the SparseDense layers on
    the sparse path are compacted: they train their kept values only, on the sparse kernels,
    from the first step (layers that cannot compact train masked, at dense cost). Every
    `update_every` steps until `end_step`, per layer, the drop_fraction(t) active weights of
    smallest magnitude are dropped and as many inactive ones grown, by the magnitude of the
    dense gradient of the loss on one batch of `data` (computed only at update steps).
    Each layer's number of kept weights never changes, so the sparsity stays exactly at its
    initial value. Grown weights start at zero with zeroed optimizer state; kept weights keep
    their values and state exactly (the compacted state goes through decompact/compact).

    Why `data`: Keras callbacks do not see the training batch, and computing the dense
    gradient inside the compiled train step would put a dense backward pass (the very cost
    compaction removes) into every traced step. The callback instead draws a batch from `data`
    at update steps (seeded) and takes the gradient eagerly in inference mode (so that
    BatchNormalization statistics are not updated): the same estimator as the training batch.

    Args:
        sparsity: overall fraction of zeros over the targets, in [0, 1).
        distribution: "erk" (Erdős–Rényi-Kernel: density proportional to
            sum(shape) / prod(shape), scaled so the overall sparsity is the target, layers
            capped at 1) or "uniform" (every layer at `sparsity`).
        update_every: steps between mask updates.
        drop_fraction: fraction of the active weights moved at step 0 of the decay.
        end_step: no update from this optimizer step on (default: 75% of epochs * steps of
            the fit, which must then have a known length).
        seed: seed of every random decision (initial masks, ties, SET's growth, the gradient
            batch): each decision depends on (seed, step) only, so a resumed fit decides as an
            uninterrupted one. None: drawn once when the callback is made.
        decay: "cosine" (RigL's drop_fraction / 2 * (1 + cos(pi t / end_step))) or "constant".
        exclude: names of layers (or targets) left alone: dense, out of the sparsity budget
            (e.g. the first layer, as some RigL setups keep it dense).
        compact: compact the SparseDense layers (needs an elementwise optimizer: SGD, Adam,
            ...; with another the callback warns and trains masked).
        log_dir: TensorBoard directory for `sparsity`, `moved` (and per layer with log_layers).
        log_layers: also log each layer's sparsity at epoch end.
        granularity: "unstructured" (entries move one by one) or "block": masks are made of
            whole `block_shape` blocks of each weight's 2-D view (a Dense kernel's
            (n_in, n_out), a convolution's (k_h * k_w * c_in, c_out)) and whole blocks move,
            dropped by smallest L2 norm of their weights, grown (RigL) by largest L2 norm of
            their dense gradient; each layer keeps its number of blocks exactly. The
            SparseDense layers are then compacted in the (1, c) block-CSC storage (the
            faster kernels for c = 4, 8).
        block_shape: (r, c) with granularity="block", e.g. (1, 8); r must divide n_in
            (k_h * k_w * c_in) and c divide n_out of every target (else ValueError naming the
            layer).
        rescale_init: at step 0, multiply each layer's kept weights by 1 / sqrt(density)
            (sparsity-aware initialization, Evci et al. 2022): a unit that keeps a fraction
            d of its inputs then starts with the pre-activation variance of the dense
            initializer, instead of d times it (which shrinks the signal layer after layer
            at 0.9 sparsity). Lookup tables (embeddings) are not rescaled. False (the
            default, as in the RigL paper) keeps the initializer's values on the kept
            entries. Measured in benchmarks/bench_dst.py: it helps a small CNN without
            normalization at a high learning rate and hurts a noisy-input MLP, so it is
            a choice to validate, not a default.
        data: (x, y) or (x, y, sample_weight) arrays, or a tf.data.Dataset / iterable of such
            batches, to take the dense gradient on. Required.
        batch_size: rows drawn from array `data` per gradient.

    Logs: `sparsity` (every batch and epoch) and `moved` (weights moved during the epoch);
    `callback.updates` keeps one record per update (step, fraction, moved, per-layer
    moved, seconds: the update's wall-clock, the retrace of the step excluded).

    Example:
        >>> rigl = sparsekeras.callbacks.RigL(sparsity=0.9, update_every=100, seed=0,
        ...                                   data=(x_train, y_train))
        >>> model.fit(x_train, y_train, epochs=10, batch_size=128, callbacks=[rigl])
        >>> stored = sparsekeras.strip(model)   # the compact inference model
    """

    _grows_by_gradient = True

    def __init__(self, sparsity=0.9, distribution="erk", update_every=100, drop_fraction=0.3,
                 end_step=None, seed=None, decay="cosine", exclude=(), compact=True,
                 log_dir=None, log_layers=False, data=None, batch_size=256,
                 granularity="unstructured", block_shape=(1, 1), rescale_init=False):
        super().__init__(sparsity=sparsity, distribution=distribution, update_every=update_every,
                         drop_fraction=drop_fraction, end_step=end_step, seed=seed, decay=decay,
                         exclude=exclude, compact=compact, log_dir=log_dir, log_layers=log_layers,
                         granularity=granularity, block_shape=block_shape,
                         rescale_init=rescale_init)
        if data is None:
            raise ValueError("RigL needs `data` to take the dense gradient on at update steps "
                             "(Keras callbacks do not see the training batch): pass "
                             "data=(x_train, y_train) or a tf.data.Dataset. Received: data=None")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected `batch_size` a positive integer. "
                             f"Received: batch_size={batch_size!r}")
        self.data = data
        self.batch_size = batch_size
        self._iterator = None

    def _batch(self, step):
        data = self.data
        if isinstance(data, tuple) and len(data) in (2, 3) and all(
                hasattr(a, "shape") or a is None for a in data):
            n = int(data[0].shape[0])
            idx = np.sort(_dst.rng(self.seed, step, 1).choice(
                n, size=min(self.batch_size, n), replace=False))
            return tuple(None if a is None else np.asarray(a)[idx] for a in data) + (None,) * (
                3 - len(data))
        if self._iterator is None:
            self._iterator = iter(data)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = iter(data)
            batch = next(self._iterator)
        batch = tuple(batch)
        if len(batch) not in (2, 3):
            raise ValueError("RigL `data` must yield (x, y) or (x, y, sample_weight) batches. "
                             f"Received a batch of {len(batch)} items")
        return batch + (None,) * (3 - len(batch))

    def _grow_scores(self, step):
        """|dense gradient| of the loss w.r.t. each target's weight, on one batch."""
        x, y, sample_weight = self._batch(step)
        layers = {id(_target_layer(t)): _target_layer(t) for t in self._targets}.values()
        # A compacted layer computes with its kept values only: it is probed through a dense
        # product with its kernel as a watched tensor. The others run their dense path: the
        # sparse path's kernel gradient may be given on the pattern only (convolutions).
        probes = {}
        for t in self._targets:
            if _in_place(t, self._compact_block):
                self._kernels[id(t)] = _dense_kernel(t)  # kept for update_masks
                probes[id(t)] = tf.constant(self._kernels[id(t)])
        forced = [layer for layer in layers if isinstance(layer, _PrunableKernel)
                  and not _in_place(layer, self._compact_block) and layer.compute != "dense"]
        saved = [layer.compute for layer in forced]
        for layer in forced:
            layer.compute = "dense"
        for t in self._targets:
            if id(t) in probes:
                t.call = _probe_call(t, probes[id(t)])
        sources = [probes[id(t)] if id(t) in probes else _kernel_of(t) for t in self._targets]
        try:
            with tf.GradientTape() as tape:  # trainable variables are watched
                for p in probes.values():
                    tape.watch(p)
                y_pred = self.model(x, training=False)
                loss = self.model._compute_loss(x=x, y=y, y_pred=y_pred,
                                                sample_weight=sample_weight, training=False)
            grads = tape.gradient(loss, sources)
        finally:
            for layer, mode in zip(forced, saved):
                layer.compute = mode
            for t in self._targets:
                if id(t) in probes:
                    del t.call  # the class's call again
        return [None if g is None else _abs_in_place(g) for g in grads]
