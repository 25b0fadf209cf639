"""Check the synthetic face generator: speed, a picture of it, and (optionally) how learnable it is.

    python scripts/check_synthetic.py [OUT.png] [--train] [--model resnet18|small] [--epochs 5]

(a) times the generation of 10,000 faces of 100x100; (b) saves a PNG grid (rows = classes, columns =
samples), full resolution on the left and x8-downsampled-then-upsampled on the right; (c) with
``--train``, trains a classifier on 3,000 faces at 64x64 input (Adam 1e-3, batch 64) once on full
resolution and once on x8-degraded faces, and prints the test accuracies as JSON (plus the accuracy of the
full-resolution model on x8 test faces, and per-class accuracies).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from lrfer.data.synthetic import CLASS_NAMES, make_synthetic_faces
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from lrfer.data.synthetic import CLASS_NAMES, make_synthetic_faces


def degrade(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Float images (N, 3, S, S) -> bicubic-downsampled by ``factor`` (antialiased) and bicubic back up."""
    if factor == 1:
        return images
    size = images.shape[-1]
    low = max(1, int(size / factor + 0.5))
    small = F.interpolate(images, size=(low, low), mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def save_grid(path: Path, per_class: int, size: int, seed: int, factor: int) -> None:
    from PIL import Image

    k = len(CLASS_NAMES)
    images, labels = make_synthetic_faces(per_class * k * 2, image_size=size, seed=seed)
    rows = []
    for c in range(k):
        rows.append(images[labels == c][:per_class])
    full = torch.stack(rows).float() / 255  # (k, per_class, 3, S, S)
    low = degrade(full.flatten(0, 1), factor).view_as(full)
    gap = torch.ones(3, size, max(2, size // 4))
    lines = [torch.cat([*full[c], gap, *low[c]], dim=-1) for c in range(k)]  # (3, S, W) per class
    grid = torch.cat(lines, dim=-2)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    print(f"saved {path} (rows: {', '.join(CLASS_NAMES)}; left x1, right x{factor})")


class SmallCNN(torch.nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        chans = [3, 32, 64, 128, 192]
        for cin, cout in itertools.pairwise(chans):
            layers += [
                torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(inplace=True),
                torch.nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(inplace=True),
                torch.nn.MaxPool2d(2),
            ]
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def build_model(name: str, num_classes: int) -> torch.nn.Module:
    if name == "small":
        return SmallCNN(num_classes)
    return import_torchvision().models.resnet18(num_classes=num_classes)


_torchvision_stub: torch.library.Library | None = None


def import_torchvision():
    """torchvision, defining the schemas of its C ops first when they cannot load (CPU-only torch)."""
    global _torchvision_stub
    try:
        from lrfer.compat import import_torchvision as lrfer_import
    except ImportError:
        pass
    else:
        return lrfer_import()
    try:
        import torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        _torchvision_stub = torch.library.Library("torchvision", "DEF")
        _torchvision_stub.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _torchvision_stub.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision


def prepare(images: torch.Tensor, factor: int, input_size: int) -> torch.Tensor:
    x = degrade(images.float() / 255, factor)
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    return (x - 0.5) / 0.25


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> dict:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    per_class = {CLASS_NAMES[c]: round(float((pred[y == c] == c).float().mean()), 3) for c in range(k)}
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    return {
        "accuracy": round(float((pred == y).float().mean()), 4),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def train(args: argparse.Namespace, factor: int, data: dict) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    x, y = prepare(data["train_x"], factor, args.input_size), data["train_y"]
    model = build_model(args.model, len(CLASS_NAMES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        total, t0 = 0.0, time.perf_counter()
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(
            f"  x{factor} epoch {epoch + 1}/{args.epochs} loss {total / len(x):.3f} "
            f"({time.perf_counter() - t0:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", default="/tmp/synthetic_grid.png", type=Path)
    parser.add_argument("--per-class", type=int, default=8, help="grid columns")
    parser.add_argument("--size", type=int, default=100, help="generated image size")
    parser.add_argument("--factor", type=int, default=8, help="downsampling factor of the low-res check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", action="store_true", help="train and report x1 / low-res accuracy")
    parser.add_argument("--model", choices=("resnet18", "small"), default="resnet18")
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=1400)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    make_synthetic_faces(10_000, image_size=100, seed=args.seed)
    gen_seconds = time.perf_counter() - t0
    print(f"generated 10,000 faces of 100x100 in {gen_seconds:.2f}s ({torch.get_num_threads()} threads)")
    save_grid(args.out, args.per_class, args.size, args.seed, args.factor)
    if not args.train:
        return

    train_x, train_y = make_synthetic_faces(args.train_size, image_size=args.size, seed=args.seed + 1)
    test_x, test_y = make_synthetic_faces(args.test_size, image_size=args.size, seed=args.seed + 2)
    data = {"train_x": train_x, "train_y": train_y}
    k = len(CLASS_NAMES)
    results: dict = {
        "generation_seconds_10k": round(gen_seconds, 2),
        "model": args.model,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "input_size": args.input_size,
        "image_size": args.size,
        "factor": args.factor,
        "chance": round(1 / k, 4),
    }
    t0 = time.perf_counter()
    model = train(args, 1, data)
    results["x1"] = evaluate(model, prepare(test_x, 1, args.input_size), test_y, k)
    results["x1_model_on_low"] = evaluate(model, prepare(test_x, args.factor, args.input_size), test_y, k)
    model = train(args, args.factor, data)
    results["low"] = evaluate(model, prepare(test_x, args.factor, args.input_size), test_y, k)
    results["train_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results, indent=1))
    x1, low = results["x1"]["accuracy"], results["low"]["accuracy"]
    summary = {"x1_accuracy": x1, f"x{args.factor}_accuracy": low, "drop_points": round(100 * (x1 - low), 1)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
