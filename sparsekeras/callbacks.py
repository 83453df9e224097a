"""Keras callbacks: gradual magnitude pruning during `model.fit`.

The callback only orchestrates: the schedule (`sparsekeras.schedules`) says when and how much,
the mask maths (`sparsekeras._masks`) say which weights, and the layers apply their masks inside
the training step (as a kernel constraint), so every checkpoint is sparse.
"""
import warnings

import numpy as np
import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from sparsekeras import _masks
from sparsekeras import _compact, _convert, _groups
from sparsekeras.layers import _base
from sparsekeras.layers._base import _WeightMaskConstraint

__all__ = ["GradualPruning", "ActivationSparsity", "prunable_layers", "prunable_targets",
           "RigL", "SET"]

_GRANULARITIES = ("unstructured", "block", "n:m", "channel", "head")

prunable_targets = _convert.prunable_targets


def prunable_layers(model):
    """Every layer of `model` with something to prune, nested layers included, in a stable
    order (a layer with several prunable weights appears once; see `prunable_targets`)."""
    found, seen = [], set()
    for target in prunable_targets(model):
        layer = getattr(target, "layer", target)
        if id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


class _SparsityMetric(keras.metrics.Metric):
    """The values `GradualPruning` reports (`sparsity`, `sparsity/<layer>`), as a metric of the
    model: Keras builds each batch's and each epoch's logs from the model's metrics before any
    callback runs, so `keras.callbacks.TensorBoard` (CSVLogger, History...) records them
    whatever the order of the callbacks. The callback sets the values (eagerly, after it prunes);
    the traced step only reads them. Not accumulated, not reset, not saved with the model.

    Reported by the training step only: `active` is on while a training batch runs (the train
    function is traced then), off otherwise, so that `evaluate` (fit's validation, or a user's
    callback unpacking `loss, acc = model.evaluate(...)`) returns the compiled metrics only."""

    def __init__(self, names):
        super().__init__(name="sparsekeras_sparsity")
        self.names = tuple(names)
        self.active = False
        # Keras variable names cannot hold the "/" of the log names: numbered.
        self._values = [self.add_variable(shape=(), initializer="zeros", name=f"value_{i}")
                        for i in range(len(self.names))]

    def update_state(self, *args, **kwargs):
        pass

    def reset_state(self):
        pass  # Keras resets metrics at every epoch: these are set, not accumulated

    def set(self, values):
        for name, var in zip(self.names, self._values):
            var.assign(float(values.get(name, 0.0)))

    def result(self):
        if not self.active:
            return {}
        return {name: var.value for name, var in zip(self.names, self._values)}


