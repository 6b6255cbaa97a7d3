"""What a rule sees while channels propagate: the node, its values, and the element store."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from gdp_graph.graph.channels import (LABEL_DTYPE, NULL, UNTRACKED, Chan, Track, expand_labels, infer_tracks,
                                      map_structure)
from gdp_graph.graph.elements import ElementStore
from gdp_graph.graph.groups import Member
from gdp_graph.graph.meta import VALUE


def target_name(node: fx.Node) -> str:
    """A short readable name of a node's target."""
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


class RuleContext:
    """Per-node view given to ``OpRule.propagate``."""

    def __init__(self, node: fx.Node, module: Optional[nn.Module], store: ElementStore,
                 chans: Mapping[fx.Node, Any]):
        self.node = node
        self.module = module
        self.store = store
        self._chans = chans
        self.out = node.meta.get(VALUE)  #: the node's value on the example inputs

    # -- arguments ------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        stack = self.node.meta.get("nn_module_stack")  # torch.export: the module it was called in
        inside = f" in {list(stack.values())[-1][0]}" if stack and list(stack.values())[-1][0] else ""
        return f"node '{self.node.name}' ({target_name(self.node)}){inside}"

    def arg(self, index: int, name: Optional[str] = None, default: Any = None) -> Any:
        """A raw argument (fx Node or literal) by position or keyword."""
        if index < len(self.node.args):
            return self.node.args[index]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    def value(self, a: Any) -> Any:
        """The concrete value of an argument on the example inputs."""
        if isinstance(a, fx.Node):
            return a.meta[VALUE]
        return pytree.tree_map(_concrete, a) if isinstance(a, (list, tuple, dict, slice)) else a

    def chan(self, a: Any) -> Any:
        """The channel description of an argument (a :class:`Chan`, or nested for tuples)."""
        if isinstance(a, fx.Node):
            return self._chans.get(a, UNTRACKED)
        if isinstance(a, (list, tuple)):
            return tuple(self.chan(x) for x in a)
        return UNTRACKED

    def tensor_args(self) -> list[tuple[int, fx.Node]]:
        """(position, node) of every direct positional arg whose value is a tensor."""
        return [(i, a) for i, a in enumerate(self.node.args)
                if isinstance(a, fx.Node) and isinstance(a.meta.get(VALUE), torch.Tensor)]

    def all_input_chans(self) -> list[Chan]:
        from gdp_graph.graph.channels import flatten_chans
        return [c for a in pytree.tree_leaves((self.node.args, self.node.kwargs)) if isinstance(a, fx.Node)
                for c in flatten_chans(self._chans.get(a))]

    # -- element operations ---------------------------------------------------------------------
    def fresh(self, size: int, description: str) -> torch.Tensor:
        return self.store.new_space(size, self.node.name, description)

    def union(self, a: torch.Tensor, b: torch.Tensor, kind: Optional[str] = None) -> None:
        self.store.union(a, b)
        if kind:
            self.store.tag(a, kind)
            self.store.tag(b, kind)

    def freeze(self, chan_or_labels: Any, reason: str) -> None:
        for labels in _labels_of(chan_or_labels):
            self.store.freeze(labels, f"{reason} at {self.where}")

    def freeze_inputs(self, reason: str) -> None:
        for c in self.all_input_chans():
            self.freeze(c, reason)

    def mark_inexact(self, labels: torch.Tensor, reason: str) -> None:
        self.store.mark_inexact(labels, f"{reason} at {self.where}")

    def tag(self, labels: torch.Tensor, kind: str) -> None:
        self.store.tag(labels, kind)

    def member(self, labels: torch.Tensor, role: str, dim: int, param: Optional[str] = None) -> None:
        self.store.add_member(labels, Member(self.node.name, target_name(self.node), role, dim, param))

    def consume(self, arg: int, dim: int, labels: torch.Tensor, ndim: int) -> None:
        """Record that this node mixes the channels along ``dim`` of input ``arg``: a gate site."""
        self.member(labels, "consume", dim)
        self.store.add_site(self.node.name, arg, dim, ndim, labels)

    # -- common propagations --------------------------------------------------------------------
    def passthrough(self, index: int = 0) -> Chan:
        """Output channels equal input ``index``'s (shape-preserving, channel-wise ops)."""
        c = self.chan(self.arg(index))
        return c if isinstance(c, Chan) else UNTRACKED

    def movement(self, run: Callable[[Callable[[fx.Node], Any]], Any], inputs: Sequence[fx.Node],
                 kind: Optional[str] = None, overrides: Optional[dict[str, Chan]] = None,
                 positionwise: Sequence[int] = (), side_by_side: Optional[int] = None) -> Any:
        """Propagate by running the op on label tensors.

        ``run(sub)`` must compute the op with every tensor input node ``n`` replaced by
        ``sub(n)``. Each track of each input is run separately (others null) and the results
        merged; labels that collide at one position are unioned.

        ``positionwise`` names dims (the same in every input and output) that the op maps
        position to position whatever their size, e.g. every dim but the one a ``cat`` joins.
        Those that no track of a run covers are run at size 1 (every other input of a run is
        nulls): labels are constant along them, and a DenseNet's concatenations would otherwise
        run on every spatial position (a Swin-T's patch merging, on every position, once per
        channel track too).

        ``side_by_side``: the op places its inputs side by side along this dim (``cat``).
        When every input's only track is on that dim, no two inputs' channels can meet, so
        they run together, once: a DenseNet block's k-input concatenations were k runs each,
        quadratic in its depth. (Tracked on another dim, channels at one index do meet and are
        unioned, e.g. a ViT's class token concatenated to its patches.)
        """
        results: list[Any] = []
        lost: list[torch.Tensor] = []
        chans = {inp.name: (overrides or {}).get(inp.name) or self.chan(inp) for inp in inputs}

        def run_with(given: dict[str, Track]) -> None:
            shrink = set(positionwise) - {d for t in given.values() for d in t.dims}
            sub = functools.partial(_label_input, shrink, given)
            try:
                # first as broadcast views: views and permutes keep their stride-0 dims, so
                # nothing is materialized and infer_tracks reads them off the strides
                results.append(run(sub))
            except Exception:  # noqa: BLE001 - e.g. an in-place op or .view() on a broadcast
                results.append(run(functools.partial(sub, broadcast=False)))

        tracks = {name: c.tracks for name, c in chans.items() if isinstance(c, Chan) and c.tracks}
        if side_by_side is not None and tracks and all(ts[0].dims == (side_by_side,) and len(ts) == 1
                                                       for ts in tracks.values()):
            run_with({name: ts[0] for name, ts in tracks.items()})
        else:
            for name, ts in tracks.items():
                for track in ts:
                    run_with({name: track})
        if not results:
            return map_structure(lambda _: UNTRACKED, self.out)
        merged = map_structure(lambda _: [], self.out)
        self._collect(merged, results, lost)
        for labels in lost:
            self.freeze(labels, "channel used as a constant (picked by an integer index)")
        out = self._finish(merged, self.out, kind)
        return out

    def _collect(self, merged, results, lost) -> None:
        for res in results:
            self._collect_one(merged, res, lost)

    def _collect_one(self, merged, res, lost):
        if isinstance(res, torch.Tensor):
            tracks, constant = infer_tracks(res)
            merged.extend(tracks)
            if constant.numel():
                lost.append(constant)
        elif isinstance(res, (tuple, list)):
            for m, r in zip(merged, res):
                self._collect_one(m, r, lost)

    def _finish(self, merged, value, kind):
        if isinstance(value, torch.Tensor):
            return merge_tracks(merged, self.store, kind)
        if isinstance(value, (tuple, list)):
            return tuple(self._finish(m, v, kind) for m, v in zip(merged, value))
        return None

    def broadcast_merge(self, operands: Sequence[Any], kind: Optional[str]) -> Chan:
        """Elementwise ops with broadcasting: align operands' tracks to the output and union.

        A tracked output dim that meets an untracked dim of size > 1 in another operand
        freezes those channels (the rewriter could not slice that operand).
        """
        out_shape = tuple(self.out.shape)
        ndim = len(out_shape)
        aligned: list[Track] = []
        untracked_dims: set[int] = set()
        for a in operands:
            value = self.value(a)
            if not isinstance(value, torch.Tensor):
                continue
            offset = ndim - value.dim()
            chan = self.chan(a) if isinstance(a, fx.Node) else UNTRACKED
            chan = chan if isinstance(chan, Chan) else UNTRACKED
            covered = chan.dims()
            for d in range(value.dim()):
                if value.shape[d] > 1 and d not in covered:
                    untracked_dims.add(d + offset)
            for t in chan.tracks:
                if any(value.shape[d] == 1 and out_shape[d + offset] > 1 for d in t.dims):
                    self.freeze(t.labels, "a single channel broadcast over many")
                    continue
                aligned.append(t.shifted(offset))
        for t in aligned:
            hit = untracked_dims.intersection(t.dims)
            if hit and t.single():
                self.freeze(t.labels, "channels combined with an untracked dimension of another operand")
            for d in sorted(hit) if not t.single() else ():
                # a joint (heads, head_dim) track times rotary cos/sin varying along head_dim:
                # fine while units are whole heads, i.e. head_dim keeps its size
                self.store.require_uniform(t.labels, t.dims.index(d), f"an untracked operand at {self.where}")
        merged = merge_tracks(aligned, self.store, kind)
        return merged


