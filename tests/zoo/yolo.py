"""YOLOv8 (Ultralytics 2023) in the coding style of ``ultralytics/nn/modules`` and
``ultralytics/nn/tasks.py``.

* ``Conv``: conv (``autopad``) + BN + a class-level shared ``nn.SiLU()`` (``default_act``);
* ``C2f``: ``cv1`` -> ``list(... .chunk(2, 1))`` -> ``y.extend(m(y[-1]) for m in self.m)`` ->
  ``torch.cat(y, 1)`` -> ``cv2``, with residual ``Bottleneck``s (``x + cv2(cv1(x))``);
* ``SPPF``: three max-pools of the same growing list, concatenated;
* an FPN/PAN neck of ``nn.Upsample`` and a ``Concat`` module taking a list of saved layers;
* the model is a flat ``nn.Sequential`` run by ``_predict_once`` with ``m.f`` / ``m.i`` /
  ``self.save`` bookkeeping, as ``BaseModel`` does;
* ``Detect``: per level a box branch and a class branch concatenated (the list mutated in
  place), levels flattened and concatenated, split into box / class, the box distribution
  decoded by ``DFL`` (a fixed arange conv over a softmax), anchors made from the feature shapes.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import images, zoo_factory


def autopad(k, p=None, d=1):
    """Pad to 'same' shape outputs."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class DFL(nn.Module):
    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        x = torch.arange(c1, dtype=torch.float)
        self.conv.weight.data[:] = nn.Parameter(x.view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape  # batch, channels, anchors
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, strides, grid_cell_offset=0.5):
    anchor_points, stride_tensor = [], []
    dtype, device = feats[0].dtype, feats[0].device
    for i, stride in enumerate(strides):
        _, _, h, w = feats[i].shape
        sx = torch.arange(end=w, device=device, dtype=dtype) + grid_cell_offset
        sy = torch.arange(end=h, device=device, dtype=dtype) + grid_cell_offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=dtype, device=device))
    return torch.cat(anchor_points), torch.cat(stride_tensor)


def dist2bbox(distance, anchor_points, xywh=True, dim=-1):
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        c_xy = (x1y1 + x2y2) / 2
        wh = x2y2 - x1y1
        return torch.cat((c_xy, wh), dim)
    return torch.cat((x1y1, x2y2), dim)


class Detect(nn.Module):
    dynamic = True
    export = True  # return the decoded predictions only

    def __init__(self, nc=80, ch=(), reg_max=4):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + self.reg_max * 4
        self.stride = torch.tensor([8.0, 16.0, 32.0])[: self.nl]
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, self.nc, 1)) for x in ch)
        self.dfl = DFL(self.reg_max) if self.reg_max > 1 else nn.Identity()

    def forward(self, x):
        for i in range(self.nl):
            x[i] = torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1)
        if self.training:
            return x
        shape = x[0].shape  # BCHW
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        if self.dynamic or self.shape != shape:
            self.anchors, self.strides = (x.transpose(0, 1) for x in make_anchors(x, self.stride, 0.5))
            self.shape = shape
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), xywh=True, dim=1) * self.strides
        y = torch.cat((dbox, cls.sigmoid()), 1)
        return y if self.export else (y, x)


# (from, repeats, module, args) as in yolov8.yaml, widths scaled down
_CFG = [
    (-1, 1, Conv, (3, 8, 3, 2)),  # 0-P1/2
    (-1, 1, Conv, (8, 16, 3, 2)),  # 1-P2/4
    (-1, 1, C2f, (16, 16, 1, True)),
    (-1, 1, Conv, (16, 24, 3, 2)),  # 3-P3/8
    (-1, 1, C2f, (24, 24, 2, True)),
    (-1, 1, Conv, (24, 32, 3, 2)),  # 5-P4/16
    (-1, 1, C2f, (32, 32, 1, True)),
    (-1, 1, Conv, (32, 40, 3, 2)),  # 7-P5/32
    (-1, 1, C2f, (40, 40, 1, True)),
    (-1, 1, SPPF, (40, 40, 5)),  # 9
    (-1, 1, nn.Upsample, (None, 2, "nearest")),
    ([-1, 6], 1, Concat, (1,)),  # cat backbone P4
    (-1, 1, C2f, (72, 32, 1)),  # 12
    (-1, 1, nn.Upsample, (None, 2, "nearest")),
    ([-1, 4], 1, Concat, (1,)),  # cat backbone P3
    (-1, 1, C2f, (56, 24, 1)),  # 15 (P3/8-small)
    (-1, 1, Conv, (24, 24, 3, 2)),
    ([-1, 12], 1, Concat, (1,)),  # cat head P4
    (-1, 1, C2f, (56, 32, 1)),  # 18 (P4/16-medium)
    (-1, 1, Conv, (32, 32, 3, 2)),
    ([-1, 9], 1, Concat, (1,)),  # cat head P5
    (-1, 1, C2f, (72, 40, 1)),  # 21 (P5/32-large)
    ([15, 18, 21], 1, Detect, (5, (24, 32, 40))),  # Detect(P3, P4, P5)
]


class DetectionModel(nn.Module):
    def __init__(self, cfg=_CFG):
        super().__init__()
        layers, save = [], []
        for i, (f, n, m, args) in enumerate(cfg):
            m_ = m(*args)
            m_.f, m_.i, m_.type = f, i, m.__name__
            save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
            layers.append(m_)
        self.model = nn.Sequential(*layers)
        self.save = sorted(save)

    def forward(self, x):
        return self._predict_once(x)

    def _predict_once(self, x):
        y = []  # outputs
        for m in self.model:
            if m.f != -1:  # if not from previous layer
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


ENTRIES = {"yolov8": zoo_factory(DetectionModel, images(64))}
