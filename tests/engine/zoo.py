"""Modern blocks written in plain torch the way torchvision / timm write them
(in-place activations, ``out += identity``, alpha, class token, position embedding).
Each builder takes ``inplace`` (False: the same model written out-of-place, alpha
spelled out) and ``relu_only`` (bias-free ReLU variant for the HP oracle, where the
block allows one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def act(kind, inplace):
    return {"relu": lambda: nn.ReLU(inplace=inplace), "hardswish": lambda: nn.Hardswish(inplace=inplace),
            "silu": lambda: nn.SiLU(inplace=inplace), "relu6": lambda: nn.ReLU6(inplace=inplace),
            "leaky": lambda: nn.LeakyReLU(0.1, inplace=inplace), "gelu": lambda: nn.GELU()}[kind]()


def bn(c, bias=True):
    m = nn.BatchNorm2d(c, affine=bias)
    with torch.no_grad():
        m.running_mean.normal_(0, 0.1 if bias else 0.0)
        if not bias:
            m.running_mean.zero_()
        m.running_var.uniform_(0.5, 1.5)
        if bias:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
    return m


class BasicBlock(nn.Module):
    def __init__(self, c=4, out=6, inplace=True, relu_only=False, stride=2):
        super().__init__()
        b = not relu_only
        self.inplace = inplace
        self.conv1 = nn.Conv2d(c, out, 3, stride, 1, bias=False)
        self.bn1 = bn(out, b)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = bn(out, b)
        self.downsample = nn.Sequential(nn.Conv2d(c, out, 1, stride, bias=False), bn(out, b))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.inplace:
            out += identity
        else:
            out = out + identity
        return self.relu(out).flatten(1)


class Bottleneck(nn.Module):
    def __init__(self, c=6, inplace=True, relu_only=False):
        super().__init__()
        b = not relu_only
        self.inplace = inplace
        self.conv1, self.bn1 = nn.Conv2d(c, 4, 1, bias=False), bn(4, b)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, 1, 2, dilation=2, groups=2, bias=False), bn(4, b)
        self.conv3, self.bn3 = nn.Conv2d(4, c, 1, bias=False), bn(c, b)
        self.relu = nn.ReLU(inplace=inplace)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.inplace:
            out += x
        else:
            out = out + x
        return self.pool(self.relu(out)).flatten(1)


class PreActBlock(nn.Module):
    """Pre-activation ResNet: BatchNorm before the convs and after the residual add
    (unfoldable), and an alpha-scaled shortcut (torch.add(..., alpha=))."""

    def __init__(self, c=4, inplace=True, relu_only=False, kind="leaky"):
        super().__init__()
        b = not relu_only
        self.inplace = inplace
        self.bn1 = bn(c, b)
        self.act = act("relu" if relu_only else kind, inplace)
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = bn(c, b)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.post = bn(c, b)

    def forward(self, x):
        out = self.conv1(self.act(self.bn1(x)))
        out = self.conv2(self.act(self.bn2(out)))
        if self.inplace:
            out = torch.add(out, x, alpha=0.5)
        else:
            out = out + 0.5 * x
        return F.adaptive_avg_pool2d(self.act(self.post(out)), 2).flatten(1)


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze, gate, inplace):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act = nn.ReLU(inplace=inplace) if gate == "hardsigmoid" else nn.SiLU(inplace=inplace)
        self.gate = nn.Hardsigmoid(inplace=inplace) if gate == "hardsigmoid" else nn.Sigmoid()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3 (Hardswish, SE with Hardsigmoid) or EfficientNet MBConv (SiLU, SE
    with Sigmoid)."""

    def __init__(self, c=4, inplace=True, relu_only=False, kind="hardswish"):
        super().__init__()
        a = "relu" if relu_only else kind
        b = not relu_only
        self.expand = nn.Sequential(nn.Conv2d(c, 8, 1, bias=False), bn(8, b), act(a, inplace))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), bn(8, b), act(a, inplace))
        self.se = None if relu_only else SqueezeExcite(8, 2, "hardsigmoid" if kind == "hardswish" else "sigmoid",
                                                       inplace)
        self.project = nn.Sequential(nn.Conv2d(8, c, 1, bias=False), bn(c, b))

    def forward(self, x):
        out = self.dw(self.expand(x))
        if self.se is not None:
            out = self.se(out)
        return (x + self.project(out)).mean((2, 3))


class LayerNorm2d(nn.LayerNorm):
    """timm's channels-first LayerNorm: F.layer_norm on the channels-last view."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=4, inplace=True, relu_only=False):
        super().__init__()
        self.norm0 = LayerNorm2d(c)
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        x = self.norm0(x)
        out = self.dwconv(x).permute(0, 2, 3, 1)
        out = self.pwconv2(self.act(self.pwconv1(self.norm(out))))
        out = (self.gamma * out).permute(0, 3, 1, 2)
        return (x + out).flatten(1)


class Attention(nn.Module):
    """timm's hand-written attention: q @ k.T → softmax → @ v."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.scale = heads, (d // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, bias=None):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class ViTBlock(nn.Module):
    def __init__(self, c=3, inplace=True, relu_only=False, torch_mha=False, d=8, patch=4, size=8):
        super().__init__()
        self.patch = nn.Conv2d(c, d, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, d) * 0.5)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.torch_mha = torch_mha
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True) if torch_mha else Attention(d, 2)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        h = self.norm1(x)
        h = self.attn(h, h, h, need_weights=False)[0] if self.torch_mha else self.attn(h)
        x = x + h
        x = x + self.mlp(self.norm2(x))
        return x[:, 0]


