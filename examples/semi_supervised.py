"""Semi-supervised learning with M2: a few labels and many unlabelled images.

    python examples/semi_supervised.py

Trains the M2 model (Kingma et al. 2014) on the built-in synthetic digits
with ``--labels-per-class`` labels per class and the other images
unlabelled, and the same classifier network on the labels alone; prints the
test accuracy of both. ``scratchvae train --semi-supervised
--labels-per-class 100`` does it from the command line;
``benchmarks/semisupervised.py`` measures it on Fashion-MNIST.
"""
import argparse
import tempfile

from scratchvae.data import load_dataset
from scratchvae.data.datasets import Dataset
from scratchvae.inference.quality import train_supervised_only
from scratchvae.run import Run, TrainConfig, Trainer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels-per-class", type=int, default=10, help="labelled images per class [10]")
    parser.add_argument("--epochs", type=int, default=2, help="M2 epochs over the unlabelled images [2]")
    parser.add_argument("--n", type=int, default=10000, help="training images used [10000]")
    args = parser.parse_args(argv)

    full = load_dataset("synthetic-digits")
    data = Dataset(full.name, full.x_train[:args.n], full.y_train[:args.n], full.x_test[:2000],
                   full.y_test[:2000], full.image_shape)
    config = TrainConfig(semi_supervised=True, labels_per_class=args.labels_per_class, epochs=args.epochs, seed=0)
    with tempfile.TemporaryDirectory() as out_dir:      # the run's checkpoints, discarded here
        run = Run(config, data, out_dir)
        Trainer(run).fit()
    history = run.history
    steps = args.epochs * -(-(args.n - 10 * args.labels_per_class) // 128)
    alone = train_supervised_only(data, args.labels_per_class, steps=steps, seed=0)
    print(f"test accuracy with {args.labels_per_class} labels per class: M2 {history[-1]['test_accuracy']:.4f}, "
          f"the classifier on the labels alone {alone:.4f}")


if __name__ == "__main__":
    main()
