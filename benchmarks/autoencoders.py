"""The autoencoder family on MNIST: reconstruction error and a linear probe per objective,
and a linear autoencoder against PCA.

Rows: `ae`, `sparse-ae`, `contractive-ae`, `denoising-ae`, each `vaejax train --model
autoencoder` (784-400-20 ReLU, Bernoulli decoder, dynamically binarized MNIST) then
`vaejax evaluate` (test distortion −log p(x|h), squared error, a logistic-regression probe
on the codes). `pca`: a linear autoencoder (no hidden layer, Gaussian decoder: squared
error) on dequantised grey MNIST; the principal angles between its decoder's columns and
scikit-learn's top-d principal components of the training images (Baldi & Hornik 1989:
they should be ≈ 0). Prints a table and one JSON line.

  python benchmarks/autoencoders.py --epochs 30 --out benchmarks/results/autoencoders-mnist.json
  python benchmarks/autoencoders.py --tiny   # the 8×8 digits, seconds
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import emit, machine_info, print_table
from vaejax.cli import main as vaejax_main

ROWS = {  # name: (objective flags, what the penalty weight β means)
    "ae": ([], None),
    "sparse-ae": (["--beta", "0.1"], "β·Σ|h|"),
    "contractive-ae": (["--beta", "0.01"], "β·‖∂h/∂x‖²"),
    "denoising-ae": (["--corruption", "masking:0.25"], None),
}


def _summary(workdir: Path) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def train_row(name: str, args, root: Path) -> dict:
    flags, penalty = ROWS[name]
    workdir = root / name
    train = ["--dataset", args.dataset, "--model", "autoencoder", "--objective", name,
             "--hidden", args.hidden, "--latent-dim", str(args.code_dim), *flags,
             "--epochs", str(args.epochs), "--batch-size", "100", "--lr-schedule", "cosine",
             "--checkpoint-every", str(args.epochs), "--workdir", str(workdir), "--no-progress"]
    if (workdir / "config.json").exists():
        train.append("--resume")
    tic = time.perf_counter()
    if vaejax_main(["train", *train]) or vaejax_main(["evaluate", "--workdir", str(workdir),
                                                      "--no-progress"]):
        raise SystemExit(f"row {name} failed")
    summary = _summary(workdir)
    last = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][-1]
    return {"row": name, "penalty": penalty, "epochs": summary["epochs"],
            "train_wall_seconds": summary["wall_seconds"],
            "process_seconds": time.perf_counter() - tic,
            "distortion": summary["distortion"], "squared_error": summary["squared_error"],
            "linear_probe_accuracy": summary.get("linear_probe_accuracy"),
            "train_penalty": last["train_penalty"], "command": "vaejax train " + " ".join(train)}


def pca_row(args, root: Path) -> dict:
    import scipy.linalg
    from sklearn.decomposition import PCA

    from vaejax.config import ModelConfig, TrainConfig
    from vaejax.train import load_run, prepare_data, train_and_evaluate
    config = TrainConfig(dataset=args.dataset, model=ModelConfig(
        family="autoencoder", hidden=(), latent_dim=args.pca_dim, likelihood="gaussian",
        gaussian_scale=1.0), objective="ae", binarization="dequantize", epochs=args.pca_epochs,
        batch_size=100, learning_rate=1e-2, lr_schedule="cosine", checkpoint_every=args.pca_epochs)
    summary = train_and_evaluate(config, root / "pca", progress=False,
                                 resume=(root / "pca" / "config.json").exists())
    decoder = np.asarray(load_run(root / "pca").model.to_pixels.kernel[...])  # (d, pixels)
    train = prepare_data(config).train
    pca = PCA(args.pca_dim).fit(train.reshape(len(train), -1))
    angles = np.degrees(scipy.linalg.subspace_angles(decoder.T, pca.components_.T))
    return {"row": "pca", "code_dim": args.pca_dim, "epochs": args.pca_epochs,
            "train_wall_seconds": summary["wall_seconds"],
            "max_principal_angle_degrees": float(angles.max()),
            "principal_angles_degrees": sorted(float(a) for a in angles),
            "target_degrees": 1.0, "met": bool(angles.max() < 1.0),
            "settings": "linear AE, Gaussian σ = 1 decoder, dequantised pixels, Adam 1e-2 "
                        "cosine, batch 100; PCA of the training images (not dequantised)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join([*ROWS, "pca"]))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pca-epochs", type=int, default=30)
    parser.add_argument("--pca-dim", type=int, default=10)
    parser.add_argument("--workdir", default="runs/autoencoders")
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--tiny", action="store_true", help="the digits, two epochs")
    args = parser.parse_args()
    args.dataset, args.hidden, args.code_dim = "mnist", "400", 20
    if args.tiny:
        args.dataset, args.hidden, args.code_dim = "digits", "32", 6
        args.epochs, args.pca_epochs, args.pca_dim = 2, 2, 4
    root = Path(args.workdir)
    rows = []
    for name in args.rows.split(","):
        rows.append(pca_row(args, root) if name == "pca" else train_row(name, args, root))
    print_table(f"autoencoders on {args.dataset}", ["row", "epochs", "distortion (nats)",
                                                    "squared error", "probe", "max angle (°)",
                                                    "train s"],
                [[r["row"], r["epochs"], r.get("distortion"), r.get("squared_error"),
                  r.get("linear_probe_accuracy"), r.get("max_principal_angle_degrees"),
                  r["train_wall_seconds"]] for r in rows])
    result = {"dataset": args.dataset, "rows": rows, "machine": machine_info()}
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")
    emit(result)


if __name__ == "__main__":
    main()
