"""Trains a small CNN on scikit-learn's digits (a real dataset shipped inside the package)
with plain NumPy, and exports it to ONNX with held-out and calibration splits.

    python scripts/train_digits.py OUT_DIR [--seed 0] [--epochs 30]

Writes OUT_DIR/digits_cnn.onnx (FP32, input "image" [1,1,8,8], output "logits" [1,10]),
OUT_DIR/digits_calibration.npz (training images, for `tvmc compile --calibration-data`)
and OUT_DIR/digits_test.npz (held-out images and labels). Deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

CHANNELS = (1, 8, 16)


def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): 80/20, images in [0, 1], NCHW."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.8 * len(images))
    train, test = order[:cut], order[cut:]
    return images[train], digits.target[train], images[test], digits.target[test]


def _im2col(x: np.ndarray, stride: int) -> np.ndarray:
    """3x3 windows of x padded by 1: [N, C, H, W] -> [N, Ho, Wo, C*9]."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))[:, :, ::stride, ::stride]
    n, c, ho, wo = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho, wo, c * 9)


def _col2im(cols: np.ndarray, shape: tuple[int, ...], stride: int) -> np.ndarray:
    """The adjoint of _im2col: scatters window gradients back onto the input."""
    n, c, h, w = shape
    grad = np.zeros((n, c, h + 2, w + 2), cols.dtype)
    ho, wo = cols.shape[1:3]
    cols = cols.reshape(n, ho, wo, c, 3, 3)
    for i in range(3):
        for j in range(3):
            grad[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += cols[..., i, j].transpose(0, 3, 1, 2)
    return grad[:, :, 1:-1, 1:-1]


class DigitsCNN:
    """conv3x3(1->8)+ReLU, conv3x3 stride 2 (8->16)+ReLU, flatten, dense(256->10)."""

    def __init__(self, rng: np.random.Generator):
        self.params = {}
        for i, (cin, cout) in enumerate(zip(CHANNELS, CHANNELS[1:])):
            self.params[f"w{i}"] = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
            self.params[f"b{i}"] = np.zeros(cout, np.float32)
        self.params["w2"] = rng.normal(0, np.sqrt(2 / 256), (10, 256)).astype(np.float32)
        self.params["b2"] = np.zeros(10, np.float32)

    def forward(self, x: np.ndarray):
        p, cache = self.params, []
        for i, stride in enumerate((1, 2)):
            cols = _im2col(x, stride)
            out = cols @ p[f"w{i}"].reshape(len(p[f"w{i}"]), -1).T + p[f"b{i}"]
            cache.append((x.shape, cols, out))
            x = np.maximum(out, 0).transpose(0, 3, 1, 2)
        flat = x.reshape(len(x), -1)
        return flat @ p["w2"].T + p["b2"], (cache, flat)

    def gradients(self, x: np.ndarray, labels: np.ndarray) -> tuple[float, dict]:
        logits, (cache, flat) = self.forward(x)
        shifted = logits - logits.max(1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        loss = -np.mean(np.log(probs[np.arange(len(x)), labels] + 1e-12))
        d = probs
        d[np.arange(len(x)), labels] -= 1
        d /= len(x)
        grads = {"w2": d.T @ flat, "b2": d.sum(0)}
        d = (d @ self.params["w2"]).reshape(len(x), CHANNELS[2], 4, 4)
        for i, stride in reversed(list(enumerate((1, 2)))):
            shape, cols, out = cache[i]
            d_out = d.transpose(0, 2, 3, 1) * (out > 0)
            w = self.params[f"w{i}"]
            grads[f"w{i}"] = np.einsum("nhwo,nhwk->ok", d_out, cols).reshape(w.shape)
            grads[f"b{i}"] = d_out.sum((0, 1, 2))
            d = _col2im(d_out @ w.reshape(len(w), -1), shape, stride)
        return float(loss), grads


def train(seed: int = 0, epochs: int = 30, batch: int = 32, lr: float = 3e-3) -> tuple[DigitsCNN, tuple]:
    """Adam on the training split; returns the model and the split."""
    data = split(seed)
    train_x, train_y = data[0], data[1]
    rng = np.random.default_rng(seed)
    model = DigitsCNN(rng)
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in model.params.items()}
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(train_x))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            _, grads = model.gradients(train_x[idx], train_y[idx])
            step += 1
            for name, g in grads.items():
                m, v = moments[name]
                m[:] = 0.9 * m + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g * g
                update = lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
                model.params[name] -= update.astype(np.float32)
    return model, data


def to_onnx(model: DigitsCNN) -> onnx.ModelProto:
    p = model.params
    nodes = [
        helper.make_node("Conv", ["image", "w0", "b0"], ["conv0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv0"], ["relu0"], name="relu0"),
        helper.make_node("Conv", ["relu0", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Flatten", ["relu1"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in p.items()],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tvm_npu")
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    model, (train_x, _, test_x, test_y) = train(args.seed, args.epochs)
    accuracy = float(np.mean(model.forward(test_x)[0].argmax(1) == test_y))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(model), args.out_dir / "digits_cnn.onnx")
    np.savez(args.out_dir / "digits_calibration.npz", image=train_x[:200])
    np.savez(args.out_dir / "digits_test.npz", image=test_x, label=test_y)
    print(f"FP32 test accuracy {accuracy:.2%} on {len(test_y)} held-out digits -> {args.out_dir / 'digits_cnn.onnx'}")


if __name__ == "__main__":
    main()
