"""The network: a 54x54 crop in, a length softmax and five digit softmaxes out.

Goodfellow et al. 2014 ("Multi-digit Number Recognition from Street View Imagery using Deep
Convolutional Neural Networks"), sec. 3 and 5.1: a deep convnet H = f(X) shared by N + 1
softmax classifiers, one for the length L in {0, ..., N, >N} and one per digit position S_i.
sequence.py turns those outputs into log P(S|X) and the most probable transcription.

What differs from the paper, and why:
- Batch normalization stands in for the paper's subtractive normalization (it trains faster
  and needs no tuning); `batch_norm=False` gives plain conv + bias.
- 2x2 pooling with stride 1 keeps the size ("same"), padding on the right/bottom with -inf,
  so stride alternation 2,1,2,1 halves the map only on the stride-2 layers.
- The output layers start small (std 0.01/sqrt(fan_in)), so every softmax starts near uniform
  and the initial loss is log 7 + E[n] log 10 (tests/test_model.py checks it), while the
  backbone still receives a gradient from the first step (a zero init would block it).

The configuration (ModelConfig) lives in config.py, so flags can be listed without torch.
`forward` has no Python-side shape logic: every size is fixed in __init__, so torch.compile
traces it without graph breaks, and it runs in channels_last and under bf16 autocast.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from transcribe.config import PRESETS, ModelConfig  # noqa: F401 (PRESETS: model.PRESETS)

HEAD_INIT_STD = 0.01    # output weights ~ N(0, (0.01)^2 / fan_in): logits ~ 1e-2, softmaxes ~ uniform


# The presets live in config.py (`transcribe train --help` lists them without importing torch).


def _pooled_size(size: int, stride: int) -> int:
    return -(-size // stride)  # ceil: stride 2 with ceil_mode, stride 1 with 'same' padding


def build_model(cfg: ModelConfig):
    """A freshly initialized HouseNumberNet for `cfg` (float32, on the CPU)."""
    return HouseNumberNet(cfg)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ConvBlock(nn.Module):
    """conv ('same') -> [BN] -> ReLU or maxout -> 2x2 max-pool (stride 1 or 2) -> dropout."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, pieces: int, bn: bool, p: float):
        super().__init__()
        self.pieces = pieces  # 1 = ReLU unit, k > 1 = maxout over k linear pieces
        self.conv = nn.Conv2d(c_in, c_out * pieces, kernel, padding=kernel // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(c_out * pieces) if bn else nn.Identity()
        self.stride = stride
        self.drop = nn.Dropout(p) if p > 0 else nn.Identity()
        nonlin = "relu" if pieces == 1 else "linear"
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity=nonlin)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        x = self.bn(self.conv(x))                       # (B, C*k, H, W)
        if self.pieces == 1:
            x = F.relu(x)
        else:
            # channel c*k + j is piece j of unit c; the channel dim splits as a view also
            # in channels_last (it is the innermost dim there)
            x = x.unflatten(1, (-1, self.pieces)).amax(2)  # (B, C, H, W)
        if self.stride == 2:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)   # (B, C, ceil(H/2), ceil(W/2))
        else:
            x = F.pad(x, (0, 1, 0, 1), value=float("-inf"))
            x = F.max_pool2d(x, 2, 1)                   # (B, C, H, W)
        return self.drop(x)


class HouseNumberNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        blocks, c, size = [], 3, cfg.in_size
        for i, (w, s) in enumerate(zip(cfg.widths, cfg.pool_strides)):
            pieces = cfg.maxout_pieces if (i == 0 and cfg.maxout_first) else 1
            blocks.append(ConvBlock(c, w, cfg.kernel, s, pieces, cfg.batch_norm, cfg.dropout))
            c, size = w, _pooled_size(size, s)
        self.features = nn.Sequential(*blocks)
        self.feature_size = c * size * size  # fixed here so forward has no shape logic
        layers, d = [], self.feature_size
        for h in cfg.fc:
            lin = nn.Linear(d, h, bias=not cfg.batch_norm)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
            layers += [lin, nn.BatchNorm1d(h) if cfg.batch_norm else nn.Identity(), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            d = h
        self.fc = nn.Sequential(*layers)
        self.length_head = nn.Linear(d, cfg.n_length_classes)
        self.digit_head = nn.Linear(d, cfg.max_digits * cfg.n_digit_classes)
        for head in (self.length_head, self.digit_head):
            nn.init.normal_(head.weight, std=HEAD_INIT_STD / d ** 0.5)
            nn.init.zeros_(head.bias)

    def forward(self, x):
        # x: (B, 3, in_size, in_size), mean-subtracted pixels
        h = self.features(x)                      # (B, C, s, s)
        h = self.fc(h.flatten(1))                 # (B, fc[-1]); flatten copies if channels_last
        length_logits = self.length_head(h)       # (B, N + 2)
        digit_logits = self.digit_head(h).unflatten(1, (self.cfg.max_digits, self.cfg.n_digit_classes))
        return length_logits, digit_logits        # (B, N + 2), (B, N, C)
