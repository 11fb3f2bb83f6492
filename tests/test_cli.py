"""The `vaejax` command: a complete run, evaluation, sampling, and one clear error per bad input."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from vaejax import input_pipeline
from vaejax.cli import _parser, _train_config, main
from vaejax.config import LR_SCHEDULES, POSTERIORS, PRESETS, RECIPES, TrainConfig

QUICK = ["--epochs", "2", "--hidden", "32", "--latent-dim", "3", "--no-progress"]


def test_train_evaluate_sample(tmp_path, capsys):
    """train writes a run folder; evaluate adds the IS log-likelihood; sample writes figures."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *QUICK]) == 0
    assert "test ELBO" in capsys.readouterr().out
    trained = json.loads((run / "summary.json").read_text())
    blanked = dict(trained, models=[dict(m, test_elbo=0.0, rate=0.0, distortion=0.0)
                                    for m in trained["models"]], test_elbo=0.0, rate=0.0, distortion=0.0)
    (run / "summary.json").write_text(json.dumps(blanked))
    assert main(["evaluate", "--workdir", str(run), "-k", "200", "--chunk-size", "100",
                 "--no-progress"]) == 0
    assert "test ELBO" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    # evaluate recomputes the test ELBO, rate and distortion from the checkpoint: the values
    # training recorded for its last epoch, with the same key.
    for key in ("test_elbo", "rate", "distortion"):
        assert summary[key] == pytest.approx(trained[key], rel=1e-5), key
    # log p(x) ≥ ELBO in expectation; the IS estimate with K = 200 sits above the one-draw test ELBO.
    assert summary["test_log_likelihood"] > summary["test_elbo"]
    assert summary["active_units"] <= 3 and 0 < summary["linear_probe_accuracy"] <= 1
    assert summary["log_likelihood_num_samples"] == 200
    assert main(["sample", "--workdir", str(run)]) == 0
    for name in ("samples.png", "interpolations.png", "traversals.png"):
        assert (run / "samples" / name).stat().st_size > 0


