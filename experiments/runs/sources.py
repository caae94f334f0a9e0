"""Where a runner's model comes from, by name (`config.source`): one registry for every runner that samples.

  "checkpoint"  a training run of this repository: its training config and workdir (`experiments.train`), the EMA
                weights by default (keys train_config, checkpoint_dir, use_ema, resolution);
  "oracle"      the Gaussian-mixture oracle: exact predictions, so every sampler error is measurable (keys oracle,
                seed);
  "pretrained"  a published checkpoint, `models.pretrained.load`: a diffusion model, or a TarFlow (`Source.flow`)
                (keys checkpoint, layout, model_config, params, scheduler_config, variant, null_label, classifier:
                a converted noisy classifier for classifier guidance, "" for none).

`load(config)` checks that the config has the keys its source reads, then returns a `Source`: the `Target` that is
sampled, the labels a class-conditional model is sampled with, and what decides the samples (`identity`, for the
fingerprints of resumable runs) and where they came from (`record`, for results).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax

from fastsamplers import core
from fastsamplers import schedules
from fastsamplers.experiments.train.checkpoints import Target, checkpoint_target
from fastsamplers.models import GaussianMixture, predictions
from fastsamplers.models import pretrained as pretrained_models

SOURCES = core.Registry("source")


@dataclasses.dataclass(frozen=True)
class Source:
    """A model to sample, from `load`.

    `target` is what is sampled (process, prediction, example shape, model_fn and its args). A class-conditional
    model is sampled with balanced labels, sample k with `classes[k % len(classes)]`, and guided with `null_label`
    as the unconditional call (None: it has none); `classes` is None for an unconditional model. With a noisy
    `classifier` (a `models.pretrained.PretrainedClassifier`, for classifier guidance) the labels are its classes
    even for an unconditional model, which then ignores them. A latent model (DiT, SiT) samples `target.shape`
    latents that `decode(decode_params, x)` turns into images of `image_shape` (None: the samples are the images; a
    latent model without its VAE has image_shape but no decode, so what needs images refuses it); `guidance_mask`
    is the channels its published guidance guides (None: all; `samplers.guided`'s channel_mask);
    `variance_model_fn` the checkpoint's model_fn with its learned variance's channels ([eps | v], for the `ddpm`
    solver's variance="learned"), None where it has none. A normalizing flow (`models.pretrained.PretrainedFlow`,
    Apple's TarFlow) is `flow`: it is sampled by inverting it (`samplers.causal`), not by a solver, and its `target`
    holds only its image shape, parameters (`args`), class count and description (process, prediction and model_fn
    None).
    """

    target: Target
    classes: tuple | None
    null_label: int | None
    identity: dict
    record: dict
    classifier: pretrained_models.PretrainedClassifier | None = None
    decode: Callable[[Any, jax.Array], jax.Array] | None = None  # decode(decode_params, latents) -> images
    decode_params: Any = None
    image_shape: tuple | None = None
    guidance_mask: tuple | None = None
    variance_model_fn: Callable | None = None
    flow: pretrained_models.PretrainedFlow | None = None

    @property
    def images(self) -> tuple:
        """The shape of the images the samples become (decoded for a latent model)."""
        return tuple(self.image_shape or self.target.shape)


def _source(name, *config_keys):
    def add(factory):
        factory.config_keys = config_keys
        return SOURCES.register(name)(factory)

    return add


def load(config) -> Source:
    """The `Source` named by `config.source`, after checking that the config has the keys it reads."""
    factory = SOURCES.lookup(config.source)
    missing = [k for k in factory.config_keys if k not in config]
    if missing:
        raise ValueError(f"source {config.source!r} reads the config keys {missing}, which this config does not have")
    return factory(config)


def _trained(target, identity, record):
    """A Source of a Target of this repository (the null label after the classes, as the training runs use)."""
    classes = tuple(range(target.num_classes)) if target.num_classes else None
    return Source(target, classes, target.num_classes or None, identity, record)


@_source("checkpoint", "train_config", "checkpoint_dir", "use_ema", "resolution")
def checkpoint(config) -> Source:
    for key in ("train_config", "checkpoint_dir"):
        if not config[key]:
            raise ValueError(f"source 'checkpoint' needs {key} (the training config file.py[:arg] and its --workdir)")
    target = checkpoint_target(config.train_config, config.checkpoint_dir, config.use_ema, config.resolution)
    identity = {"source": "checkpoint", "train_config": config.train_config,
                "checkpoint_dir": os.path.abspath(config.checkpoint_dir), "step": target.step,
                "use_ema": bool(config.use_ema), "resolution": int(config.resolution)}
    return _trained(target, identity, dict(identity, description=target.description))


def oracle_target(oracle_cfg, seed) -> Target:
    """The Gaussian-mixture oracle: exact predictions, so every sampler error is measurable."""
    process = schedules.get_process(oracle_cfg.process)
    predictions.check_kind(oracle_cfg.prediction)
    oracle = GaussianMixture.random(jax.random.fold_in(jax.random.PRNGKey(seed), 0), dim=oracle_cfg.dim,
                                    num_components=oracle_cfg.num_components)
    return Target(process, oracle_cfg.prediction, (oracle_cfg.dim,), oracle.model_fn(process, oracle_cfg.prediction),
                  oracle=oracle, description=f"oracle: {oracle_cfg.num_components}-component mixture in "
                                             f"{oracle_cfg.dim}-d, {oracle_cfg.process}")


@_source("oracle", "oracle", "seed")
def oracle(config) -> Source:
    identity = {"source": "oracle", "oracle": config.oracle.to_dict(), "seed": config.seed}
    target = oracle_target(config.oracle, config.seed)
    return _trained(target, identity, dict(identity, description=target.description))


@_source("pretrained", "checkpoint", "layout", "model_config", "params", "scheduler_config", "variant", "null_label",
         "classifier")
def pretrained(config) -> Source:
    if not config.checkpoint:
        raise ValueError("config.checkpoint is empty: give a diffusers folder, a score_sde checkpoint_N file or a "
                         "folder of scripts/convert_checkpoint.py")
    if not os.path.exists(config.checkpoint):
        raise FileNotFoundError(f"checkpoint {config.checkpoint!r} not found")
    layout = pretrained_models.LAYOUTS.check(config.layout) if config.layout else \
        pretrained_models.detect_layout(config.checkpoint)
    options = _load_options(config, layout)
    model = pretrained_models.load(config.checkpoint, layout=layout, **options)
    if not isinstance(model, (pretrained_models.Pretrained, pretrained_models.PretrainedFlow)):
        raise ValueError(f"{config.checkpoint} is a {type(model).__name__}, not a diffusion model or a flow to sample")
    files = _checkpoint_files(model, config, layout, options)
    record = {"path": os.path.abspath(config.checkpoint), "layout": layout, "load_options": options, "files": files,
              "sha256": core.fingerprint(list(files.values()))}
    identity = {"checkpoint_sha256": record["sha256"], "layout": layout,
                "load_options": {k: v for k, v in options.items() if k != "scheduler_config"}}
    num_classes = model.num_classes
    description = os.path.basename(os.path.normpath(config.checkpoint))
    if isinstance(model, pretrained_models.PretrainedFlow):  # the mean class embedding is its unconditional branch
        if config.classifier:
            raise ValueError(f"{config.checkpoint} is a normalizing flow: classifier guidance is for diffusion models")
        target = Target(None, None, model.image_shape, None, args=model.params, num_classes=num_classes or 0,
                        description=description)
        identity["noise_std"] = model.noise_std
        return Source(target, None if not num_classes else tuple(range(num_classes)), None, identity, record,
                      image_shape=tuple(model.image_shape), flow=model)
    classes = None if num_classes is None else tuple(c for c in range(num_classes) if c != model.null_label)
    classifier = _classifier(config.classifier, model) if config.classifier else None
    if classifier is not None:
        classes = classes or tuple(range(classifier.num_classes))
        files = {os.path.abspath(os.path.join(classifier.source, name)): core.sha256_file(
            os.path.join(classifier.source, name)) for name in ("config.json", "model.safetensors")}
        record["classifier"] = {"path": os.path.abspath(config.classifier), "files": files}
        identity["classifier_sha256"] = core.fingerprint(list(files.values()))
    target = Target(model.process, model.prediction, model.latent_shape or model.image_shape, model.model_fn,
                    args=model.params, num_classes=num_classes or 0, description=description)
    decode = model.decode  # functools.partial(fn, vae_params): the weights go into programs as arguments
    return Source(target, classes, model.null_label, identity, record, classifier,
                  decode=None if decode is None else decode.func,
                  decode_params=None if decode is None else decode.args[0], image_shape=tuple(model.image_shape),
                  guidance_mask=model.guidance_mask, variance_model_fn=model.variance_model_fn)


def _classifier(path, model):
    """The noisy classifier at `path`, checked against the model it guides (images, time mapping)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"classifier {path!r} not found")
    classifier = pretrained_models.load(path)
    if not isinstance(classifier, pretrained_models.PretrainedClassifier):
        raise ValueError(f"classifier {path!r} is a {type(classifier).__name__}, not a noisy classifier")
    if tuple(classifier.image_shape) != tuple(model.image_shape) or classifier.process != model.process:
        raise ValueError(f"classifier {path!r} takes {tuple(classifier.image_shape)} images on process "
                         f"{classifier.process.name!r}; the model makes {tuple(model.image_shape)} on "
                         f"{model.process.name!r}")
    if model.num_classes is not None and model.num_classes != classifier.num_classes:
        raise ValueError(f"classifier {path!r} has {classifier.num_classes} classes, the model "
                         f"{model.num_classes}")
    return classifier


# layout -> {config key: its `models.pretrained.load` option}; the other layouts take none of these keys. A key at its
# default ("", None, or "params_ema") is not passed.
LOAD_OPTIONS = {"diffusers": {"scheduler_config": "scheduler_config", "variant": "variant", "null_label": "null_label"},
                "score_sde": {"model_config": "config", "params": "params"}}
_DEFAULTS = {"params": "params_ema"}


def _load_options(config, layout):
    """The keywords of models.pretrained.load for the layout; a set option of another layout is an error."""
    given = {key: config[key] for keys in LOAD_OPTIONS.values() for key in keys
             if config[key] not in ("", None, _DEFAULTS.get(key))}
    ours = LOAD_OPTIONS.get(layout, {})
    wrong = sorted(set(given) - set(ours))
    if wrong:
        raise ValueError(f"{config.checkpoint} is a {layout} checkpoint: the option(s) {wrong} are for another "
                         f"layout ({list(pretrained_models.LAYOUTS)})")
    return {ours[key]: value for key, value in given.items()}


def _checkpoint_files(model, config, layout, options):
    """{absolute path: SHA-256} of the files the checkpoint was read from."""
    if layout == "diffusers":
        from fastsamplers.models.pretrained import diffusers as diffusers_layout

        files = list(diffusers_layout.find_files(config.checkpoint, options.get("variant"),
                                                 options.get("scheduler_config")))
    elif os.path.isdir(model.source):  # a converted folder or a pipeline root: its configs and weights, vae/ included
        files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(model.source) for name in names
                       if name.endswith((".json", ".safetensors")))
    else:
        files = [model.source] + ([config.model_config] if os.path.isfile(config.model_config) else [])
    return {os.path.abspath(f): core.sha256_file(f) for f in files}
