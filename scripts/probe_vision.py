"""Can a small vision network learn the catalogue's categories from pictures? (docs/eval-history.md)

Trains one small image classifier on catalogue pictures (category only, 8 classes) and prints test
accuracy every 100 steps. Three networks, all about the size of shop-toy's vision tower:

    cnn         5 conv layers (3x3, BatchNorm, ReLU, max-pool) + mean pool
    vit         16 px patches, 3 pre-norm transformer layers of width 96, 2 heads, mean pool:
                the shape of shop-toy's ViT, as a plain PyTorch model
    vit-binary  the same ViT on the same pictures reduced to a black/white item mask (item =
                far from the border's median colour): shapes without colours
    vit-morph   the same ViT trained on a blend that starts as the mask and turns into the real
                picture over --morph-steps (a curriculum); tested on real pictures

    PYTHONPATH=src python scripts/probe_vision.py --net cnn --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vqaserve.train import synthetic as syn

SIDE = 128


def pictures(split: str, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(n):
        rng = syn._rng(split, seed, i)
        spec = syn.sample_spec(split, rng)
        image = syn.render(spec, rng).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        xs.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        ys.append(spec.category)
    return torch.stack(xs), torch.tensor(ys)


def as_input(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1


def binary_mask(x: torch.Tensor) -> torch.Tensor:
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], 2)
    background = border.median(2).values[:, :, None, None]
    item = (x - background).abs().sum(1, keepdim=True) > 0.4
    return (item.float() * 2 - 1).expand(-1, 3, -1, -1).contiguous()


def cnn() -> nn.Module:
    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128), block(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 8))


class ViT(nn.Module):
    def __init__(self, patch: int = 16, width: int = 96, depth: int = 3, heads: int = 2) -> None:
        super().__init__()
        self.patch = patch
        tokens = (SIDE // patch) ** 2
        self.embed = nn.Linear(3 * patch * patch, width)
        self.position = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 256, 0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p = x.shape[0], self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * p * p)
        hidden = self.blocks(self.embed(patches) + self.position)
        return self.head(self.norm(hidden).mean(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", choices=["cnn", "vit", "vit-binary", "vit-morph"], required=True)
    ap.add_argument("--morph-steps", type=int, default=600, help="vit-morph: steps from mask to picture")
    ap.add_argument("--train", type=int, default=3000, help="training pictures (default 3000)")
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-3 (cnn), 3e-4 (vit)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vqa-probe-pictures.pt"),
                    help="rendered pictures are kept here between runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    if args.cache.exists():
        (xtr, ytr), (xte, yte) = torch.load(args.cache)
    else:
        (xtr, ytr), (xte, yte) = pictures("train", 100, args.train), pictures("test", 100, args.test)
        torch.save(((xtr, ytr), (xte, yte)), args.cache)
    xtr, xte = as_input(xtr), as_input(xte)
    masks = binary_mask(xtr) if args.net == "vit-morph" else None
    if args.net == "vit-binary":
        xtr, xte = binary_mask(xtr), binary_mask(xte)
    print(f"{len(xtr)} training / {len(xte)} test pictures in {time.time() - t0:.0f} s", flush=True)
    net = cnn() if args.net == "cnn" else ViT()
    lr = args.lr or (2e-3 if args.net == "cnn" else 3e-4)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=0.01)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 50)
        idx = torch.randint(0, len(xtr), (args.batch_size,))
        batch = xtr[idx]
        if masks is not None:
            mask_share = max(0.0, 1.0 - step / args.morph_steps)
            batch = mask_share * masks[idx] + (1 - mask_share) * batch
        loss = F.cross_entropy(net(batch), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            net.eval()
            with torch.no_grad():
                accuracy = (net(xte).argmax(-1) == yte).float().mean().item()
            net.train()
            print(f"{args.net} step {step}: loss {loss.item():.3f}, test category accuracy "
                  f"{accuracy:.1%} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