class UNetBlock(nn.Module):
    def __init__(self, c=2, inplace=True, relu_only=False, mode="bilinear"):
        super().__init__()
        b = not relu_only
        self.down = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1, bias=b), nn.ReLU(inplace=inplace))
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=b), nn.ReLU(inplace=inplace))
        self.mode = mode
        self.out = nn.Conv2d(8, 3, 1, bias=b)

    def forward(self, x):
        skip = self.down(x)
        y = self.mid(self.pool(skip))
        y = F.interpolate(y, scale_factor=2, mode=self.mode, **({} if self.mode == "nearest" else
                                                                {"align_corners": False}))
        return self.out(torch.cat([y, skip], 1)).flatten(1)


class SwinWindowAttention(nn.Module):
    """Swin-style shifted-window attention: roll, window partition, relative position bias."""

    def __init__(self, c=3, inplace=True, relu_only=False, d=8, window=2, size=4):
        super().__init__()
        self.embed = nn.Conv2d(c, d, 2, 2)
        self.window, self.heads = window, 2
        self.attn = Attention(d, 2)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, 2) * 0.3)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)  # (N, H, W, D)
        n, h, w, d = x.shape
        s, ws = self.window // 2, self.window
        shifted = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        win = shifted.view(n, h // ws, ws, w // ws, ws, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, d)
        bias = self.table[self.index.reshape(-1)].reshape(ws * ws, ws * ws, -1).permute(2, 0, 1)[None]
        out = self.attn(self.norm(win), bias)
        out = out.view(n, h // ws, w // ws, ws, ws, d).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, d)
        return torch.roll(out, shifts=(s, s), dims=(1, 2)).flatten(1)


class GroupNormBlock(nn.Module):
    """A diffusion-U-Net-style residual block: GroupNorm, SiLU, conv; normalised output."""

    def __init__(self, c=4, inplace=True, relu_only=False):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(2, c), nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.SiLU(inplace=inplace)
        self.norm2, self.conv2 = nn.GroupNorm(4, c), nn.Conv2d(c, c, 3, padding=1)
        with torch.no_grad():
            for n in (self.norm1, self.norm2):
                n.weight.uniform_(0.5, 1.5)
                n.bias.normal_(0, 0.3)

    def forward(self, x):
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return F.normalize((x + h).flatten(1), dim=1)


class RMSNormMLP(nn.Module):
    """A Llama-style token MLP: RMSNorm, SiLU-gated projection (a product of two carrying
    tensors: the uniform rule), residual."""

    def __init__(self, c=6, inplace=True, relu_only=False, d=6):
        super().__init__()
        self.norm = nn.RMSNorm(d)
        self.gate, self.up, self.down = nn.Linear(d, 8, bias=False), nn.Linear(d, 8, bias=False), nn.Linear(8, d)
        self.act = nn.SiLU(inplace=inplace)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        h = self.norm(x)
        return (x + self.down(self.act(self.gate(h)) * self.up(h))).mean(1)


class TokenGather(nn.Module):
    """Tokens tiled (repeat) and picked at constant indices (gather), as token-pruning
    and patch-merging code does."""

    def __init__(self, c=3, inplace=True, relu_only=False, d=4):
        super().__init__()
        self.proj = nn.Linear(d, d, bias=not relu_only)
        self.register_buffer("index", torch.tensor([0, 2, 1, 5, 3, 0]), persistent=False)

    def forward(self, x):
        h = F.relu(self.proj(x)).repeat(1, 2, 1)
        idx = self.index[None, :, None].expand(x.shape[0], -1, h.shape[-1])
        return torch.gather(h, 1, idx).flatten(1)


ZOO = {
    "resnet_basic": (lambda **k: BasicBlock(**k), (4, 8, 8), True),
    "resnet_bottleneck": (lambda **k: Bottleneck(**k), (6, 6, 6), True),
    "preact_resnet": (lambda **k: PreActBlock(**k), (4, 6, 6), True),
    "preact_relu6": (lambda **k: PreActBlock(kind="relu6", **k), (4, 6, 6), True),
    "mobilenetv3": (lambda **k: InvertedResidual(kind="hardswish", **k), (4, 6, 6), True),
    "efficientnet": (lambda **k: InvertedResidual(kind="silu", **k), (4, 6, 6), True),
    "convnext": (lambda **k: ConvNeXtBlock(**k), (4, 6, 6), False),
    "vit_handwritten": (lambda **k: ViTBlock(**k), (3, 8, 8), False),
    "vit_torch_mha": (lambda **k: ViTBlock(torch_mha=True, **k), (3, 8, 8), False),
    "unet_bilinear": (lambda **k: UNetBlock(**k), (2, 6, 6), True),
    "unet_nearest": (lambda **k: UNetBlock(mode="nearest", **k), (2, 6, 6), True),
    "swin_window": (lambda **k: SwinWindowAttention(**k), (3, 8, 8), False),
    "groupnorm_unet": (lambda **k: GroupNormBlock(**k), (4, 6, 6), False),
    "rmsnorm_gated_mlp": (lambda **k: RMSNormMLP(**k), (5, 6), False),
    "token_gather": (lambda **k: TokenGather(**k), (3, 4), True),
}


def build(name, seed=0, **kwargs):
    make, shape, _ = ZOO[name]
    torch.manual_seed(seed)
    model = make(**kwargs).double().eval()
    return model, shape