class GradualPruning(keras.callbacks.Callback):
    """Prunes the model's `SparseDense` layers by weight magnitude while it trains.

    Args:
        schedule: a `sparsekeras.schedules.PruningSchedule` (ConstantSparsity, PolynomialDecay),
            evaluated at the optimizer's iteration count, so a fit resumed from a checkpoint
            continues the schedule where it stopped.
        granularity: "unstructured", "block" (blocks of `block_shape` over (input, output)),
            "n:m" (N of every M consecutive inputs kept, `n_m=(2, 4)`), "channel" (whole
            output units), or "head" (whole attention heads of `SparseMultiHeadAttention`
            layers: query, key, value and output projections together, scored by the sum
            of their RMS norms; needs a Sequential or Functional model, or a subclassed
            one whose call can be traced; keras_hub's TransformerEncoder is followed).
        block_shape: (rows, cols) of a block, for granularity="block".
        n_m: (n, m), for granularity="n:m" (its sparsity is 1 - n/m, whatever the schedule).
        scope: "layer" (each layer pruned to the target) or "global" (one magnitude threshold
            across layers, the total reaching the target).
        min_layer_density: with scope="global", the fraction of its weights (at least one)
            every layer keeps, whatever the global ranking: a layer of small weights would
            otherwise be pruned to 100% and disconnect the network. The budget such a layer
            cannot take is spread over the others, so the total still reaches the target
            where it can; the callback warns (once per layer) when a layer is held at the
            floor. Default 0.02; 0 disables it. Not used with scope="layer".
        log_dir: if given, per-layer and overall sparsity go to TensorBoard scalars there.
        log_layers: also put each layer's sparsity into `logs` (progress bar, History).
        compact: once the schedule has ended (the step after its `end_step`), compact every
            SparseDense layer that computes through the sparse kernels
            (`SparseDense.compact`): it then trains its nonzero values only, so the rest of the
            fit (fine-tuning at the final sparsity) steps several times faster. Needs an
            elementwise optimizer (SGD, Adam, AdamW, RMSprop, ...: the optimizer's state is
            carried over exactly); with another, the callback warns and does not compact. A
            later prune that changes a compacted layer's mask decompacts it first.
        coupled: with granularity="channel", prune groups of coupled channels found from the
            model's graph (`sparsekeras._groups`: a layer's units with the residual `Add`s,
            `Concatenate`s, BatchNormalizations and depthwise convolutions they pass
            through), one score per channel (the sum over the group's members of their
            RMS norms), so that `sparsekeras.shrink` can remove them. The biases, BatchNorm
            scales and offsets of pruned channels are zeroed and held at zero (a constraint
            on those variables), so a pruned channel is exactly zero; the constraints are
            not saved with the model, so each fit re-establishes them at its first batch for
            the channels whose masks are already empty (a fit resumed from a `.keras` file
            keeps them at zero, even after the schedule has ended). Groups bounded by
            the model's output, a LayerNormalization or a layer the analysis does not
            follow are not pruned (a warning names them). `sparsity` is then the fraction
            of prunable channels; with scope="global" each group keeps at least
            `min_layer_density` of its channels (one at least). SparseSeparableConv
            (pointwise filters) and SparseEmbedding (table columns) groups are pruned too.
            Needs a Sequential or Functional model, or a subclassed one whose call can be
            traced (`sparsekeras._groups.graph_model`). Default False: each layer's columns pruned on their own (which
            `shrink` can remove only where nothing couples them). Always on for "head".

    Logs: `sparsity` (overall, weighted by size) and `sparsity/<layer name>` per layer.
    """

    def __init__(self, schedule, granularity="unstructured", block_shape=(1, 1), n_m=(2, 4),
                 scope="layer", log_dir=None, log_layers=True, compact=True,
                 min_layer_density=0.02, coupled=False):
        super().__init__()
        if granularity not in _GRANULARITIES:
            raise ValueError(f"Expected `granularity` in {_GRANULARITIES}. "
                             f"Received: granularity={granularity!r}")
        if not isinstance(coupled, bool):
            raise ValueError(f"`coupled` must be True or False. Received: coupled={coupled!r}")
        if coupled and granularity not in ("channel", "head"):
            raise ValueError("`coupled=True` applies to granularity='channel' (and 'head'). "
                             f"Received: granularity={granularity!r}")
        self.coupled = coupled or granularity == "head"
        self._analysis = None
        self._holds = {}  # id(variable) -> the keep variable of its constraint
        if scope not in ("layer", "global"):
            raise ValueError(f"Expected `scope` in ('layer', 'global'). Received: scope={scope!r}")
        if not callable(schedule):
            raise ValueError(f"`schedule` must be a PruningSchedule. Received: schedule={schedule!r}")
        if not 0.0 <= float(min_layer_density) <= 1.0:
            raise ValueError("Expected `min_layer_density` in [0, 1]. "
                             f"Received: min_layer_density={min_layer_density}")
        self.min_layer_density = float(min_layer_density)
        self._floored = set()  # names of the layers already warned about
        self.schedule = schedule
        self.granularity = granularity
        self.block_shape = tuple(block_shape)
        self.n_m = tuple(n_m)
        self.scope = scope
        self.log_dir = log_dir
        self.log_layers = log_layers
        self.compact = bool(compact)
        self._layers = []
        self._writer = None
        self._last_step = -1

    # ---- Keras hooks --------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._complete = False
        if self.coupled:
            _groups.check_graph(self.model, f"GradualPruning(granularity={self.granularity!r})")
        self._layers = self._targets()
        if not self._layers and not self._lazy_layers():
            raise ValueError("GradualPruning found no prunable layer in the model: use "
                             "sparsekeras.layers.SparseDense (or sparsekeras.sparsify(model)).")
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        # Steps before this fit are not replayed: a resumed fit starts from the loaded masks.
        # The step is read when the first batch starts, not here: a callback listed after this
        # one (BackupAndRestore) may restore the optimizer's iterations in its own
        # on_train_begin, and the restored step decides what this fit prunes first.
        self._last_step = None
        self._metric = None
        self._publish()

    def _publish(self, values=None):
        """Put the sparsity values into the model's metrics (see _SparsityMetric); a new set of
        names (a lazily built model's layers after its first step) replaces the metric and
        retraces the step, which returns the metrics it was traced with."""
        values = self.sparsity_logs() if values is None else values
        model = self.model
        if self._metric is None or self._metric.names != tuple(values):
            model._metrics[:] = [m for m in model._metrics
                                 if not isinstance(m, _SparsityMetric)]
            active = self._metric is not None and self._metric.active
            with _convert._strategy_scope(model):
                self._metric = _SparsityMetric(values)
            self._metric.active = active
            model._metrics.append(self._metric)
            _convert._retrace(model)
        self._metric.set(values)

    def _unpublish(self):
        if getattr(self, "_metric", None) is not None:
            self.model._metrics[:] = [m for m in self.model._metrics if m is not self._metric]
            self._metric = None
            _convert._retrace(self.model)  # the traced steps returned the metric

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self._last_step is None:  # the first batch of this fit (see on_train_begin)
            self._last_step = step - 1
            if self.coupled and self._restore_holds():
                _convert._retrace(self.model)
            self._publish()  # the masks may have been restored since on_train_begin
        if self._metric is not None:
            self._metric.active = True  # until the batch ends (see _SparsityMetric)
        if step == self._last_step:
            return
        # With steps_per_execution > 1, Keras calls this once per execution: a pruning step of
        # the schedule that fell inside the last execution is done now (to the target at this
        # step), so that the final sparsity is reached.
        first = self._last_step + 1 if self._last_step < step else step
        self._last_step = step
        should_prune = any(self.schedule(t)[0] for t in range(max(first, step - 100000), step + 1))
        sparsity = self.schedule(step)[1]
        changed = self.prune(sparsity) if should_prune else False
        if self.compact and self._schedule_over(step):
            self._compact_layers()
        if changed:  # a layer was decompacted: the traced step trains its values no more
            _convert._retrace(self.model)
        if should_prune or not self._complete or self._metric is None:
            self._publish()

    def on_train_batch_end(self, batch, logs=None):
        if getattr(self, "_metric", None) is not None:
            self._metric.active = False
        if logs is not None:
            logs.update(self.sparsity_logs())

    def on_epoch_end(self, epoch, logs=None):
        values = self.sparsity_logs()
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            step = int(self.model.optimizer.iterations.numpy())
            # tf.summary.scalar needs the tensorboard package; the core writer does not. The
            # metadata marks the values as scalars for TensorBoard's plugin.
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            with self._writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.write(name, tf.constant(value, tf.float32), metadata=metadata)
            self._writer.flush()

    def on_train_end(self, logs=None):
        # An optimizer with use_ema=True has just overwritten the kernels with their moving
        # averages, which remember the weights from before they were pruned: mask them again.
        # (A compacted layer's values hold its kept weights only.)
        if getattr(_compact.base_optimizer(self.model.optimizer), "use_ema", False):
            for layer in self._targets():
                if not getattr(layer, "compacted", False):
                    kernel = (layer._kernel_variable() if hasattr(layer, "_kernel_variable")
                              else layer.kernel)
                    kernel.assign(kernel * keras.ops.cast(layer.mask, kernel.dtype))
        if self._writer is not None:
            self._writer.flush()
        self._unpublish()

    # ---- pruning ------------------------------------------------------------------------

    def _lazy_layers(self):
        """Prunable layers not built yet (a subclassed model builds them in its first step)."""
        return [layer for layer in self.model._flatten_layers(include_self=True, recursive=True)
                if hasattr(layer, "pruning_targets") and not layer.built
                and getattr(layer, "prunable", True)]

    def _targets(self):
        """The (weight, mask) pairs to prune now: found again while some layer is unbuilt."""
        if not getattr(self, "_complete", False):
            self._layers = prunable_targets(self.model)
            self._complete = all(t.built for t in self._layers) and not self._lazy_layers()
        return self._layers

    def _mask_kwargs(self):
        return dict(granularity=self.granularity, block_shape=self.block_shape, n_m=self.n_m)

    def _schedule_over(self, step):
        end = getattr(self.schedule, "end_step", None)
        return isinstance(end, int) and 0 <= end < step

    def _compact_layers(self):
        """Compact the SparseDense layers on the sparse path (and retrace the step)."""
        try:
            _compact.check_optimizer(self.model.optimizer)
        except ValueError as e:
            warnings.warn(f"GradualPruning does not compact the layers: {e}", stacklevel=2)
            self.compact = False
            return
        _convert.compact_layers(self.model, [t for t in self._targets()
                                             if isinstance(t, keras.layers.Layer)])

    def prune(self, sparsity):
        """Prune every layer to `sparsity` now (masks only shrink: pruned weights stay pruned).

        A compacted layer whose mask would change is decompacted first (its optimizer state
        scattered back). Returns whether a layer was decompacted (the traced step is stale).
        A mask that changes a layer's compute choice (see `SparseDense.switch_sparsity`)
        retraces the model's steps here."""
        with _base.retrace_after():
            stale = (self._prune_coupled(sparsity) if self.coupled
                     else self._prune_layers(sparsity))
        if not stale:
            _convert._retrace_if_stale(self.model)
        return stale

    def _prune_layers(self, sparsity):
        # A layer of a subclassed model is built by its first call (the first step).
        layers = [t for t in self._targets() if t.built]
        # A layer may present its kernel in another shape for scoring (a depthwise kernel as
        # (kh, kw, 1, channels * multiplier), so "channel" prunes whole depthwise filters).
        view = [getattr(layer, "pruning_view", np.asarray) for layer in layers]
        kernels = [v(keras.ops.convert_to_numpy(layer.kernel)) for v, layer in zip(view, layers)]
        previous = [v(keras.ops.convert_to_numpy(layer.mask)) != 0 for v, layer in zip(view, layers)]
        if self.scope == "global":
            masks = self._global_masks(kernels, sparsity, previous,
                                       [getattr(t, "name", "?") for t in layers])
        else:
            masks = [_masks.magnitude_mask(k, sparsity, previous_mask=p, **self._mask_kwargs())
                     for k, p in zip(kernels, previous)]
        decompacted = False
        for layer, mask, prev in zip(layers, masks, previous):
            if getattr(layer, "compacted", False):
                if np.array_equal(mask != 0, prev):
                    continue  # same pattern: stays compacted
                with _convert._strategy_scope(self.model):
                    layer.decompact(_convert._built_optimizer(self.model))
                decompacted = True
            layer.set_mask(layer.from_pruning_view(mask) if hasattr(layer, "from_pruning_view")
                           else mask)
        return decompacted

    def _prune_coupled(self, sparsity):
        """Prune coupled channel groups or heads (see `coupled`); returns whether the traced
        step is stale (a layer decompacted, or a new hold constraint)."""
        if self._analysis is None:
            self._analysis = _groups.analyze(self.model)
            self._warned_skips = False
        masks, holds, skipped = _groups.prune_plan(
            self._analysis, sparsity, self.granularity, self.scope, self.min_layer_density)
        if not self._warned_skips:
            self._warned_skips = True
            fixed = [(g, [self._analysis.label(layer)
                          for layer, role, _ in self._analysis.members(g)
                          if role in ("out", "heads")]) for g in self._analysis.groups
                     if g.fixed and g.kind == ("head" if self.granularity == "head"
                                               else "channel")]
            notes = [f"{', '.join(names)} ({'; '.join(g.fixed)})" for g, names in fixed
                     if names and "model output" not in g.fixed]  # outputs: never pruned
            notes += [f"{', '.join(names)} ({reason})" for names, reason in skipped]
            if notes:
                warnings.warn(f"GradualPruning(granularity={self.granularity!r}, coupled): "
                              "these layers' " + ("heads" if self.granularity == "head"
                                                  else "channels") + " are not pruned: "
                              + "; ".join(notes[:10]) + (" ..." if len(notes) > 10 else ""),
                              stacklevel=3)
            kind = "head" if self.granularity == "head" else "channel"
            if not any(g.kind == kind and not g.fixed for g in self._analysis.groups):
                warnings.warn(f"GradualPruning(granularity={self.granularity!r}, coupled) "
                              f"found no prunable {kind} group in model {self.model.name!r}: "
                              "it prunes nothing.", stacklevel=3)
        stale = False
        for layer, mask in masks.values():
            prev = _groups._np(layer.mask) != 0
            if np.array_equal(mask, prev):
                continue
            if getattr(layer, "compacted", False):
                with _convert._strategy_scope(self.model):
                    layer.decompact(_convert._built_optimizer(self.model))
                stale = True
            layer.set_mask(mask)
        combined = {}
        for var, keep in holds:
            k = np.broadcast_to(keep, tuple(var.shape))
            if id(var) in combined:
                combined[id(var)] = (var, combined[id(var)][1] & k)
            else:
                combined[id(var)] = (var, k.copy())
        for var, keep in combined.values():
            stale |= self._hold(var, keep)
        return stale

    def _restore_holds(self):
        """Zero and hold again the biases, BatchNorm scales and offsets of the channels (heads)
        already pruned: the masks are saved with the model, the holds (constraints on those
        variables) are not, so a fit resumed from a `.keras` file or a checkpoint would let them
        drift (and `shrink` would keep those channels). Pruning to sparsity 0 prunes exactly
        the channels whose masks are already empty. Returns whether the step is stale."""
        return self._prune_coupled(0.0)

    def _hold(self, var, keep):
        """Zero `var` where `keep` is False and keep it there after every optimizer step (a
        constraint reading a keep variable). Returns True when the constraint is new."""
        held = self._holds.get(id(var))
        new = held is None
        if new:
            with tf.init_scope(), _convert._strategy_scope(self.model):
                held = tf.Variable(np.ones(tuple(var.shape), np.float32), trainable=False,
                                   name="channel_keep")
            self._holds[id(var)] = held
            var.constraint = _WeightMaskConstraint(held, var.constraint)
        current = held.numpy() != 0
        held.assign((current & keep).astype(np.float32))
        var.assign(var * keras.ops.cast(held, var.dtype))
        return new

    def _global_masks(self, kernels, sparsity, previous, names):
        """One global magnitude threshold, every layer keeping at least min_layer_density of
        its weights: a layer the ranking would push below the floor is pruned to the floor on
        its own, and the rest of the budget is ranked again over the other layers."""
        kwargs = self._mask_kwargs()
        floor = self.min_layer_density
        if floor <= 0 or self.granularity == "n:m":  # n:m has a fixed density per layer
            return _masks.global_magnitude_masks(kernels, sparsity, previous_mask=previous,
                                                 **kwargs)
        sizes = [int(np.prod(k.shape)) for k in kernels]
        keep_min = [max(1, int(np.ceil(floor * n))) for n in sizes]
        target_pruned = sparsity * sum(sizes)
        masks = [None] * len(kernels)
        free = list(range(len(kernels)))
        while free:
            held = [i for i in range(len(kernels)) if i not in free]
            pruned_held = sum(sizes[i] - int(np.count_nonzero(masks[i])) for i in held)
            rest = sum(sizes[i] for i in free)
            s = min(1.0, max(0.0, (target_pruned - pruned_held) / rest)) if rest else 0.0
            found = _masks.global_magnitude_masks([kernels[i] for i in free], s,
                                                  previous_mask=[previous[i] for i in free],
                                                  **kwargs)
            low = [i for i, m in zip(free, found) if np.count_nonzero(m) < keep_min[i]]
            if not low:
                for i, m in zip(free, found):
                    masks[i] = m
                break
            for i in low:  # to the floor on its own (masks only shrink: never above previous)
                masks[i] = _masks.magnitude_mask(kernels[i], 1.0 - keep_min[i] / sizes[i],
                                                 previous_mask=previous[i], **kwargs)
                if names[i] not in self._floored:
                    self._floored.add(names[i])
                    warnings.warn(
                        f"GradualPruning(scope='global'): layer {names[i]!r} is held at "
                        f"min_layer_density={floor} (it keeps {np.count_nonzero(masks[i])} of "
                        f"{sizes[i]} weights); the global ranking would prune it further.",
                        stacklevel=3)
            free = [i for i in free if i not in low]
        return masks

    def sparsity_logs(self):
        layers = [t for t in self._targets() if t.built]
        total = sum(int(np.prod(layer.mask.shape)) for layer in layers)
        pruned = sum(layer.sparsity * int(np.prod(layer.mask.shape)) for layer in layers)
        logs = {"sparsity": pruned / total if total else 0.0}
        if self.log_layers:
            for layer, name in zip(layers, _convert.target_names(self.model, layers)):
                logs[f"sparsity/{name}"] = layer.sparsity
        return logs


