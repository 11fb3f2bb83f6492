"""The `vaejax` command: train, evaluate, sample.

Bad input ends with one line on stderr and exit code 2; nothing is written.
"""

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from vaejax.config import (ACTIVATIONS, CORRUPTIONS, ESTIMATORS, LIKELIHOOD_DATA, LIKELIHOODS,
                           LR_SCHEDULES, POSTERIORS, PRECISIONS, PRESETS, RECIPES, ConfigError,
                           TrainConfig)
from vaejax.input_pipeline import BINARIZATIONS, KNOWN_DATASETS, LEVELS

_EXIT_USAGE = 2


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text):
    try:
        return tuple(int(v) for v in text.split(",")) if text else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _scale(text):
    return None if text == "learned" else float(text)


# Flags that set a field of ModelConfig (dest → field) and of TrainConfig.
_MODEL_FLAGS = ("family", "architecture", "hidden", "conv_channels", "activation", "latent_dim",
                "posterior", "num_categories", "likelihood", "gaussian_scale", "levels",
                "mixture_components", "features_from")
_TRAIN_FLAGS = ("dataset", "binarization", "objective", "num_samples", "betas", "seeds",
                "kl_warmup_epochs", "free_bits", "kl_target", "dual_learning_rate", "estimator",
                "temperature", "min_temperature", "temperature_decay", "epochs", "batch_size",
                "learning_rate", "lr_schedule", "precision", "devices", "checkpoint_every", "init_from",
                "corruption", "labels", "label_seed", "classifier_weight")


