"""Beyond the standard normal on Fashion-MNIST (issue 15): the VampPrior, planar
flows, IWAE with and without DReG, the gradient's signal-to-noise ratio, and a
mixture sampler against N(0, I). Three studies, one JSON record:

1. bounds: dynamically binarised Fashion-MNIST, the reference architecture
   (784-400-20, ReLU, Adam 1e-3, batch 128), 10 epochs, seeds 1-3; the standard
   VAE, the VampPrior (K = 500), 8 planar flows, the IWAE bound with k = 5
   trained with its own gradient and with DReG. Each run is scored as
   `scratchvae evaluate RUN --iw-samples 1000` scores it (same generator): test
   -ELBO (one z per test image) and the importance-weighted log p(x), on the
   test set binarised once with the seed.
2. snr: on the standard VAE of the first seed, the signal-to-noise ratio
   |mean| / std over repeated draws of the noise of every element of the
   encoder's (and the decoder's) gradient of the k-sample bound, k = 1, 5, 50,
   500, with the IWAE gradient and with DReG, on a fixed batch of test images.
   Rainforth et al. (2018): the encoder's falls as k grows with IWAE.
3. sampler: for the standard VAE of every seed, samples with z ~ N(0, I) and
   with z from a 10-component Gaussian mixture fitted by EM to the training
   codes, judged by a classifier trained here on the real training images
   (784-400-10): Frechet distance in its feature space to the real test
   images (with the distance between real training and test images as the
   floor), confidence and class balance of its predictions; and the two
   pictures of 64 samples next to the JSON file (with Matplotlib).

    SCRATCHVAE_DATA=../shared/data python benchmarks/variants.py     # about an hour on 2 cores
    python benchmarks/variants.py --quick                             # a smoke run, well under a minute
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

#: name -> (label, TrainConfig options, command-line options); {K}, {L}, {k} filled from the arguments
VARIANTS = {
    "standard": ("standard VAE", {}, ""),
    "vamp": ("VampPrior, K = {K}", {"prior": "vamp", "pseudo_inputs": "{K}"}, "--prior vamp --pseudo-inputs {K}"),
    "flow": ("planar flows, L = {L}", {"flow": "planar:{L}"}, "--flow planar:{L}"),
    "iwae": ("IWAE, k = {k}", {"iw_samples": "{k}"}, "--iw-samples {k}"),
    "dreg": ("IWAE, k = {k}, DReG", {"iw_samples": "{k}", "iw_gradient": "dreg"},
             "--iw-samples {k} --iw-gradient dreg"),
}
STUDIES = ("bounds", "snr", "sampler")
QUICK = {"dataset": "synthetic-digits", "seeds": "1", "epochs": 1, "iw_eval": 10, "pseudo_inputs": 20,
         "snr_ks": "1,5,50", "snr_draws": 5, "snr_batch": 4, "samples": 300, "classifier_steps": 100,
         "train_examples": 1000, "test_examples": 200}


def _names(choices):
    def parse(text):
        names = text.split(",")
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names
    return parse


def build_parser():
    quick = ", ".join(f"{k} {v}" for k, v in QUICK.items())
    parser = common.parser(__doc__, "variants", quick=f"a smoke run in well under a minute: {quick} "
                                                      "(options given explicitly still win)")
    parser.add_argument("--dataset", help="a named data set, as `scratchvae datasets` lists them "
                                          "[fashion-mnist; synthetic-digits with --quick]")
    parser.add_argument("--seeds", type=common.integers(), help="comma-separated seeds of the runs [1,2,3]")
    parser.add_argument("--epochs", type=int, help="epochs per run [10]")
    parser.add_argument("--variants", type=_names(tuple(VARIANTS)), default=list(VARIANTS),
                        help=f"comma-separated variants to train [{','.join(VARIANTS)}]")
    parser.add_argument("--studies", type=_names(STUDIES), default=list(STUDIES),
                        help=f"comma-separated studies to run [{','.join(STUDIES)}]; snr and sampler need the "
                             "standard variant")
    parser.add_argument("--iw-eval", type=int, help="k of the importance-weighted log p(x) on the test set [1000]")
    parser.add_argument("--pseudo-inputs", type=int, help="K of the VampPrior [500]")
    parser.add_argument("--flow-layers", type=int, default=8, help="L of the planar flow [8]")
    parser.add_argument("--iw-samples", type=int, default=5, help="k of the IWAE and DReG runs [5]")
    parser.add_argument("--snr-ks", type=common.integers(1), help="comma-separated k of the SNR study [1,5,50,500]")
    parser.add_argument("--snr-draws", type=int, help="draws of the noise per k and estimator [200]")
    parser.add_argument("--snr-batch", type=int, help="test images in the SNR study's fixed batch [16]")
    parser.add_argument("--components", type=int, default=10, help="components of the mixture sampler [10]")
    parser.add_argument("--samples", type=int, help="samples per sampler, and real images per set, judged [10000]")
    parser.add_argument("--classifier-steps", type=int, help="Adam steps (batch 100) of the judging classifier [3000]")
    parser.add_argument("--train-examples", type=int, help="use only the first N training images [all]")
    parser.add_argument("--test-examples", type=int, help="use only the first N test images [all]")
    return parser


def _settle(args, parser):
    """Fill the options not given from --quick or the full measurement's defaults."""
    full = {"dataset": "fashion-mnist", "seeds": "1,2,3", "epochs": 10, "iw_eval": 1000, "pseudo_inputs": 500,
            "snr_ks": "1,5,50,500", "snr_draws": 200, "snr_batch": 16, "samples": 10000, "classifier_steps": 3000,
            "train_examples": None, "test_examples": None}
    for key, value in (QUICK if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, minimum in (("seeds", 0), ("snr_ks", 1)):
        if isinstance(getattr(args, key), str):
            setattr(args, key, common.integers(minimum)(getattr(args, key)))
    if {"snr", "sampler"} & set(args.studies) and "standard" not in args.variants:
        parser.error("the snr and sampler studies use the standard VAE: keep standard in --variants")


def _variant(name, args):
    label, options, flags = VARIANTS[name]
    fill = {"K": args.pseudo_inputs, "L": args.flow_layers, "k": args.iw_samples}
    options = {k: (int(v.format(**fill)) if v.strip("{}") in ("K", "k") else v.format(**fill))
               for k, v in options.items()}
    return label.format(**fill), options, flags.format(**fill)


def gradient_snr(model, x, k, dreg, draws, rng):
    """SNR ``|mean| / std`` over ``draws`` draws of the noise of every element of the
    encoder's and the decoder's gradient of the k-sample bound on the batch x (running
    mean and variance, Welford's update, in float64). Elements whose gradient never
    varies (dead units) are counted and left out."""
    import numpy as np
    groups = {"encoder": [n for n in model.params if n.startswith("enc.")],
              "decoder": [n for n in model.params if n.startswith("dec.")]}
    mean = {g: None for g in groups}
    m2 = {g: None for g in groups}
    for t in range(draws):
        _, grads = model.iw_loss_and_grads(x, k, rng=rng, dreg=dreg)
        for g, names in groups.items():
            v = np.concatenate([grads[n].ravel() for n in names]).astype(np.float64)
            if mean[g] is None:
                mean[g], m2[g] = v.copy(), np.zeros_like(v)
            else:
                delta = v - mean[g]
                mean[g] += delta / (t + 1)
                m2[g] += delta * (v - mean[g])
    out = {}
    for g in groups:
        std = np.sqrt(m2[g] / (draws - 1))
        live = std > 0
        snr = np.abs(mean[g][live]) / std[live]
        out[g] = {"median": float(np.median(snr)), "mean": float(snr.mean()), "elements": int(live.sum()),
                  "constant": int((~live).sum())}
    return out


def load_subset(args):
    """The named data set, cut to the first --train-examples and --test-examples images."""
    from scratchvae.data import Dataset, load_dataset
    full = load_dataset(args.dataset)
    return Dataset(full.name, full.x_train[:args.train_examples], full.y_train[:args.train_examples],
                   full.x_test[:args.test_examples], full.y_test[:args.test_examples], full.image_shape)


def train_and_score(args, data, seed, name):
    """Study 1 for one run: train variant ``name`` with ``seed``; with the bounds study, score
    it as ``scratchvae evaluate RUN --iw-samples K`` does. Returns (its row, the run)."""
    import numpy as np

    from scratchvae.inference.evaluate import active_units, elbo, log_likelihood
    from scratchvae.run import Run, TrainConfig, Trainer

    label, options, flags = _variant(name, args)
    config = TrainConfig(dataset=args.dataset, epochs=args.epochs, seed=seed, binarize="dynamic", **options)
    run = Run(config, data, tempfile.mkdtemp())
    Trainer(run, quiet=True).fit()
    row = {"variant": name, "label": label, "seed": seed,
           "train_seconds": sum(r["seconds"] for r in run.history), "history": run.history,
           "command": f"scratchvae train --dataset {args.dataset} --binarize dynamic --epochs {args.epochs} "
                      f"--seed {seed} {flags} --out runs/{name}-{seed}".replace("  ", " ")}
    if "bounds" in args.studies:
        start = time.perf_counter()
        rng = np.random.default_rng(0)             # as scratchvae evaluate RUN --iw-samples K
        row["test"] = elbo(run.model, run.x_test, rng)
        row["log_px"] = float(log_likelihood(run.model, run.x_test, args.iw_eval, rng).mean())
        row["active_units"] = active_units(run.model, run.x_test)[0]
        row["eval_seconds"] = time.perf_counter() - start
        row["command"] += f"; scratchvae evaluate runs/{name}-{seed} --iw-samples {args.iw_eval}"
        print(f"{label}, seed {seed}: test -ELBO {row['test']['total']:.2f}, log p(x) {row['log_px']:.2f} "
              f"(k = {args.iw_eval}), trained in {row['train_seconds']:.0f} s", flush=True)
    return row, run


def bounds_table(args, runs):
    """Study 1's table: test -ELBO and log p(x) per variant, mean [min, max] over the seeds."""
    import numpy as np
    rows = []
    for name in args.variants:
        mine = [r for r in runs if r["variant"] == name]
        elbos, logs = [r["test"]["total"] for r in mine], [r["log_px"] for r in mine]
        rows.append([mine[0]["label"], f"{np.mean(elbos):.2f} [{min(elbos):.2f}, {max(elbos):.2f}]",
                     f"{np.mean(logs):.2f} [{min(logs):.2f}, {max(logs):.2f}]",
                     f"{np.mean([r['train_seconds'] for r in mine]):.0f}"])
    return common.markdown_table(["variant", "test -ELBO, mean [min, max]",
                                  f"log p(x), k = {args.iw_eval}, mean [min, max]", "train s"], rows, "lrrr")


def snr_study(args, run):
    """Study 2: the gradient's SNR of both estimators at every k, on the standard VAE ``run``."""
    import numpy as np
    x = run.x_test[:args.snr_batch]
    rows = []
    for k in args.snr_ks:
        for estimator in ("iwae", "dreg"):
            start = time.perf_counter()
            result = gradient_snr(run.model, x, k, estimator == "dreg", args.snr_draws,
                                  np.random.default_rng([args.seeds[0], k, estimator == "dreg"]))
            rows.append({"k": k, "estimator": estimator, **result, "seconds": time.perf_counter() - start})
            print(f"SNR k = {k:>3} {estimator}: encoder median {result['encoder']['median']:.3f}, "
                  f"decoder median {result['decoder']['median']:.3f}", flush=True)
    return {"seed": args.seeds[0], "batch": args.snr_batch, "draws": args.snr_draws, "rows": rows}


def snr_table(args, snr):
    """Study 2's table: the median SNR of the encoder and the decoder per k and estimator."""
    return common.markdown_table(
        ["k", "encoder SNR, IWAE", "encoder SNR, DReG", "decoder SNR, IWAE", "decoder SNR, DReG"],
        [[k] + [f"{r[part]['median']:.3f}" for part in ("encoder", "decoder")
                for r in sorted((r for r in snr["rows"] if r["k"] == k), key=lambda r: r["estimator"] != "iwae")]
         for k in args.snr_ks], "rrrrr")


def sampler_study(args, data, standard, json_path):
    """Study 3: samples with z ~ N(0, I) and from a mixture fitted to the codes, of the standard
    VAE of every seed, judged against real images; the first seed's pictures beside the record."""
    import numpy as np

    from scratchvae.inference.gmm import fit_to_codes
    from scratchvae.inference.quality import SampleJudge
    from scratchvae.run.run import n_classes

    start = time.perf_counter()
    judge = SampleJudge(data.x_train, data.y_train, n_classes(data), steps=args.classifier_steps, seed=0)
    real = data.x_test[:args.samples]
    floor = judge.score(data.x_train[:len(real)], real)
    sampler = {"classifier_accuracy": judge.accuracy(data.x_test, data.y_test), "real_images": floor,
               "classifier_seconds": time.perf_counter() - start, "seeds": []}
    print(f"\njudge: test accuracy {sampler['classifier_accuracy']:.4f}; real training vs test images: "
          f"Frechet {floor['frechet']:.2f}", flush=True)
    for seed in args.seeds:
        run = standard[seed]
        rng = np.random.default_rng([seed, 200])
        gmm = fit_to_codes(run.model, run.x_train_seen(rng), args.components, rng)
        drawn = {"prior": run.model.sample(args.samples, rng), "gmm": run.model.sample(args.samples, rng, sampler=gmm)}
        scores = {name: judge.score(x, real) for name, x in drawn.items()}
        sampler["seeds"].append({"seed": seed, "em_iterations": len(gmm.log_likelihoods),
                                 "code_log_likelihood": gmm.log_likelihoods[-1], **scores})
        print(f"seed {seed}: " + "; ".join(f"{name} Frechet {s['frechet']:.2f}, confidence {s['confidence']:.3f}, "
                                           f"balance {s['balance']:.3f}" for name, s in scores.items()), flush=True)
        if seed == args.seeds[0]:
            sampler["pictures"] = _pictures(run, drawn, json_path, args.components)
    return sampler


def sampler_table(args, sampler):
    """Study 3's table: Frechet distance, confidence and balance per sampler, the real images as floor."""
    import numpy as np
    floor = sampler["real_images"]
    return common.markdown_table(
        ["z from", "Frechet distance", "confidence", "class balance"],
        [["real training images (floor)", f"{floor['frechet']:.2f}", f"{floor['confidence']:.3f}",
          f"{floor['balance']:.3f}"]] +
        [[label] + [f"{np.mean([s[name][f] for s in sampler['seeds']]):.{p}f}"
                    for f, p in (("frechet", 2), ("confidence", 3), ("balance", 3))]
         for name, label in (("prior", "N(0, I)"), ("gmm", f"mixture of {args.components}"))], "lrrr")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _settle(args, parser)
    import scratchvae as sv

    started = time.perf_counter()
    data = load_subset(args)
    record = {"benchmark": "variants", "when": common.now_iso(), "machine": common.machine_info(),
              "blas": common.blas_info(), "kernels": sv.describe(),
              "config": {k: v for k, v in vars(args).items() if k not in ("save", "json")},
              "data": {"name": data.name, "train": len(data.x_train), "test": len(data.x_test)}}
    json_path = common.output_path(args, "variants")
    record["runs"], standard = [], {}
    for seed in args.seeds:
        for name in args.variants:
            row, run = train_and_score(args, data, seed, name)
            record["runs"].append(row)
            if name == "standard":
                standard[seed] = run
    common.write_json(json_path, record)       # after every study, so that a late failure keeps the rest
    if "bounds" in args.studies:
        print()
        print(bounds_table(args, record["runs"]))
    if "snr" in args.studies:
        record["snr"] = snr_study(args, standard[args.seeds[0]])
        common.write_json(json_path, record)
        print()
        print(snr_table(args, record["snr"]))
    if "sampler" in args.studies:
        record["sampler"] = sampler_study(args, data, standard, json_path)
        print()
        print(sampler_table(args, record["sampler"]))
    record["seconds"] = time.perf_counter() - started
    common.write_json(json_path, record)
    print(f"\n{json_path} ({record['seconds']:.0f} s)")
    return 0


def _pictures(run, drawn, json_path, components):
    """The first 64 samples of each sampler as PNG grids next to the JSON file; returns their file
    names, or None without Matplotlib."""
    try:
        from scratchvae.run import plots
        plots.pyplot()
    except ImportError as e:
        print(f"no pictures: {e}", file=sys.stderr)
        return None
    titles = {"prior": "z ~ N(0, I)", "gmm": f"z from a {components}-component mixture fitted to the training codes"}
    paths = {}
    for name, x in drawn.items():
        path = os.path.splitext(json_path)[0] + f"_{name}.png"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        plots.image_grid(x[:64], run.image_shape, path, f"64 samples, {titles[name]}")
        paths[name] = os.path.basename(path)          # beside the record, wherever it is moved
    return paths


if __name__ == "__main__":
    sys.exit(main())
