"""Random architectures for fuzzing the pruning pipeline.

An architecture is a :class:`Spec`: an input shape, a list of op dicts and a head. Op ``i``
reads earlier tensors by index (``t0`` is the input) and appends one or more tensors; the
last tensor feeds the head. :class:`SpecNet` builds the layers an op needs and interprets
the list in ``forward``, so every spec is an ordinary, fx-traceable ``nn.Module``.

``repr(spec)`` is valid Python with one op per line and the shape it produces as a comment,
so a falsifying example printed by hypothesis can be read and pasted back as a regression
test::

    Spec(channels=4, size=6, head='gap_linear', ops=[
        {'op': 'conv', 'src': 0, 'out': 8, 'k': 3},  # t1: (8, 6, 6)
        {'op': 'chunk', 'src': 1, 'n': 2},  # t2, t3: (4, 6, 6), (4, 6, 6)
        {'op': 'add', 'srcs': [2, 3]},  # t4: (4, 6, 6)
    ])

:func:`specs` is the hypothesis strategy. It draws "blocks" (a plain op, or a macro such as a
residual block, a fork of two branches of different depth or a ShuffleNet unit), each emitting
primitive ops whose inputs are chosen among shape-compatible earlier tensors, preferring
recent ones. Everything shrinks towards short chains of plain convolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

Shape = tuple[int, int, int]  #: (channels, height, width) of an NCHW tensor, batch left out

WIDTHS = (4, 6, 8, 12, 16, 24)
MAX_SIZE = 16  #: upsampling stops at this height/width
MAX_FC = 384  #: largest flattened C*H*W fed to a Linear (keeps weights small)
ACTS = ("relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "leaky_relu")
#: heads, most often a classifier (a raw feature-map output freezes every channel reaching it)
HEADS = ("gap_linear", "mean_linear", "flatten_linear", "gap_linear", "none", "two_outputs")


# -- spec --------------------------------------------------------------------------------------
def conv_out(size: int, k: int, stride: int, dilation: int) -> int:
    pad = dilation * (k - 1) // 2
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def infer_shapes(channels: int, size: int, ops: list[dict]) -> list[list[Shape]]:
    """The shapes each op appends (one list per op); raises ValueError on an invalid op."""
    shapes: list[Shape] = [(channels, size, size)]
    produced: list[list[Shape]] = []
    for op in ops:
        out = _op_shapes(op, shapes)
        produced.append(out)
        shapes.extend(out)
    return produced


def _op_shapes(op: dict, shapes: list[Shape]) -> list[Shape]:
    kind = op["op"]
    src = shapes[op["src"]] if "src" in op else None
    if kind == "conv":
        c, h, w = src
        k, s, d, g = op.get("k", 3), op.get("stride", 1), op.get("dilation", 1), op.get("groups", 1)
        if c % g or op["out"] % g:
            raise ValueError(f"groups {g} must divide {c} and {op['out']}")
        return [(op["out"], conv_out(h, k, s, d), conv_out(w, k, s, d))]
    if kind in ("norm", "act", "se", "spatial_gate", "shuffle", "attn", "ln_cl"):
        return [src]
    if kind in ("add", "mul"):
        a, b = (shapes[i] for i in op["srcs"])
        if a != b:
            raise ValueError(f"{kind} of different shapes {a} and {b}")
        return [a]
    if kind == "cat":
        ins = [shapes[i] for i in op["srcs"]]
        if len({s[1:] for s in ins}) != 1:
            raise ValueError(f"cat of different spatial sizes {ins}")
        return [(sum(s[0] for s in ins), *ins[0][1:])]
    if kind == "chunk":
        c, h, w = src
        if c % op["n"]:
            raise ValueError(f"chunk({op['n']}) of {c} channels")
        return [(c // op["n"], h, w)] * op["n"]
    if kind == "split":
        if sum(op["sizes"]) != src[0]:
            raise ValueError(f"split sizes {op['sizes']} of {src[0]} channels")
        return [(s, *src[1:]) for s in op["sizes"]]
    if kind == "slice":
        if not 0 <= op["start"] < op["stop"] <= src[0]:
            raise ValueError(f"slice {op['start']}:{op['stop']} of {src[0]} channels")
        return [(op["stop"] - op["start"], *src[1:])]
    if kind == "pool":
        c, h, w = src
        if op["kind"] in ("max", "avg"):
            return [(c, h // 2, w // 2)]
        return [(c, 2 * h, 2 * w)]
    if kind == "linear_cl":
        return [(op["out"], *src[1:])]
    if kind == "fc_reshape":
        return [(op["out"], *src[1:])]
    if kind == "swap_hw":
        return [(src[0], src[2], src[1])]
    raise ValueError(f"unknown op {kind!r}")


@dataclass
class Spec:
    """A random architecture: input ``(channels, size, size)``, ops, and a head."""

    channels: int
    size: int
    ops: list[dict] = field(default_factory=list)
    head: str = "none"
    classes: int = 5
    seed: int = 0

    def shapes(self) -> list[Shape]:
        """Shapes of all tensors ``t0, t1, ...`` (batch left out)."""
        out = [(self.channels, self.size, self.size)]
        for produced in infer_shapes(self.channels, self.size, self.ops):
            out.extend(produced)
        return out

    def __repr__(self) -> str:
        lines = [f"Spec(channels={self.channels}, size={self.size}, head={self.head!r}, "
                 f"classes={self.classes}, seed={self.seed}, ops=["]
        index = 1
        for op, produced in zip(self.ops, infer_shapes(self.channels, self.size, self.ops)):
            names = ", ".join(f"t{index + j}" for j in range(len(produced)))
            index += len(produced)
            lines.append(f"    {op!r},  # {names}: {', '.join(map(str, produced))}")
        lines.append("])")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis prints a falsifying spec
        printer.text(repr(self))


# -- the model ---------------------------------------------------------------------------------
def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    """Activations written in the styles models use: module-free functions and methods."""
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "silu":
        return F.silu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return x.tanh()
    if name == "hardswish":
        return F.hardswish(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.1)
    raise ValueError(name)


_ACT_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
                "tanh": nn.Tanh, "hardswish": nn.Hardswish, "leaky_relu": nn.LeakyReLU}


class Attention(nn.Module):
    """Multi-head self-attention over the H*W tokens of an NCHW tensor, with a residual.

    ``style`` picks how head shapes are written: ``"timm"`` unpacks ``B, N, C = t.shape`` and
    uses ``C // heads`` (so the inner width equals the input width), ``"neg1"`` uses -1,
    ``"literal"`` the head_dim integer. ``unpack`` is ``"unbind"`` or ``"index"``
    (``qkv[0], qkv[1], qkv[2]``) for a fused projection.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, fused: bool, sdpa: bool,
                 style: str, prenorm: bool, unpack: str = "unbind"):
        super().__init__()
        self.heads, self.head_dim, self.fused, self.sdpa = heads, head_dim, fused, sdpa
        self.style, self.unpack = style, unpack
        inner = heads * head_dim
        if style == "timm" and inner != channels:
            raise ValueError(f"timm-style attention needs heads * head_dim == {channels}")
        if fused:
            self.qkv = nn.Linear(channels, 3 * inner)
        else:
            self.q, self.k, self.v = (nn.Linear(channels, inner) for _ in range(3))
        self.proj = nn.Linear(inner, channels)
        self.norm = nn.LayerNorm(channels) if prenorm else None
        self.scale = head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)  # B, N, C
        B, N, C = t.shape
        h = self.norm(t) if self.norm is not None else t
        hd = C // self.heads if self.style == "timm" else (-1 if self.style == "neg1" else self.head_dim)
        if self.fused:
            qkv = self.qkv(h).reshape(B, N, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0) if self.unpack == "unbind" else (qkv[0], qkv[1], qkv[2])
        else:
            q, k, v = (lin(h).view(B, N, self.heads, hd).transpose(1, 2) for lin in (self.q, self.k, self.v))
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            o = attn.softmax(dim=-1) @ v
        o = o.transpose(1, 2).reshape(B, N, C if self.style == "timm" else -1)
        t = t + self.proj(o)
        return t.transpose(1, 2).reshape(B, C, H, W)