def _add_data_flags(p):
    p.add_argument("--manual-dir", help="folder holding the TFDS download files, one sub-folder "
                   "per data set (default: $VAEJAX_MANUAL_DIR)")
    p.add_argument("--data-dir", help="TFDS prepared-data cache (default: $VAEJAX_DATA_DIR or "
                   "~/tensorflow_datasets)")


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and a hint, not the whole usage block."""

    def error(self, message):
        self.exit(_EXIT_USAGE, f"{self.prog}: error: {message}\ntry '{self.prog} --help'\n")


def _shown(value) -> str:
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _document_defaults(parser) -> None:
    """Appends to each train flag's help its choices and its default, which TrainConfig() gives
    (the flags themselves have none, so that a resumed run keeps its own settings)."""
    from vaejax import objectives
    choices = {"dataset": KNOWN_DATASETS, "activation": ACTIVATIONS, "posterior": POSTERIORS,
               "likelihood": LIKELIHOODS, "binarization": BINARIZATIONS, "estimator": ESTIMATORS,
               "objective": objectives.names(), "lr_schedule": LR_SCHEDULES,
               "precision": PRECISIONS}
    config = TrainConfig()
    # Defaults that follow other flags (see _train_config).
    following = {
        "binarization": "the likelihood's: " + ", ".join(
            f"{treatments[0]} for {name}" for name, treatments in LIKELIHOOD_DATA.items()),
        "levels": "the data set's"}
    for action in parser._actions:
        if action.dest not in _TRAIN_FLAGS + _MODEL_FLAGS:
            continue
        settings = config.model if action.dest in _MODEL_FLAGS else config
        notes = [f"one of {', '.join(choices[action.dest])}"] if action.dest in choices else []
        notes += [action.help] if action.help else []
        shown = following.get(action.dest) or _shown(getattr(settings, action.dest))
        default = f"(default: {shown})"
        action.help = " ".join(["; ".join(notes), default]) if notes else default


# evaluate's importance sampling
_IS_DEFAULTS = {"num_samples": 5000, "chunk_size": 100, "batch_size": 100}


def _parser():
    parser = _Parser(prog="vaejax", description="Variational autoencoders in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train models and write a run folder",
                       argument_default=argparse.SUPPRESS)
    t.add_argument("--dataset", help="digits is offline, the others are read through TFDS")
    t.add_argument("--model", dest="family", help="model family: vae, or one "
                   "registered with vaejax.models.register or offered as a 'vaejax.models' entry point")
    t.add_argument("--preset", choices=sorted(PRESETS), help="architecture preset (default: digits)")
    t.add_argument("--recipe", choices=sorted(RECIPES),
                   help="a whole run (data, preset, schedule); the other flags override it")
    t.add_argument("--architecture", choices=("mlp", "conv"))
    t.add_argument("--hidden", type=_ints, help="hidden widths, e.g. 200,200 ('' for none)")
    t.add_argument("--conv-channels", type=_ints)
    t.add_argument("--activation")
    t.add_argument("--latent-dim", type=int, help="latent size (categorical: number of variables)")
    t.add_argument("--posterior")
    t.add_argument("--categories", dest="num_categories", type=int)
    t.add_argument("--likelihood")
    t.add_argument("--gaussian-scale", type=_scale, help="fixed σ of a Gaussian decoder, or 'learned'")
    t.add_argument("--levels", type=int, help="grey levels of the logistic likelihoods")
    t.add_argument("--mixture-components", type=int, help="logistics per value of logistic_mixture")
    t.add_argument("--features-from", help="m1m2: the run folder of the trained model whose "
                   "posterior means M2 models")
    t.add_argument("--binarization", help="how pixels are presented to the likelihood")
    t.add_argument("--objective", help="or one registered with vaejax.objectives.register")
    t.add_argument("-k", "--num-samples", type=int, help="samples per example (IWAE k)")
    t.add_argument("--beta", dest="betas", type=_floats, help="β values, one model each: 0.5,1,4")
    t.add_argument("--seeds", type=_ints, help="seeds, one model each: 0,1,2")
    t.add_argument("--kl-warmup-epochs", type=int)
    t.add_argument("--free-bits", type=float, help="nats per latent dimension")
    t.add_argument("--kl-target", type=float, help="δ of the constrained form KL ≤ δ (β by dual ascent)")
    t.add_argument("--dual-lr", dest="dual_learning_rate", type=float)
    t.add_argument("--estimator", help="gradient estimator for categorical latents")
    t.add_argument("--temperature", type=float)
    t.add_argument("--min-temperature", type=float)
    t.add_argument("--temperature-decay", type=float)
    t.add_argument("--labels", type=int, help="training labels kept (m2), an equal number per "
                   "class; the rest unlabelled")
    t.add_argument("--label-seed", type=int, help="which training labels --labels keeps")
    t.add_argument("--classifier-weight", type=float, help="α on the labelled stream's mean "
                   "−log q(y|x) (m2); default 0.1, Kingma et al.'s α = 0.1·N per example")
    t.add_argument("--corruption", help="NOISE:LEVEL of the denoising-ae inputs, NOISE one of "
                   f"{', '.join(CORRUPTIONS)}, e.g. masking:0.25")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float)
    t.add_argument("--lr-schedule", help="cosine decays to 0 over the epochs")
    t.add_argument("--precision", help="bf16: bfloat16 matmuls and convolutions, float32 "
                   "parameters, optimizer state and loss")
    t.add_argument("--devices", type=int, help="devices to shard each batch over")
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--workdir", help="run folder (default: runs/DATASET-TIME)")
    t.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    t.add_argument("--init-from", help="start from the latest parameters of this run folder "
                   "(same model; the optimiser starts afresh)")
    t.add_argument("--stepwise", action="store_true",
                   help="one jitted step per host batch instead of whole-epoch programs")
    t.add_argument("--input", choices=("auto", "memory", "streaming"),
                   help="streaming: read the training split from storage with Grain per step "
                   "(stepwise); auto (default): stream only a split that does not fit in memory")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--coordinator", help="HOST:PORT of process 0, for one run over several "
                   "processes (jax.distributed); not needed where JAX detects the cluster")
    t.add_argument("--num-processes", type=int, help="processes of the run, one per host")
    t.add_argument("--process-id", type=int, help="this process's index, 0 to N − 1")
    t.add_argument("--process-timeout", type=float, help="seconds a process waits for the "
                   "others to join, or for a heartbeat, before it stops (default: 100)")
    _document_defaults(t)
    _add_data_flags(t)

    e = sub.add_parser("evaluate", help="importance-sampled test log-likelihood of a run")
    e.add_argument("--workdir", required=True)
    # No argparse defaults: a model without a prior gets no importance sampling, and refuses them.
    e.add_argument("-k", "--num-samples", type=int, help="importance samples per test image "
                   f"(default: {_IS_DEFAULTS['num_samples']})")
    e.add_argument("--chunk-size", type=int, help="draws per chunk; a chunk holds chunk × batch "
                   f"decoded images (default: {_IS_DEFAULTS['chunk_size']})")
    e.add_argument("--batch-size", type=int, help="test images per compiled call "
                   f"(default: {_IS_DEFAULTS['batch_size']})")
    e.add_argument("--no-progress", action="store_true")
    _add_data_flags(e)

    s = sub.add_parser("sample", help="sample grid, interpolations and latent traversals of a run")
    s.add_argument("--workdir", required=True)
    s.add_argument("--model", type=int, default=0,
                   help="which model of a sweep (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="of the samples (default: %(default)s)")
    s.add_argument("--out", help="folder for the figures (default: WORKDIR/samples)")
    _add_data_flags(s)
    return parser


def _train_config(given: dict) -> TrainConfig:
    if given.get("resume"):
        from vaejax.train import read_config
        base = read_config(given["workdir"])
    else:
        base = RECIPES[given["recipe"]] if "recipe" in given else TrainConfig()
        if "preset" in given:
            base = dataclasses.replace(base, model=PRESETS[given["preset"]])
    model = dataclasses.replace(base.model, **{k: given[k] for k in _MODEL_FLAGS if k in given})
    config = dataclasses.replace(base, model=model,
                                 **{k: given[k] for k in _TRAIN_FLAGS if k in given})
    if given.get("resume"):
        return config
    # A new run's data treatment and grey levels follow its likelihood and data set.
    if "binarization" not in given and "recipe" not in given:
        config = dataclasses.replace(config, binarization=LIKELIHOOD_DATA.get(
            model.likelihood, (config.binarization,))[0])
    if "levels" not in given and model.likelihood.startswith("logistic"):
        model = dataclasses.replace(model, levels=LEVELS.get(config.dataset, model.levels))
        config = dataclasses.replace(config, model=model)
    return config


def _train(args):
    given = vars(args)
    if given.get("resume") and "workdir" not in given:
        raise ConfigError("--resume needs the --workdir of the run to continue")
    if given.get("resume") and "recipe" in given:
        raise ConfigError("--recipe starts a new run; --resume continues one with its own settings")
    config = _join_processes(given, _train_config(given))
    from vaejax.distributed import is_primary
    from vaejax.train import train_and_evaluate
    workdir = given.get("workdir") or f"runs/{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train_and_evaluate(config, workdir, resume=given.get("resume", False),
                                 data_dir=given.get("data_dir"), manual_dir=given.get("manual_dir"),
                                 progress=not given.get("no_progress"),
                                 stepwise=given.get("stepwise", False),
                                 input=given.get("input", "auto"))
    if not is_primary():
        return
    for m in summary["models"]:
        print(f"model {m['model']} (seed {m['seed']}, β={m['beta']:g}): {_results(m)}")
    print(f"{summary['train_examples_per_second']:,.0f} training examples/s; run folder: {workdir}")


def _join_processes(given: dict, config: TrainConfig) -> TrainConfig:
    """Starts jax.distributed where the flags or the cluster ask for several processes; the
    batch is then sharded over every device of every process unless --devices says otherwise."""
    import jax
    from vaejax import distributed
    count = distributed.initialize(given.get("coordinator"), given.get("num_processes"),
                                   given.get("process_id"),
                                   timeout=given.get("process_timeout", 100.0),
                                   devices=config.devices)
    if count > 1 and "devices" not in given and not given.get("resume"):
        config = dataclasses.replace(config, devices=jax.device_count())
    return config


_LABELS = {"test_log_likelihood": "test log p(x) ≈", "test_elbo": "test ELBO"}
_IN_NATS = ("test_log_likelihood", "test_elbo")


def _results(m: dict) -> str:
    """A model's results in one line: each value with its bits/dim where there is one."""
    shown = []
    for key, value in m.items():
        if key.endswith("_bits_per_dim") or key in ("model", "seed", "beta", "beta_in_use",
                                                    "train_elbo"):
            continue
        text = f"{_LABELS.get(key, key.replace('_', ' '))} {value:.3f}" if isinstance(
            value, float) else f"{key.replace('_', ' ')} {value}"
        if key in _IN_NATS:
            text += " nats"
        if f"{key}_bits_per_dim" in m:
            text += f" ({m[f'{key}_bits_per_dim']:.4f} bits/dim)"
        shown.append(text)
    return ", ".join(shown)