class ActivationSparsity(keras.callbacks.Callback):
    """Reports, at each epoch end, the fraction of (near-)zero activations of chosen layers.

    Args:
        data: a sample of inputs (array or tensor) the activations are measured on.
        layers: names of the layers to watch (default: every layer with weights, except the last).
        threshold: |activation| <= threshold counts as zero (default 0: exact zeros, as ReLU gives).
        batch_size: batch size of the measurement.

    Logs `activation_sparsity/<layer>` (shown by the progress bar and kept in History). Works for
    Sequential and Functional models (it reads the layers' symbolic outputs).
    """

    def __init__(self, data, layers=None, threshold=0.0, batch_size=256):
        super().__init__()
        if float(threshold) < 0:
            raise ValueError(f"Expected `threshold` >= 0. Received: threshold={threshold}")
        self.data = data
        self.layer_names = None if layers is None else list(layers)
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)
        self._probe = None
        self._names = []

    def _build_probe(self):
        model = self.model
        if not hasattr(model, "inputs") or not model.inputs:
            raise ValueError("ActivationSparsity needs a Sequential or Functional model (with "
                             "symbolic inputs) to read layer outputs.")
        if self.layer_names is None:
            chosen = [layer for layer in model.layers[:-1] if layer.weights]
        else:
            by_name = {layer.name: layer for layer in model.layers}
            missing = [n for n in self.layer_names if n not in by_name]
            if missing:
                raise ValueError(f"ActivationSparsity: no layer named {missing} in the model. "
                                 f"Received: layers={self.layer_names}")
            chosen = [by_name[n] for n in self.layer_names]
        self._names = [layer.name for layer in chosen]
        self._probe = keras.Model(model.inputs, [layer.output for layer in chosen])

    def measure(self):
        """{layer name: fraction of activations with |a| <= threshold} on `data`."""
        if self._probe is None:
            self._build_probe()
        outputs = self._probe.predict(self.data, batch_size=self.batch_size, verbose=0)
        if len(self._names) == 1:
            outputs = [outputs]
        return {name: float(np.mean(np.abs(out) <= self.threshold))
                for name, out in zip(self._names, outputs)}

    def on_epoch_end(self, epoch, logs=None):
        values = self.measure()
        if logs is not None:
            for name, value in values.items():
                logs[f"activation_sparsity/{name}"] = value


from sparsekeras._dst_callbacks import RigL, SET  # noqa: E402  (dynamic sparse training)