class SE(nn.Module):
    """Squeeze-excitation: ``x * sigmoid(conv(act(conv(pool(x)))))``."""

    def __init__(self, channels: int, hidden: int, pool: str):
        super().__init__()
        self.pool = pool
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True) if self.pool == "mean" else F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class SpecNet(nn.Module):
    """Interprets a :class:`Spec`. Layers are named ``op{i}_{kind}`` after the op that owns them."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        shapes = [(spec.channels, spec.size, spec.size)]
        self._srcs: list[list[int]] = []
        for i, (op, produced) in enumerate(zip(spec.ops, infer_shapes(spec.channels, spec.size, spec.ops))):
            src = shapes[op["src"]] if "src" in op else None
            for name, module in self._layers(op, src).items():
                self.add_module(f"op{i}_{name}", module)
            shapes.extend(produced)
        last = shapes[-1]
        if spec.head in ("gap_linear", "mean_linear"):
            self.fc = nn.Linear(last[0], spec.classes)
        elif spec.head == "flatten_linear":
            self.fc = nn.Linear(last[0] * last[1] * last[2], spec.classes)

    @staticmethod
    def _layers(op: dict, src: Optional[Shape]) -> dict[str, nn.Module]:
        kind = op["op"]
        if kind == "conv":
            k, d = op.get("k", 3), op.get("dilation", 1)
            return {"conv": nn.Conv2d(src[0], op["out"], k, op.get("stride", 1), d * (k - 1) // 2, d,
                                      op.get("groups", 1), bias=op.get("bias", True))}
        if kind == "norm":
            if op["kind"] == "bn":
                return {"bn": nn.BatchNorm2d(src[0])}
            if op["kind"] == "gn":
                return {"gn": nn.GroupNorm(op["groups"], src[0])}
            return {"ln": nn.LayerNorm(src[0])}
        if kind == "act" and op.get("module"):
            return {"act": _ACT_MODULES[op["kind"]]()}
        if kind == "ln_cl":
            return {"ln": nn.LayerNorm(src[0])}
        if kind == "se":
            return {"se": SE(src[0], op["hidden"], op.get("pool", "mean"))}
        if kind == "spatial_gate":
            return {"gate": nn.Conv2d(src[0], 1, 3, padding=1)}
        if kind == "pool":
            if op["kind"] == "max":
                return {"pool": nn.MaxPool2d(2)}
            if op["kind"] == "avg":
                return {"pool": nn.AvgPool2d(2)}
            if op["kind"] == "nearest":
                return {"up": nn.Upsample(scale_factor=2)}
            return {}
        if kind == "linear_cl":
            return {"fc": nn.Linear(src[0], op["out"])}
        if kind == "fc_reshape":
            return {"fc": nn.Linear(src[0] * src[1] * src[2], op["out"] * src[1] * src[2])}
        if kind == "attn":
            return {"attn": Attention(src[0], op["heads"], op["head_dim"], op.get("fused", True),
                                      op.get("sdpa", True), op.get("style", "literal"), op.get("prenorm", False),
                                      op.get("unpack", "unbind"))}
        return {}

    def _layer(self, i: int, name: str) -> nn.Module:
        return getattr(self, f"op{i}_{name}")

    def _apply(self, i: int, op: dict, env: list[torch.Tensor]) -> list[torch.Tensor]:
        kind = op["op"]
        x = env[op["src"]] if "src" in op else None
        if kind == "conv":
            return [self._layer(i, "conv")(x)]
        if kind == "norm":
            if op["kind"] == "ln":  # channels-last LayerNorm, as in ConvNeXt
                return [self._layer(i, "ln")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)]
            return [self._layer(i, op["kind"])(x)]
        if kind == "act":
            return [self._layer(i, "act")(x) if op.get("module") else _act(op["kind"], x)]
        if kind == "ln_cl":  # LayerNorm on an explicit NHWC copy, back with contiguous()
            y = x.permute(0, 2, 3, 1).contiguous()
            return [self._layer(i, "ln")(y).permute(0, 3, 1, 2).contiguous()]
        if kind == "add":
            a, b = (env[j] for j in op["srcs"])
            style = op.get("style", "op")
            if style == "iadd":  # torchvision's `out += identity`, on a fresh tensor
                out = a.clone()
                out += b
                return [out]
            return [a + b if style == "op" else torch.add(a, b)]
        if kind == "mul":
            a, b = (env[j] for j in op["srcs"])
            return [a * b]
        if kind == "se":
            return [self._layer(i, "se")(x)]
        if kind == "spatial_gate":
            return [x * torch.sigmoid(self._layer(i, "gate")(x))]
        if kind == "cat":
            return [torch.cat([env[j] for j in op["srcs"]], dim=op.get("dim", 1))]
        if kind == "chunk":
            pieces = x.chunk(op["n"], dim=op.get("dim", 1))
            return [pieces[j] for j in range(op["n"])]
        if kind == "split":
            pieces = torch.split(x, op["sizes"], dim=op.get("dim", 1))
            return [pieces[j] for j in range(len(op["sizes"]))]
        if kind == "slice":
            style = op.get("style", "getitem")
            if style == "narrow":
                return [x.narrow(op.get("dim", 1), op["start"], op["stop"] - op["start"])]
            if style == "ellipsis":
                return [x[..., op["start"]:op["stop"], :, :]]
            return [x[:, op["start"]:op["stop"]]]
        if kind == "shuffle":
            g = op["groups"]
            if op.get("style", "size") == "size":  # torchvision's channel_shuffle
                b, c, h, w = x.size()
                y = x.view(b, g, c // g, h, w)
                return [torch.transpose(y, 1, 2).contiguous().view(b, c, h, w)]
            c, h, w = x.shape[1:]
            return [x.reshape(-1, g, c // g, h, w).transpose(1, 2).reshape(-1, c, h, w)]
        if kind == "pool":
            if op["kind"] == "bilinear":
                return [F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)]
            return [self._layer(i, "pool" if op["kind"] in ("max", "avg") else "up")(x)]
        if kind == "linear_cl":  # a pointwise conv written as Linear on NHWC
            return [self._layer(i, "fc")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)]
        if kind == "fc_reshape":
            _, _, h, w = x.shape
            return [self._layer(i, "fc")(x.flatten(1)).view(-1, op["out"], h, w)]
        if kind == "attn":
            return [self._layer(i, "attn")(x)]
        if kind == "swap_hw":
            return [x.permute(0, 1, 3, 2)]
        raise ValueError(f"unknown op {kind!r}")

    def forward(self, x: torch.Tensor):
        env = [x]
        for i, op in enumerate(self.spec.ops):
            env.extend(self._apply(i, op, env))
        last = env[-1]
        head = self.spec.head
        if head == "gap_linear":
            return self.fc(F.adaptive_avg_pool2d(last, 1).flatten(1))
        if head == "mean_linear":
            return self.fc(last.mean(dim=(2, 3)))
        if head == "flatten_linear":
            return self.fc(torch.flatten(last, 1))
        if head == "two_outputs":
            return last, env[max(0, len(env) - 2)]
        return last


def _randomize(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial weights and norm statistics, so no channel is accidentally zero or inert."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


def build_model(spec: Spec) -> SpecNet:
    """The model of ``spec``, deterministically initialized from ``spec.seed``, in eval mode."""
    model = SpecNet(spec)
    _randomize(model, torch.Generator().manual_seed(spec.seed))
    return model.eval()


def example_input(spec: Spec, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(batch, spec.channels, spec.size, spec.size, generator=g)


# -- the strategy ------------------------------------------------------------------------------
class _Builder:
    """Accumulates ops and the shapes of every tensor they produce."""

    def __init__(self, draw, channels: int, size: int):
        self.draw = draw
        self.shapes: list[Shape] = [(channels, size, size)]
        self.ops: list[dict] = []
        self.first = 0  #: tensors before this index are not picked (the input, after a stem)

    def emit(self, op: dict) -> int:
        """Append ``op``; return the index of its (first) output."""
        first = len(self.shapes)
        self.shapes.extend(_op_shapes(op, self.shapes))
        self.ops.append(op)
        return first

    def pick(self, ok: Callable[[Shape], bool] = lambda s: True) -> Optional[int]:
        """A tensor whose shape satisfies ``ok``, preferring recent ones (shrinks to the last)."""
        candidates = [i for i, s in enumerate(self.shapes) if ok(s) and i >= self.first]
        if not candidates:
            return None
        back = self.draw(st.integers(0, min(len(candidates) - 1, 4)))
        return candidates[len(candidates) - 1 - back]

    def width(self) -> int:
        return self.draw(st.sampled_from(WIDTHS))


def _divisors(n: int, lo: int = 2) -> list[int]:
    return [d for d in range(lo, n + 1) if n % d == 0]


def _conv(b: _Builder, src: int, out: Optional[int] = None, stride: Optional[int] = None) -> int:
    """A conv from ``src``: plain, 1x1, strided, dilated, depthwise or grouped. ``out`` and
    ``stride``, when given, are honoured whatever the flavor."""
    c, h, w = b.shapes[src]
    flavor = b.draw(st.sampled_from(["plain", "pointwise", "strided", "dilated", "depthwise", "grouped"]))
    op: dict[str, Any] = {"op": "conv", "src": src}
    if flavor == "depthwise" and (out is None or out % c == 0):
        out = out if out is not None else c * b.draw(st.sampled_from([1, 2]))
        op.update(out=out, k=3, groups=c)
    else:
        out = out if out is not None else b.width()
        common = [g for g in _divisors(c) if out % g == 0 and g < c]
        if flavor == "grouped" and common:
            op.update(out=out, k=b.draw(st.sampled_from([3, 1])), groups=b.draw(st.sampled_from(common)))
        elif flavor == "pointwise":
            op.update(out=out, k=1)
        elif flavor == "dilated":
            op.update(out=out, k=3, dilation=2)
        else:
            op.update(out=out, k=3)
    if stride is None:
        stride = 2 if flavor == "strided" and min(h, w) >= 2 else 1
    if stride != 1:
        op["stride"] = stride
    if b.draw(st.booleans()):
        op["bias"] = False
    return b.emit(op)


def _norm(b: _Builder, src: int) -> int:
    c = b.shapes[src][0]
    kind = b.draw(st.sampled_from(["bn", "gn", "ln"]))
    op: dict[str, Any] = {"op": "norm", "src": src, "kind": kind}
    if kind == "gn":
        op["groups"] = b.draw(st.sampled_from([1] + _divisors(c)))
    return b.emit(op)


def _act_op(b: _Builder, src: int) -> int:
    op: dict[str, Any] = {"op": "act", "src": src, "kind": b.draw(st.sampled_from(ACTS))}
    if b.draw(st.booleans()):
        op["module"] = True
    return b.emit(op)


def _branch(b: _Builder, src: int, depth: int, out: int, stride: int = 1) -> int:
    """``depth`` layers from ``src`` ending with ``out`` channels at the given stride."""
    x = src
    for j in range(depth):
        last = j == depth - 1
        kind = b.draw(st.sampled_from(["conv", "conv", "norm", "act"])) if j else "conv"
        if kind == "conv" or (last and b.shapes[x][0] != out):
            x = _conv(b, x, out=out if last else None, stride=stride if j == 0 else 1)
        elif kind == "norm":
            x = _norm(b, x)
        else:
            x = _act_op(b, x)
    if b.shapes[x][0] != out:
        x = _conv(b, x, out=out, stride=1)
    return x


# Each block draws its parameters and emits one or more ops.
def block_conv(b: _Builder) -> None:
    _conv(b, b.pick())


def block_conv_bn_act(b: _Builder) -> None:
    x = _conv(b, b.pick())
    if b.draw(st.booleans()):
        x = _norm(b, x)
    _act_op(b, x)


def block_norm(b: _Builder) -> None:
    _norm(b, b.pick())


def block_act(b: _Builder) -> None:
    _act_op(b, b.pick())


def block_residual(b: _Builder) -> None:
    """``x + branch(x)`` with a projection shortcut when the branch changes the shape."""
    src = b.pick()
    c, h, w = b.shapes[src]
    depth = b.draw(st.integers(1, 3))
    out = b.draw(st.sampled_from([c] + list(WIDTHS)))
    stride = 2 if min(h, w) >= 2 and b.draw(st.booleans()) and b.draw(st.booleans()) else 1
    branch = _branch(b, src, depth, out, stride)
    shortcut = src
    if b.shapes[branch] != b.shapes[src]:
        shortcut = b.emit({"op": "conv", "src": src, "out": out, "k": 1, **({"stride": stride} if stride > 1 else {})})
    b.emit({"op": "add", "srcs": [shortcut, branch] if b.draw(st.booleans()) else [branch, shortcut], **_add_style(b)})


def block_fork(b: _Builder) -> None:
    """Two branches of (usually) different depth from one tensor, merged by add, mul or cat."""
    src = b.pick()
    merge = b.draw(st.sampled_from(["add", "mul", "cat"]))
    out = b.width()
    left = _branch(b, src, b.draw(st.integers(1, 3)), out)
    right = _branch(b, src, b.draw(st.integers(1, 3)), out if merge != "cat" else b.width())
    if merge == "cat":
        b.emit({"op": "cat", "srcs": [left, right], **_channel_dim(b)})
    else:
        b.emit({"op": merge, "srcs": [left, right]})


def _channel_dim(b: _Builder) -> dict[str, int]:
    """The channel dim written as 1 (nothing) or -3."""
    return {"dim": -3} if b.draw(st.booleans()) else {}


def _add_style(b: _Builder) -> dict[str, str]:
    """``a + b`` (nothing), ``torch.add(a, b)`` or ``out = a.clone(); out += b``."""
    style = b.draw(st.sampled_from(["op", "torch.add", "iadd"]))
    return {} if style == "op" else {"style": style}


def _pick_pair(b: _Builder) -> Optional[tuple[int, int]]:
    a = b.pick()
    same = [i for i, s in enumerate(b.shapes) if s == b.shapes[a] and i != a and i >= b.first]
    if not same:
        return None
    other = same[len(same) - 1 - b.draw(st.integers(0, min(len(same) - 1, 4)))]
    return (a, other) if b.draw(st.booleans()) else (other, a)


def block_add(b: _Builder) -> None:
    pair = _pick_pair(b)
    if pair is None:
        return block_residual(b)
    b.emit({"op": "add", "srcs": list(pair), **_add_style(b)})


def block_mul(b: _Builder) -> None:
    pair = _pick_pair(b)
    if pair is None:
        return block_fork(b)
    b.emit({"op": "mul", "srcs": list(pair)})


def block_se(b: _Builder) -> None:
    src = b.pick()
    c = b.shapes[src][0]
    b.emit({"op": "se", "src": src, "hidden": b.draw(st.sampled_from(sorted({max(1, c // 4), max(1, c // 2), c}))),
            "pool": b.draw(st.sampled_from(["mean", "adaptive"]))})


def block_spatial_gate(b: _Builder) -> None:
    b.emit({"op": "spatial_gate", "src": b.pick()})


def block_cat(b: _Builder) -> None:
    first = b.pick()
    hw = b.shapes[first][1:]
    srcs = [first]
    for _ in range(b.draw(st.integers(1, 3))):
        srcs.append(b.pick(lambda s: s[1:] == hw))  # may repeat a tensor: cat([x, x])
    if b.draw(st.booleans()):
        srcs.reverse()
    b.emit({"op": "cat", "srcs": srcs, **_channel_dim(b)})


def block_split(b: _Builder) -> None:
    """chunk / split / slice / narrow along channels; pieces may be left unused."""
    src = b.pick(lambda s: s[0] >= 2)
    if src is None:
        return block_conv(b)
    c = b.shapes[src][0]
    style = b.draw(st.sampled_from(["chunk", "split", "slice", "narrow"]))
    if style == "chunk":
        b.emit({"op": "chunk", "src": src, "n": b.draw(st.sampled_from([n for n in (2, 3, 4) if c % n == 0] or [1])),
                **_channel_dim(b)})
    elif style == "split":
        cut = b.draw(st.integers(1, c - 1))
        sizes = [cut, c - cut]
        if c - cut >= 2 and b.draw(st.booleans()):
            cut2 = b.draw(st.integers(1, c - cut - 1))
            sizes = [cut, cut2, c - cut - cut2]
        b.emit({"op": "split", "src": src, "sizes": sizes, **_channel_dim(b)})
    else:
        start = b.draw(st.integers(0, c - 1))
        stop = b.draw(st.integers(start + 1, c))
        op: dict[str, Any] = {"op": "slice", "src": src, "start": start, "stop": stop}
        if style == "narrow":
            op.update(style="narrow", **_channel_dim(b))
        elif b.draw(st.booleans()):
            op["style"] = "ellipsis"
        b.emit(op)


def block_shuffle_unit(b: _Builder) -> None:
    """ShuffleNetV2 unit: chunk, transform one half, cat, channel shuffle."""
    src = b.pick(lambda s: s[0] % 2 == 0)
    if src is None:
        return block_conv(b)
    half = b.emit({"op": "chunk", "src": src, "n": 2})
    keep, work = (half, half + 1) if b.draw(st.booleans()) else (half + 1, half)
    branch = _branch(b, work, b.draw(st.integers(1, 3)), b.shapes[work][0])
    out = b.emit({"op": "cat", "srcs": [keep, branch]})
    b.emit({"op": "shuffle", "src": out, "groups": 2})


def block_shuffle(b: _Builder) -> None:
    src = b.pick(lambda s: len(_divisors(s[0])) > 1)
    if src is None:
        return block_conv(b)
    c = b.shapes[src][0]
    op: dict[str, Any] = {"op": "shuffle", "src": src, "groups": b.draw(st.sampled_from([g for g in _divisors(c) if g < c]))}
    if b.draw(st.booleans()):
        op["style"] = "reshape"
    b.emit(op)


def block_pool(b: _Builder) -> None:
    src = b.pick()
    _, h, w = b.shapes[src]
    kinds = (["max", "avg"] if min(h, w) >= 2 else []) + (["nearest", "bilinear"] if max(h, w) * 2 <= MAX_SIZE else [])
    if not kinds:
        return block_conv(b)
    b.emit({"op": "pool", "src": src, "kind": b.draw(st.sampled_from(kinds))})


def block_channels_last(b: _Builder) -> None:
    """Ops on a permuted NHWC tensor: Linear over channels, or LayerNorm with contiguous()."""
    src = b.pick()
    if b.draw(st.booleans()):
        b.emit({"op": "linear_cl", "src": src, "out": b.width()})
    else:
        b.emit({"op": "ln_cl", "src": src})


def block_fc_reshape(b: _Builder) -> None:
    src = b.pick(lambda s: s[0] * s[1] * s[2] <= MAX_FC)
    if src is None:
        return block_conv(b)
    _, h, w = b.shapes[src]
    outs = [c for c in WIDTHS if c * h * w <= MAX_FC]
    if not outs:
        return block_conv(b)
    b.emit({"op": "fc_reshape", "src": src, "out": b.draw(st.sampled_from(outs))})


def block_attention(b: _Builder) -> None:
    src = b.pick()
    c = b.shapes[src][0]
    style = b.draw(st.sampled_from(["literal", "neg1", "timm"]))
    if style == "timm":
        heads = b.draw(st.sampled_from([h for h in (1, 2, 4) if c % h == 0]))
        head_dim = c // heads
    else:
        heads = b.draw(st.sampled_from([1, 2, 4]))
        head_dim = b.draw(st.sampled_from([2, 4]))
    op: dict[str, Any] = {"op": "attn", "src": src, "heads": heads, "head_dim": head_dim, "style": style,
                          "fused": b.draw(st.booleans()), "sdpa": b.draw(st.booleans()),
                          "prenorm": b.draw(st.booleans())}
    if op["fused"] and b.draw(st.booleans()):
        op["unpack"] = "index"
    b.emit(op)


def block_swap_hw(b: _Builder) -> None:
    b.emit({"op": "swap_hw", "src": b.pick()})


BLOCKS: dict[str, Callable[[_Builder], None]] = {
    "conv": block_conv, "conv_bn_act": block_conv_bn_act, "norm": block_norm, "act": block_act,
    "residual": block_residual, "fork": block_fork, "add": block_add, "mul": block_mul,
    "se": block_se, "spatial_gate": block_spatial_gate, "cat": block_cat, "split": block_split,
    "shuffle_unit": block_shuffle_unit, "shuffle": block_shuffle, "pool": block_pool,
    "channels_last": block_channels_last, "fc_reshape": block_fc_reshape,
    "attention": block_attention, "swap_hw": block_swap_hw,
}


@st.composite
def specs(draw, min_blocks: int = 1, max_blocks: int = 6, blocks: Optional[list[str]] = None,
          stem: Optional[bool] = None) -> Spec:
    """A random :class:`Spec` of ``min_blocks..max_blocks`` blocks (names from :data:`BLOCKS`).

    With a ``stem`` (drawn when None) the first op is a conv and later ops never read the
    input itself, so every channel they see is produced by a layer; without one, ops may
    split, concatenate or add the input's own (unprunable) channels.
    """
    channels = draw(st.sampled_from([4, 3, 6, 8]))
    size = draw(st.integers(4, 8))
    builder = _Builder(draw, channels, size)
    if stem if stem is not None else draw(st.booleans()):
        _conv(builder, 0)
        builder.first = 1
    names = blocks or list(BLOCKS)
    for _ in range(draw(st.integers(min_blocks, max_blocks))):
        BLOCKS[draw(st.sampled_from(names))](builder)
    c, h, w = builder.shapes[-1]
    heads = [hd for hd in HEADS if hd != "flatten_linear" or c * h * w <= 4 * MAX_FC]
    return Spec(channels=channels, size=size, ops=builder.ops, head=draw(st.sampled_from(heads)),
                classes=draw(st.integers(2, 6)), seed=draw(st.integers(0, 3)))