def _evaluate(args):
    args.importance_flags = [k for k in _IS_DEFAULTS if getattr(args, k) is not None]
    for key, default in _IS_DEFAULTS.items():
        setattr(args, key, default if getattr(args, key) is None else getattr(args, key))
    if args.num_samples < 1 or args.chunk_size < 1 or args.batch_size < 1:
        raise ConfigError("--num-samples, --chunk-size and --batch-size must be >= 1")
    chunk_size = min(args.chunk_size, args.num_samples)
    if args.num_samples % chunk_size:
        raise ConfigError(f"--num-samples {args.num_samples} is not a multiple of "
                          f"--chunk-size {chunk_size}")
    from vaejax.train import load_run, read_config, read_summary, run_lock
    read_config(args.workdir)  # a run,
    read_summary(args.workdir)  # and a finished one
    with run_lock(Path(args.workdir)):  # no training writes this run meanwhile
        _evaluate_run(args, load_run(args.workdir), chunk_size)


def _evaluate_run(args, run, chunk_size):
    import math

    import jax

    import vaejax
    from vaejax import evaluation
    from vaejax.objectives import conditioned
    from vaejax.train import (BITS_PER_DIM_CONVENTION, RunError, bits_per_dim_of, headline,
                              is_grey_level, prepare_data, update_summary)
    trainer, state = run.trainer, run.state
    data = prepare_data(run.config, args.data_dir, args.manual_dir)
    # The test metrics of the restored parameters, drawn with the key of the checkpoint's epoch,
    # repeat the values training recorded: a mismatch means the files do not belong together.
    test = jax.device_get(trainer.evaluate(state, trainer.place(data.test_batch()), run.epoch - 1))
    records = {r["model"]: r for r in run.metrics if r["epoch"] == run.epoch}
    if sorted(records) != list(range(run.config.num_models)):
        raise RunError(f"{args.workdir}/metrics.jsonl lacks the records of epoch {run.epoch}, "
                       "the epoch of its checkpoint")
    key = headline(records[0])
    if key not in test:
        raise RunError(f"{args.workdir} records {key}, which this run's evaluation does not give")
    for i, value in enumerate(test[key]):
        if not math.isclose(value, records[i][key], rel_tol=1e-4, abs_tol=1e-4):
            raise RunError(f"the checkpoint of epoch {run.epoch} gives model {i} a {key} of "
                           f"{float(value):.4f}, but training recorded {records[i][key]} for "
                           "that epoch: the checkpoint is not the model that was trained")
    first = run.models[0]
    if not hasattr(first, "prior") and args.importance_flags:
        raise ConfigError(f"the {run.config.model.family} family has no prior, so no "
                          "importance sampling: --num-samples, --chunk-size and --batch-size "
                          "have nothing to set")
    per_model, extra = {}, {"evaluated_epoch": run.epoch}
    if hasattr(first, "prior"):  # a latent-variable model: log p(x) by importance sampling
        tic = time.perf_counter()
        log_px = evaluation.importance_log_likelihood(
            trainer, state, data.test, num_samples=args.num_samples,
            chunk_size=chunk_size, batch_size=args.batch_size,
            progress=not args.no_progress, labels=data.test_labels)
        extra.update(log_likelihood_num_samples=args.num_samples,
                     log_likelihood_seconds=time.perf_counter() - tic)
        per_model["test_log_likelihood"] = [float(v) for v in log_px.mean(axis=1)]
    per_model.update({k: [float(v) for v in test[k]] for k in records[0] if k in test})
    test_codes = evaluation.latent_codes(trainer, state, data.test, labels=data.test_labels)
    if hasattr(first, "prior"):
        per_model["active_units"] = [int(v) for v in evaluation.active_units(test_codes)]
    labels = None if data.test_labels is None else data.test_labels[:1]
    if isinstance(conditioned(first, labels).encode(data.test[:1]), vaejax.Categorical):
        perplexity, unused = evaluation.code_usage(test_codes)
        per_model["code_perplexity"] = [float(v) for v in perplexity]
        per_model["unused_codes"] = [int(v) for v in unused]
    if is_grey_level(run.config) and "test_log_likelihood" in per_model:
        for k in ("test_log_likelihood", "test_elbo")[:1 + ("test_elbo" in per_model)]:
            per_model[f"{k}_bits_per_dim"] = [bits_per_dim_of(run.config, data.test.shape[1:], v)
                                              for v in per_model[k]]
        extra["bits_per_dim_convention"] = BITS_PER_DIM_CONVENTION
    if data.train_labels is not None and data.test_labels is not None:
        train_codes = evaluation.latent_codes(trainer, state, data.train,
                                              labels=data.train_labels)
        known = data.train_labels >= 0  # the labels a run keeps (--labels)
        per_model["linear_probe_accuracy"] = [
            evaluation.linear_probe_accuracy(tr[known], data.train_labels[known], te,
                                             data.test_labels)
            for tr, te in zip(train_codes, test_codes)]
    # Printed before summary.json is written, so a failed write loses nothing.
    for i in range(run.config.num_models):
        print(f"model {i}: {_results({k: v[i] for k, v in per_model.items()})}")
    if "log_likelihood_seconds" in extra:
        print(f"importance sampling (K={args.num_samples}) took "
              f"{extra['log_likelihood_seconds']:.1f} s for {data.test.shape[0]} test images "
              f"(checkpoint of epoch {run.epoch})")
    update_summary(args.workdir, per_model, extra)


