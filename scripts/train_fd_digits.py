"""Train (or check) the FD-digits classifiers and print their held-out accuracies and the data-vs-data FD floors.

    python scripts/train_fd_digits.py --size 8,16,32 [--cache DIR] [--retrain]

Weights are cached as `classifier_{size}px_{VERSION}.msgpack` (with a `.json` record of accuracy, seed and version)
in DIR, by default `$FASTSAMPLERS_CACHE/fd_digits` or `~/.cache/fastsamplers/fd_digits`. A cached classifier is
reused unless --retrain is given (training is deterministic from the seed, so retraining on the same platform
reproduces it). See `experiments/metrics/fd_digits.py` for the metric, `digits_training.py` for the recipe.
"""

import argparse
import dataclasses
import os
import time

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.metrics import digits_classifier, digits_training, fd_digits


def parse_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes comma-separated sizes from 8, 16, 32, got {text!r}") from None
    bad = [s for s in sizes if s not in digits_classifier.SIZES]
    if not sizes or bad:
        raise argparse.ArgumentTypeError(f"--size takes comma-separated sizes from 8, 16, 32, got {text!r}")
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_sizes, default=list(digits_classifier.SIZES),
                        help="comma-separated image sizes (8, 16, 32); default all")
    parser.add_argument("--cache", default=None,
                        help=f"cache directory (default {digits_classifier.default_cache_dir()})")
    parser.add_argument("--retrain", action="store_true", help="train even if cached weights exist, overwriting them")
    parser.add_argument("--no-floor", action="store_true", help="skip the data-vs-data FD floors")
    args = parser.parse_args(argv)

    results = {}
    for size in args.size:
        path = digits_classifier.weights_path(size, args.cache)
        start = time.perf_counter()
        if args.retrain or not os.path.exists(path):
            classifier = digits_training.train_classifier(size, verbose=True)
            classifier = dataclasses.replace(classifier, path=digits_classifier.save_classifier(classifier, args.cache))
            action = f"trained in {time.perf_counter() - start:.1f} s"
        else:
            classifier = digits_training.load_classifier(size, args.cache, train_if_missing=False)
            action = "cached"
        info = classifier.info
        line = (f"{size:2d} px: held-out accuracy {info['test_accuracy']:.4f} ({info['test_errors']} errors of "
                f"{info['num_test']}), seed {info['seed']}, version {info['version']}, {action}: {classifier.path}")
        if not args.no_floor:
            floor = fd_digits.data_floor(size, args.cache)
            line += (f"\n       FD floor: train vs test {floor['train_vs_test']:.3f}, "
                     f"half vs half {floor['half_vs_half']:.3f}")
        print(line, flush=True)
        results[size] = {"accuracy": info["test_accuracy"], "path": classifier.path}
    return results


if __name__ == "__main__":
    main()
