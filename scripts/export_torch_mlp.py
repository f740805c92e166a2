"""Export a jet-tagger-like PyTorch MLP (16-64-32-32-5, ReLU, Softmax) to ONNX, as a user would.

Writes the test fixtures in tests/targets/hls4ml/fixtures/:
  torch_mlp_opset13.onnx   torch.onnx.export(dynamo=False) (the TorchScript exporter), opset 13
  torch_mlp_opset18.onnx   torch.onnx.export(dynamo=True) (the dynamo exporter), opset 18
  torch_mlp_eval.npz       held-out inputs keyed by the ONNX input name, labels ``y``
  torch_mlp_calib.npz      calibration inputs (no labels)

Run with the torch venv (torch is never needed by tapeout or its tests):
  .venv-corpus/bin/python scripts/export_torch_mlp.py
The model is trained for a few epochs on synthetic 5-class data (seeded), so its outputs are
those of a trained network, not of a random one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT = "input.1"  # the ONNX input name (as older torch exports named it) and the data files' key
FEATURES, CLASSES = 16, 5


class JetTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES, 64), nn.ReLU(),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, 32), nn.ReLU(),
            nn.Linear(32, CLASSES), nn.Softmax(dim=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synthetic(n: int, rng: np.random.Generator, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Five overlapping Gaussian classes in 16 features (jet-substructure-like scales)."""
    y = rng.integers(0, CLASSES, n)
    x = centres[y] + rng.normal(0.0, 1.0, (n, FEATURES))
    return x.astype(np.float32), y.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/targets/hls4ml/fixtures")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (CLASSES, FEATURES))
    x_train, y_train = synthetic(4000, rng, centres)
    x_cal, _ = synthetic(500, rng, centres)
    x_eval, y_eval = synthetic(500, rng, centres)

    model = JetTagger()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.NLLLoss()  # the model ends in Softmax: train on its log
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(args.epochs):
        for i in range(0, len(xt), 128):
            opt.zero_grad()
            loss = loss_fn(torch.log(model(xt[i:i + 128]) + 1e-9), yt[i:i + 128])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_eval)).argmax(1).numpy() == y_eval).mean())
    print(f"eval accuracy {acc:.4f}")

    example = (torch.from_numpy(x_eval[:1]),)
    dyn = {"dynamic_axes": {INPUT: {0: "batch"}, "probs": {0: "batch"}}}
    torch.onnx.export(model, example, str(args.out / "torch_mlp_opset13.onnx"), input_names=[INPUT],
                      output_names=["probs"], opset_version=13, dynamo=False, **dyn)
    torch.onnx.export(model, example, str(args.out / "torch_mlp_opset18.onnx"), input_names=[INPUT],
                      output_names=["probs"], opset_version=18, dynamo=True,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False)
    np.savez(args.out / "torch_mlp_eval.npz", **{INPUT: x_eval, "y": y_eval})
    np.savez(args.out / "torch_mlp_calib.npz", **{INPUT: x_cal})
    for p in sorted(args.out.glob("torch_mlp*")):
        print(p.name, p.stat().st_size)


if __name__ == "__main__":
    main()