def _concrete(a: Any) -> Any:
    """The value of one leaf of an argument structure (a slice is a leaf: x[..., : x.shape[-1] // 2]
    has bounds computed from shapes)."""
    if isinstance(a, fx.Node):
        return a.meta[VALUE]
    if isinstance(a, slice):
        return slice(_concrete(a.start), _concrete(a.stop), _concrete(a.step))
    return a


def _label_input(shrink: set[int], given: dict[str, Track], n: fx.Node, broadcast: bool = True) -> torch.Tensor:
    """The labels standing in for input ``n`` of a :meth:`RuleContext.movement` run: its track in
    ``given`` expanded to its shape (size 1 on the ``shrink`` dims), nulls when it has none."""
    value = n.meta[VALUE]
    shape = [1 if d in shrink else size for d, size in enumerate(value.shape)]
    # labels run as int32 (half the memory traffic of int64); integer inputs (indices) keep
    # their int64, which an index needs
    dtype = torch.long if not (value.is_floating_point() or value.is_complex()) else LABEL_DTYPE
    track = given.get(n.name)
    if track is None:
        return torch.zeros(shape, dtype=dtype)
    labels = expand_labels(Track(track.dims, track.labels.to(dtype)), shape)
    return labels if broadcast else labels.contiguous()


def _labels_of(x: Any) -> list[torch.Tensor]:
    from gdp_graph.graph.channels import flatten_chans
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Track):
        return [x.labels]
    return [t.labels for c in flatten_chans(x) for t in c.tracks]