def test_python_m_vaejax_help_shows_choices_and_defaults():
    """`python -m vaejax` is the command; train --help lists each flag's choices and the
    default TrainConfig() gives it."""
    out = subprocess.run([sys.executable, "-m", "vaejax", "train", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = " ".join(out.stdout.split())  # argparse wraps the help text
    config = TrainConfig()
    for expected in (f"one of {', '.join(input_pipeline.KNOWN_DATASETS)}",
                     f"one of {', '.join(POSTERIORS)} (default: {config.model.posterior})",
                     f"one of {', '.join(LR_SCHEDULES)}", "one of ae, contractive-ae, denoising-ae, elbo, iwae",
                     f"--epochs EPOCHS (default: {config.epochs})",
                     f"(default: {config.learning_rate})",
                     f"e.g. 200,200 ('' for none) (default: {','.join(map(str, config.model.hidden))})"):
        assert expected in text, expected


def test_usage_error_is_one_line_and_a_hint(capsys):
    """A malformed flag: argparse's one line and where to look, not the usage block; exit 2."""
    with pytest.raises(SystemExit) as stop:
        main(["train", "--epochs", "x"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "vaejax train: error: argument --epochs: invalid int value: 'x'",
        "try 'vaejax train --help'"]


def test_beta_sweep_from_the_command_line(tmp_path):
    """--beta a,b,c trains one model per β in one run, with the R–D panel drawn."""
    run = tmp_path / "sweep"
    assert main(["train", "--workdir", str(run), "--beta", "0.5,1,2", *QUICK]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [m["beta"] for m in summary["models"]] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("flags,message", [
    (["--dataset", "imagenet"], "unknown data set 'imagenet'; known: digits, mnist"),
    (["--beta", "1,-0.5"], "beta must be >= 0"),
    (["--latent-dim", "0"], "latent size must be >= 1"),
    (["--batch-size", "5000"], "batch size 5000 is larger than the 1497 training examples"),
    (["--posterior", "poisson"], "posterior must be one of"),
    (["--devices", "64"], "64 devices asked for"),
    (["--resume"], "holds no run"),
    (["--init-from", "/nonexistent/run"], "/nonexistent/run holds no run"),
    (["--learning-rate", "inf"], "learning_rate must be a finite number; got inf"),
    (["--dual-lr", "nan"], "dual_learning_rate must be a finite number; got nan"),
    (["--epochs", "100000000000000000000"], "epochs must be an integer of magnitude at most"),
    (["--seeds", "100000000000000000000"], "seeds must be a list, each an integer"),
    # A likelihood must be a distribution of the data as presented (grey digits: 17 levels).
    (["--likelihood", "gaussian", "--gaussian-scale", "learned", "--binarization", "none"],
     "the gaussian likelihood needs binarization 'dequantize', got 'none'"),
    (["--likelihood", "continuous_bernoulli", "--binarization", "dynamic"],
     "the continuous_bernoulli likelihood needs binarization 'dequantize'"),
    (["--likelihood", "logistic", "--binarization", "dequantize"],
     "the logistic likelihood needs binarization 'none'"),
    (["--binarization", "none"], "digits has 17 grey levels: under a Bernoulli likelihood"),
    (["--binarization", "dequantize"], "the bernoulli likelihood needs binarization 'dynamic' "
     "or 'static', got 'dequantize'"),
    (["--likelihood", "logistic", "--levels", "256"], "digits has 17 grey levels: set levels=17"),
    (["--likelihood", "logistic_mixture", "--mixture-components", "0"],
     "mixture_components must be >= 1"),
    # A setting another likelihood reads, or a family and objective that do not train each other.
    (["--levels", "17"], "levels is read by the logistic and logistic_mixture likelihood only"),
    (["--likelihood", "logistic", "--mixture-components", "3"],
     "mixture_components is read by the logistic_mixture likelihood only"),
    (["--gaussian-scale", "learned"], "gaussian_scale is read by the gaussian likelihood only"),
    (["--objective", "vq"], "the vq objective is for the vqvae family, not 'vae'"),
    (["--model", "vqvae"], "the vqvae family trains with objective 'vq', not 'elbo'"),
])
def test_bad_input_one_error_nothing_written(tmp_path, capsys, flags, message):
    """Each bad input: exit code 2, one line naming the problem, no run folder."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *QUICK, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not run.exists()


@pytest.mark.parametrize("likelihood, treatment", [("gaussian", "dequantize"),
                                                   ("logistic_mixture", "none")])
def test_grey_level_runs_report_bits_per_dim(tmp_path, capsys, likelihood, treatment):
    """Without --binarization a grey-level likelihood gets its own data treatment; train and
    evaluate report bits/dim = −log p/(D ln 2) (+ log2 L per value for dequantised data)."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--likelihood", likelihood, *QUICK]) == 0
    assert "bits/dim" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["binarization"] == treatment and config["model"]["levels"] == (
        17 if likelihood == "logistic_mixture" else 256)
    assert main(["evaluate", "--workdir", str(run), "-k", "20", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    added = np.log2(17) if treatment == "dequantize" else 0.0
    for key in ("test_elbo", "test_log_likelihood"):
        bits = -summary[key] / (64 * np.log(2)) + added
        assert summary[f"{key}_bits_per_dim"] == pytest.approx(bits, rel=1e-6), key
    assert summary["test_log_likelihood_bits_per_dim"] <= summary["test_elbo_bits_per_dim"] + 0.05
    assert "dequantised" in summary["bits_per_dim_convention"]


def test_nan_pixels_are_refused(tmp_path, capsys, monkeypatch):
    """Data with NaN pixels stop the run before anything is written."""
    real = input_pipeline._load_digits

    def with_nan(split):
        images, labels = real(split)
        images[3, 2, 2, 0] = np.nan
        return images, labels

    monkeypatch.setattr(input_pipeline, "_load_digits", with_nan)
    assert main(["train", "--workdir", str(tmp_path / "run"), *QUICK]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_workdir_with_another_config_needs_resume(tmp_path, capsys):
    """A folder holding a run is not overwritten: another config is an error naming the difference."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *QUICK]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--workdir", str(run), *QUICK, "--learning-rate", "0.01"]) == 2
    assert "another config (differs in: learning_rate)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(["train", "--workdir", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_evaluate_needs_a_run(tmp_path, capsys):
    """evaluate on a folder without a run is one clear error."""
    assert main(["evaluate", "--workdir", str(tmp_path), "--no-progress"]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_evaluate_needs_whole_chunks(tmp_path, capsys):
    """K must be a whole number of chunks: one clear error before any run is read."""
    assert main(["evaluate", "--workdir", str(tmp_path), "-k", "250", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--num-samples 250 is not a multiple of --chunk-size 100" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("flags,message", [
    (["--objective", "iwae", "--beta", "0.25,4"], "the iwae objective does not read betas"),
    (["--objective", "iwae", "--kl-warmup-epochs", "2"],
     "the iwae objective does not read kl_warmup_epochs"),
    (["--objective", "iwae", "--kl-target", "3"], "the iwae objective does not read kl_target"),
    (["--objective", "vampire"], "unknown objective 'vampire'; registered: ae, contractive-ae"),
    (["--model", "vqvae", "--objective", "vq", "--beta", "2"], "the vq objective does not read betas"),
    (["--corruption", "masking:0.2"], "the elbo objective does not read corruption"),
    (["--hidden", ""], "the vae family needs at least one hidden layer"),
    (["--model", "cvae", "--hidden", ""], "the cvae family needs at least one hidden layer"),
    (["--model", "vae-iaf", "--hidden", ""], "the vae-iaf family needs at least one hidden layer"),
    (["--architecture", "conv", "--conv-channels", ""], "needs at least one hidden layer and "
     "one convolution"),
    (["--label-seed", "3"], "label_seed chooses which labels --labels keeps"),
    (["--resume", "--recipe", "burda-20min"], "--recipe starts a new run; --resume continues"),
    (["--model", "autoencoder"], "the autoencoder family trains with objective 'ae' or "
     "'sparse-ae' or 'contractive-ae' or 'denoising-ae', not 'elbo'"),
    (["--model", "autoencoder", "--objective", "ae", "--beta", "2"],
     "the ae objective does not read betas"),
    (["--model", "autoencoder", "--objective", "denoising-ae"],
     "the denoising-ae objective needs a corruption NOISE:LEVEL"),
    (["--model", "autoencoder", "--objective", "denoising-ae", "--corruption", "blur:0.2"],
     "the corruption's noise must be one of masking, gaussian, salt_and_pepper; got 'blur'"),
    (["--model", "autoencoder", "--objective", "denoising-ae", "--corruption", "masking:2"],
     "the masking corruption's level must be in [0, 1]; got 2"),
    (["--model", "autoencoder", "--objective", "ae", "--posterior", "full"],
     "the autoencoder family builds its own architecture: it does not use posterior"),
    (["--model", "autoencoder", "--objective", "ae", "--likelihood", "gaussian",
      "--gaussian-scale", "learned"], "a gaussian one of fixed scale"),
])
def test_flags_without_meaning_are_refused(tmp_path, capsys, flags, message):
    """A combination the objective would silently ignore is one clear error, nothing written."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *QUICK, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def test_recipe_is_a_whole_run_that_flags_override():
    """--recipe starts from a RECIPES entry (its binarization kept, not the likelihood's
    default); --preset and the other flags replace what they name."""
    recipe = RECIPES["burda-20min"]
    config = _train_config(vars(_parser().parse_args(["train", "--recipe", "burda-20min"])))
    assert config == recipe and config.binarization == "static" != TrainConfig().binarization
    config = _train_config(vars(_parser().parse_args(
        ["train", "--recipe", "burda-20min", "--epochs", "5", "--preset", "pytorch"])))
    assert config == dataclasses.replace(recipe, epochs=5, model=PRESETS["pytorch"])


def test_conv_with_several_dense_layers_trains(tmp_path):
    """The conv decoder mirrors the encoder's dense widths (256,128 used to crash)."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--architecture", "conv", "--hidden", "16,8",
                 "--conv-channels", "4,8", "--epochs", "1", "--no-progress"]) == 0
    assert np.isfinite(json.loads((run / "summary.json").read_text())["test_elbo"])


def test_resume_refuses_fewer_epochs_and_a_moved_cosine_horizon(tmp_path, capsys):
    """--resume with fewer epochs than done, or new epochs under a cosine schedule: exit 2,
    and the run folder is left as it was."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *QUICK, "--epochs", "3"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--workdir", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 2
    assert "has trained 3 epochs; --epochs 2" in capsys.readouterr().err
    cosine = tmp_path / "cosine"
    assert main(["train", "--workdir", str(cosine), *QUICK, "--lr-schedule", "cosine"]) == 0
    capsys.readouterr()
    assert main(["train", "--workdir", str(cosine), "--resume", "--epochs", "4", "--no-progress"]) == 2
    assert "cosine learning-rate schedule decays over 2 epochs" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_families_come_from_the_registry_and_entry_points(tmp_path, capsys, monkeypatch):
    """--model NAME builds a family an installed package offers as a 'vaejax.models' entry
    point; an unknown name is one clear error."""
    import importlib.metadata

    from vaejax import models

    class Entry:
        def load(self):
            return lambda shape, rngs: models.VAE(shape, PRESETS["digits"], rngs=rngs)

    real = importlib.metadata.entry_points

    def entry_points(**selection):  # JAX looks up its own plugins here too
        if selection.get("group") != "vaejax.models":
            return real(**selection)
        return [Entry()] if selection.get("name") == "plugin-vae" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert main(["train", "--workdir", str(tmp_path / "run"), "--model", "plugin-vae",
                 *QUICK]) == 0
    assert "plugin-vae" in models.families()
    assert main(["evaluate", "--workdir", str(tmp_path / "run"), "-k", "100", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--workdir", str(tmp_path / "other"), "--model", "nope", *QUICK]) == 2
    assert "unknown model family 'nope'; registered: " in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda text: text[:len(text) // 2], "config.json cannot be read"),
    (lambda text: text.replace('"epochs": 2', '"epochs": "two"'), "epochs must be an integer"),
    (lambda text: text.replace('"epochs": 2', '"epochs": 2, "colour": "red"'), "unexpected keyword"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "model"}),
     "missing 'model'"),
])
def test_damaged_config_is_one_error(tmp_path, capsys, edit, message):
    """A truncated or hand-edited config.json: resume, evaluate and sample each say which file
    is bad and how, exit 2."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *QUICK]) == 0
    path = run / "config.json"
    path.write_text(edit(path.read_text()))
    for argv in (["train", "--workdir", str(run), "--resume", "--no-progress"],
                 ["evaluate", "--workdir", str(run), "--no-progress"],
                 ["sample", "--workdir", str(run)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "config.json" in err and message in err and len(err.splitlines()) == 1, err


def test_torn_metrics_line_and_bad_summary(tmp_path, capsys):
    """A torn last metrics line (a kill mid-write) is dropped on resume; a summary without
    models is one error."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *QUICK, "--checkpoint-every", "1"]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "mod')
    assert main(["train", "--workdir", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    (run / "summary.json").write_text(json.dumps({"epochs": 3, "models": []}))
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(run), "--no-progress"]) == 2
    assert "summary.json is not a run summary" in capsys.readouterr().err