def _sample(args):
    from vaejax import plots
    from vaejax.train import load_run, prepare_data
    run = load_run(args.workdir)
    if hasattr(run.model, "given"):
        raise ConfigError(f"the {run.config.model.family} family is conditional: its run "
                          "folder's samples.png holds its samples, one row per class")
    if not hasattr(run.model, "prior"):
        raise ConfigError(f"the {run.config.model.family} family has no prior p(z) to sample "
                          "from; its run folder holds its reconstructions")
    if not 0 <= args.model < run.config.num_models:
        raise ConfigError(f"--model must be in 0..{run.config.num_models - 1}")
    data = prepare_data(run.config, args.data_dir, args.manual_dir)
    out = Path(args.out or Path(args.workdir) / "samples")
    out.mkdir(parents=True, exist_ok=True)
    for path in plots.write_sample_figures(out, run.trainer, run.state, data.test, args.model,
                                           args.seed):
        print(path)


def _exit_at_once(interrupted) -> None:
    print(f"\nvaejax train: {interrupted}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(interrupted.exit_code)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from vaejax import interrupts
    try:
        with interrupts.catch() if args.command == "train" else contextlib.nullcontext() as stops:
            if stops is not None:
                stops.exit_at_once = _exit_at_once
            from vaejax.input_pipeline import DataError
            from vaejax.train import NonFiniteLossError, RunError, WriteError
            try:
                {"train": _train, "evaluate": _evaluate, "sample": _sample}[args.command](args)
            except (ConfigError, DataError, RunError) as error:
                print(f"vaejax {args.command}: error: {error}", file=sys.stderr)
                return _EXIT_USAGE
            except (NonFiniteLossError, WriteError) as error:
                print(f"vaejax {args.command}: {error}", file=sys.stderr)
                return 1
    except interrupts.Interrupted as interrupted:
        print(f"vaejax {args.command}: {interrupted}", file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:  # evaluate and sample: each file is written whole (atomically)
        print(f"vaejax {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