def merge_tracks(tracks: Sequence[Track], store: ElementStore, kind: Optional[str] = None) -> Chan:
    """Merge tracks of one tensor: overlapping ones are combined position by position, and
    elements meeting at a position are unioned (that is what couples a residual add)."""
    pending = list(tracks)
    out: list[Track] = []
    while pending:
        cluster = [pending.pop(0)]
        dims = set(cluster[0].dims)
        changed = True
        while changed:
            changed = False
            for t in list(pending):
                if dims.intersection(t.dims):
                    cluster.append(t)
                    dims |= set(t.dims)
                    pending.remove(t)
                    changed = True
        if len(cluster) == 1:
            out.append(cluster[0])
            continue
        same = _merge_same_track(cluster, store, kind)
        if same is not None:
            out.append(same)
            continue
        order = sorted(dims)
        sizes = {}
        for t in cluster:
            for d, s in zip(t.dims, t.labels.shape):
                sizes[d] = s
        shape = [sizes[d] for d in order]
        local = [Track(tuple(order.index(d) for d in t.dims), t.labels) for t in cluster]
        full = [expand_labels(t, shape) for t in local]
        combined = full[0].clone()
        for f in full[1:]:
            store.union(combined, f)
            if kind:
                both = (combined != NULL) & (f != NULL)
                if kind == "residual":  # q * cos + rotate_half(q) * sin adds q to itself: no residual
                    both &= _space_ids(store, combined) != _space_ids(store, f)
                store.tag(combined[both], kind)
            combined = torch.where(combined == NULL, f, combined)
        inferred, _ = infer_tracks(combined)
        for t in inferred:
            out.append(Track(tuple(order[d] for d in t.dims), t.labels))
    return Chan(tuple(out))


def _merge_same_track(cluster: list[Track], store: ElementStore, kind: Optional[str]) -> Optional[Track]:
    """:func:`merge_tracks` of single tracks on one dim without nulls (a residual add of two
    layers' channels, the common case), or None: union and tag position by position, and the
    first track's labels are the result (what the general path's where/infer_tracks would give;
    at each add that path cost ~0.2 ms of small tensor ops)."""
    first = cluster[0]
    if not first.single() or any(t.dims != first.dims or t.labels.shape != first.labels.shape for t in cluster):
        return None
    labels = first.labels
    if labels.dtype != torch.long or labels.numel() < 2 or not all(bool((t.labels != NULL).all()) for t in cluster):
        return None
    low, high = torch.aminmax(labels)
    if int(low) == int(high):  # the same element everywhere: infer_tracks keeps no track of it
        return None
    for t in cluster[1:]:
        store.union(labels, t.labels)
        if kind:
            both = labels if kind != "residual" else labels[_space_ids(store, labels) != _space_ids(store, t.labels)]
            store.tag(both, kind)
    return Track(first.dims, labels.contiguous())


def _space_ids(store: ElementStore, labels: torch.Tensor) -> torch.Tensor:
    """The space (the layer output or parameter that created it) of every element in ``labels``."""
    return torch.searchsorted(store.space_starts(), labels.contiguous(), right=True) - 1
