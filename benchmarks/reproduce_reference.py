"""Reproduce PyTorch's reference VAE on Fashion-MNIST: test loss by epoch,
scratchvae against the same model in PyTorch, mean and spread over seeds.

The configuration of pytorch/examples' vae/main.py: encoder 784-400-20 (ReLU),
decoder 20-400-784 (ReLU), Bernoulli likelihood on grey levels (binary
cross-entropy summed over pixels), analytic KL, beta 1, Adam lr 1e-3, batch
128 shuffled, PyTorch's default initialisation, 10 epochs; test loss = (BCE +
KL) summed over the test set / 10,000, with z sampled. Seeds differ between
libraries, so compare means over seeds. PyTorch runs only when installed.

    SCRATCHVAE_DATA=../shared/data python benchmarks/reproduce_reference.py [--seeds 1,2,3]
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# the run of the PyTorch example on this machine (seed 1)
PUBLISHED = [262.39, 253.23, 249.99, 248.20, 247.01, 245.84, 245.23, 244.94, 244.63, 244.17]


def run_scratchvae(data, epochs, seed):
    from scratchvae.run import Run, TrainConfig, Trainer
    config = TrainConfig(dataset="fashion-mnist", epochs=epochs, seed=seed)
    trainer = Trainer(Run(config, data, tempfile.mkdtemp()), quiet=True)
    trainer.fit()
    return [r["test_total"] for r in trainer.run.history]


def run_torch(data, epochs, seed):
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(seed)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.fc4(F.relu(self.fc3(z))), mu, logvar

    def loss_sum(logits, x, mu, logvar):
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_train, x_test = torch.from_numpy(data.x_train), torch.from_numpy(data.x_test)
    history = []
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(128):
            x = x_train[idx]
            logits, mu, logvar = model(x)
            loss = loss_sum(logits, x, mu, logvar) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(x_test), 128):
                x = x_test[i:i + 128]
                logits, mu, logvar = model(x)
                total += float(loss_sum(logits, x, mu, logvar))
        history.append(total / len(x_test))
    return history


def torch_ready(args) -> bool:
    """Whether PyTorch runs (installed and not ``--no-torch``); sets its threads."""
    if args.no_torch:
        return False
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: only scratchvae runs (pip install torch==2.13.0)")
        return False
    torch.set_num_threads(args.threads)
    return True


def table(runs, seeds, epochs):
    """Test loss by epoch: mean (min-max) over seeds per library, beside the issue's PyTorch run."""
    import numpy as np

    def stats(lib, e):
        vals = [runs[lib][s][e] for s in seeds]
        return f"{np.mean(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"

    libraries = [lib for lib in ("scratchvae", "pytorch") if runs[lib]]
    names = {"scratchvae": "scratchvae", "pytorch": "PyTorch"}
    headers = (["epoch"] + [f"{names[lib]} mean (min-max), {len(seeds)} seeds" for lib in libraries]
               + ["issue's PyTorch run (seed 1)"])
    rows = [[e + 1] + [stats(lib, e) for lib in libraries] + [f"{PUBLISHED[e]:.2f}" if e < len(PUBLISHED) else ""]
            for e in range(epochs)]
    return common.markdown_table(headers, rows, "r" * len(headers))


def main(argv=None) -> int:
    parser = common.parser(__doc__, "reproduce_reference", threads="BLAS/Numba/torch threads")
    parser.add_argument("--seeds", type=common.integers(), default="1,2,3",
                        help="comma-separated seeds, per library [1,2,3]")
    parser.add_argument("--epochs", type=int, default=10, help="epochs [10]")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    args = parser.parse_args(argv)
    common.apply_thread_env(args.threads)
    import scratchvae as sv
    from scratchvae.data import load_dataset

    data = load_dataset("fashion-mnist")
    runs = {"scratchvae": {}, "pytorch": {}}
    libraries = {"scratchvae": run_scratchvae, **({"pytorch": run_torch} if torch_ready(args) else {})}
    for seed in args.seeds:                   # alternate the libraries seed by seed
        for lib, train in libraries.items():
            runs[lib][seed] = train(data, args.epochs, seed)
            print(f"{lib:<10} seed {seed}: " + " ".join(f"{v:.2f}" for v in runs[lib][seed]), flush=True)
    print()
    print(table(runs, args.seeds, args.epochs))
    json_path = common.output_path(args, "reproduce_reference")
    common.write_json(json_path, {"benchmark": "reproduce_reference", "when": common.now_iso(),
                                  "machine": common.machine_info(), "blas": common.blas_info(), "kernels": sv.describe(),
                                  "versions": common.package_versions(["numpy", "numba", "torch", "scratchvae"]),
                                  "seeds": args.seeds, "test_loss_by_epoch": {k: {str(s): v for s, v in r.items()}
                                                                              for k, r in runs.items()},
                                  "published_pytorch_seed1": PUBLISHED})
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
