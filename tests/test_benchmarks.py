"""The benchmark scripts run end to end with --tiny and print a well-formed JSON result.

Each script runs in a subprocess, as `python benchmarks/NAME.py --tiny`; its last
stdout line must be one JSON object with the expected keys, positive finite
timings and rates, and the machine description. Without torch the PyTorch
baseline must say "skipped" rather than fail.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HAS_TORCH = importlib.util.find_spec("torch") is not None
MACHINE_KEYS = {"processor", "uname", "cpu_count", "jax_version", "platform", "device_kind"}

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, env=None) -> tuple[dict, str]:
    """Runs benchmarks/NAME.py; returns its last stdout line as JSON, and the lines before it."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=BENCHMARKS.parent,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def run_tiny(name: str) -> tuple[dict, str]:
    return run_script(name, "--tiny")


def positive(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0


def numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def check_common(result: dict, name: str) -> None:
    assert result["benchmark"] == name and result["tiny"] is True
    assert MACHINE_KEYS <= set(result["machine"]) and result["machine"]["cpu_count"] >= 1
    assert result["data"] in ("mnist", "synthetic")
    assert positive(result["peak_rss_mb"])
    assert all(math.isfinite(x) for x in numbers(result))
    for target in result["targets"]:
        assert {"name", "value", "requirement", "evaluated", "met"} <= set(target)
        assert target["met"] is None or isinstance(target["met"], bool)


def test_throughput():
    result, table = run_tiny("throughput")
    check_common(result, "throughput")
    assert "Training throughput" in table
    assert positive(result["matmul"]["square"]["flops_per_second"])
    assert set(result["results"]) == {"128", "1024"}
    for batch, rows in result["results"].items():
        assert positive(result["matmul"]["model_shapes"][batch]["flops_per_second"])
        flops = result["step_flops"][batch]
        assert all(positive(flops[k]) for k in ("analytic", "matmul_work", "xla_vaejax", "xla_flax_loop"))
        layers = 784 * 400 + 400 * 40 + 20 * 400 + 400 * 784
        assert flops["analytic"] == 3 * 2 * int(batch) * layers
        assert flops["matmul_work"] == flops["analytic"] - 2 * int(batch) * 784 * 400
        names = ["vaejax", "flax_loop"] + (["pytorch"] if HAS_TORCH else [])
        for name in names:
            row = rows[name]
            assert row["status"] == "ok", row
            for key in ("examples_per_second", "epoch_seconds", "achieved_flops_per_second", "peak_rss_mb",
                        "fraction_of_square_matmul_rate", "fraction_of_model_matmul_rate"):
                assert positive(row[key]), (name, key, row[key])
        if not HAS_TORCH:
            assert rows["pytorch"]["status"] == "skipped" and rows["pytorch"]["reason"]
        ratios = result["ratios"][batch]
        assert positive(ratios["vaejax_over_flax_loop"])
        if HAS_TORCH:
            assert positive(ratios["vaejax_over_pytorch"])
        else:
            assert ratios["vaejax_over_pytorch"] is None
    assert len(result["targets"]) == 5
    targets = {t["name"]: t for t in result["targets"]}
    for batch in ("128", "1024"):  # achieved over min(0.88 · n×n rate, 0.95 · step-matmul rate)
        row = result["results"][batch]["vaejax"]
        floor = min(0.88 * result["matmul"]["square"]["flops_per_second"],
                    0.95 * result["matmul"]["model_shapes"][batch]["flops_per_second"])
        value = targets[f"cpu_batch{batch}_achieved_over_min_088_square_095_step_matmul_rate"]["value"]
        assert math.isclose(value, row["achieved_flops_per_second"] / floor, rel_tol=1e-9)


def test_throughput_layers_are_the_presets_weights():
    """The FLOP count's layers hold every weight of the model the benchmark trains."""
    sys.path.insert(0, str(BENCHMARKS))
    import throughput
    from flax import nnx

    from vaejax.config import PRESETS
    from vaejax.models.vae import VAE

    for preset in throughput.BENCHMARKED_PRESETS:
        model = VAE(throughput.SHAPE, PRESETS[preset], rngs=nnx.Rngs(0))
        kernels = nnx.state(model, lambda path, x: isinstance(x, nnx.Param) and path[-1] == "kernel")
        weights = sum(x.size for x in jax.tree.leaves(kernels))
        assert weights == sum(i * o for _, i, o in throughput.layers_of(PRESETS[preset])), preset
        flax_loop = throughput.FlaxVAE(PRESETS[preset], nnx.Rngs(0))
        assert (sum(x.size for x in jax.tree.leaves(nnx.state(flax_loop, nnx.Param)))
                == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    # The conv preset: 5.51 M multiply-adds per image forward (convolutions at their output
    # positions, transposed ones at their input positions).
    assert sum(r * i * o for r, i, o in throughput.layers_of(PRESETS["conv"])) == 5_512_832


def test_throughput_conv():
    result, _ = run_script("throughput", "--tiny", "--preset", "conv", "--batch-sizes", "32",
                           "--num-train", "64", "--implementations", "vaejax")
    assert result["preset"] == "conv" and result["results"]["32"]["vaejax"]["status"] == "ok"
    assert positive(result["step_flops"]["32"]["xla_vaejax"])
    assert {t["name"] for t in result["targets"]} >= {"cpu_conv_batch128_vaejax_over_pytorch"}


def test_throughput_iwae():
    """-k trains vaejax's IWAE bound; its FLOPs count the decoder's products once per sample."""
    sys.path.insert(0, str(BENCHMARKS))
    import throughput

    from vaejax.config import PRESETS

    assert throughput.layers_of(PRESETS["pytorch"], 50) == [
        (1, 784, 400), (1, 400, 40), (50, 20, 400), (50, 400, 784)]
    result, _ = run_script("throughput", "--tiny", "-k", "5", "--batch-sizes", "32",
                           "--num-train", "64", "--implementations", "vaejax")
    row = result["results"]["32"]["vaejax"]
    assert result["num_samples"] == 5 and "IWAE k = 5" in result["model"]
    assert row["achieved_flops_per_second"] == pytest.approx(
        result["step_flops"]["32"]["matmul_work"] * row["steps_per_epoch"] / row["epoch_seconds"])
    [target] = result["targets"]
    assert target["name"] == "cpu_iwae_k5_batch32_fraction_of_matmul_rate"
    assert target["value"] == pytest.approx(row["fraction_of_square_matmul_rate"])
    refused = subprocess.run([sys.executable, str(BENCHMARKS / "throughput.py"), "--tiny", "-k", "5"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "add --implementations vaejax" in refused.stderr


def test_sweep():
    result, table = run_tiny("sweep")
    check_common(result, "sweep")
    assert "Sweep wall times" in table
    for key in ("vmapped_seconds", "sequential_seconds", "single_run_seconds", "betas_seconds",
                "speedup", "betas_over_single_run"):
        assert positive(result[key]), key
    assert all(positive(v) for v in result["first_epoch_seconds"].values())
    assert all(positive(v) for v in result["examples_per_second"].values())
    assert len(result["all_seconds"]["single_run"]) == result["num_models"] * result["repeats"]
    assert result["losses_finite"] is True


def test_is_nll():
    result, table = run_tiny("is_nll")
    check_common(result, "is_nll")
    assert "Importance-sampled log p(x)" in table
    for key in ("seconds", "first_call_seconds", "one_batch_seconds", "importance_samples_per_second",
                "achieved_flops_per_second", "full_test_set_seconds"):
        assert positive(result[key]), key
    assert result["importance_samples_per_second"] == pytest.approx(
        result["num_images"] * result["num_samples"] / result["seconds"])
    assert result["full_test_set_is"].startswith("extrapolated")
    assert result["estimates_finite"] is True and result["mean_log_likelihood"] < 0
    assert result["fraction_of_square_matmul_rate"] == pytest.approx(
        result["achieved_flops_per_second"] / result["square_matmul"]["flops_per_second"])
    assert "cpu_fraction_of_square_matmul_rate" in {t["name"] for t in result["targets"]}
    assert "Chunk size" in table
    assert [row["chunk_size"] for row in result["chunk_sweep"]] == [25, 50]
    for row in result["chunk_sweep"]:
        assert row["latents_per_chunk"] == row["chunk_size"] * result["batch_size"]
        assert positive(row["seconds"]) and positive(row["importance_samples_per_second"])


def test_rate_distortion_sweep_runs(tmp_path):
    """The β sweep writes its figure and one (rate, distortion) point per β."""
    result, _ = run_script("rate_distortion", "--dataset", "digits", "--preset", "digits",
                        "--epochs", "2", "--betas", "0.5,2", "--out", str(tmp_path))
    assert [m["beta"] for m in result["models"]] == [0.5, 2.0]
    assert all(positive(m["rate"]) and positive(m["distortion"]) for m in result["models"])
    assert Path(result["figure"]).stat().st_size > 0


SHARED_DATA = BENCHMARKS.parent.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "binarized_mnist").is_dir()
                    or importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="needs ../shared/data/binarized_mnist and tensorflow_datasets")
def test_quality_row_runs(tmp_path):
    """A paper row trains, evaluates with importance sampling and reports its gap to the paper."""
    env = dict(os.environ, VAEJAX_MANUAL_DIR=str(SHARED_DATA),
               VAEJAX_DATA_DIR=str(tmp_path / "tfds"))
    result, _ = run_script("quality", "--row", "pythae-vae", "--epochs", "1", "--num-samples", "4",
                        "--workdir", str(tmp_path / "run"), env=env)
    assert result["published"] == 89.78 and result["epochs"] == 1
    assert positive(result["test_nll"]) and result["num_samples"] == 4
    assert math.isclose(result["gap_to_published"], result["test_nll"] - 89.78)
    warm, _ = run_script("quality", "--row", "pythae-vae", "--epochs", "1", "--num-samples", "4",
                         "--init-from", str(tmp_path / "run"), "--workdir", str(tmp_path / "warm"),
                         env=env)
    assert [r["epochs"] for r in warm["init_from"]] == [1] and "--init-from" in warm["command"]
    assert math.isclose(warm["total_train_wall_seconds"],
                        warm["train_wall_seconds"] + result["train_wall_seconds"])
    # A run started from a started run counts the whole chain.
    chained, _ = run_script("quality", "--row", "pythae-vae", "--epochs", "2", "--num-samples",
                            "4", "--init-from", str(tmp_path / "warm"),
                            "--workdir", str(tmp_path / "chained"), env=env)
    assert [r["workdir"] for r in chained["init_from"]] == [str(tmp_path / "warm"),
                                                           str(tmp_path / "run")]
    assert math.isclose(chained["total_train_wall_seconds"],
                        chained["train_wall_seconds"] + warm["total_train_wall_seconds"])


def test_compare_two_checkouts():
    """compare.py against this same checkout: both sides measured, ratios near one."""
    result, table = run_script("compare", "--tiny", "--rounds", "1", "--repeats", "2",
                               "--batch-sizes", "128", "--baseline", str(BENCHMARKS.parent))
    assert result["benchmark"] == "compare" and "ratio" in table
    row = result["results"]["128"]
    assert all(positive(v) for side in row["examples_per_second"].values() for v in side)
    assert 0.3 < row["current_over_baseline"] < 3.0


def test_readme_names_no_machine_paths():
    assert "/work/" not in (BENCHMARKS / "README.md").read_text()


def test_autoencoders_rows_run(tmp_path):
    """An objective's row trains and is evaluated; the PCA row reports principal angles.
    (Every objective trains in tests/training/test_autoencoder.py.)"""
    result, table = run_script("autoencoders", "--tiny", "--rows", "sparse-ae,pca",
                               "--workdir", str(tmp_path))
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"sparse-ae", "pca"}
    assert positive(rows["sparse-ae"]["distortion"]) and positive(rows["sparse-ae"]["train_penalty"])
    assert 0 < rows["sparse-ae"]["linear_probe_accuracy"] <= 1
    angles = rows["pca"]["principal_angles_degrees"]
    assert len(angles) == 4 and all(0 <= a <= 90 for a in angles)
    assert "max angle" in table


def test_semi_supervised_runs(tmp_path):
    """Two label draws of M2 train on the digits; the table and mean ± std are reported;
    with --features-from, M1+M2 on a trained VAE's features."""
    result, table = run_script("semi_supervised", "--tiny", "--label-seeds", "0,1",
                               "--workdir", str(tmp_path))
    errors = [r["test_error_percent"] for r in result["rows"]]
    assert len(errors) == 2 and all(0 <= e <= 100 for e in errors)
    assert math.isclose(result["test_error_percent_mean"], sum(errors) / 2)
    assert result["published_percent"]["mean"] == 11.97 and "test error %" in table
    from vaejax.cli import main
    m1 = tmp_path / "m1"
    assert main(["train", "--workdir", str(m1), "--epochs", "2", "--no-progress"]) == 0
    result, table = run_script("semi_supervised", "--tiny", "--label-seeds", "0", "--workdir",
                               str(tmp_path / "m1m2"), "--features-from", str(m1))
    assert result["model"] == "m1m2" and result["published_percent"]["mean"] == 3.33
    assert "test_feature_elbo" in result["rows"][0] and "test_feature_elbo" in table


def test_processes_runs():
    """One process and two over loopback train the digits; the efficiency is their ratio."""
    result, table = run_script("processes", "--tiny")
    row, = result["rows"]
    assert row["one_process"] > 0 and row["processes"] > 0
    assert math.isclose(row["scaling_efficiency"], row["processes"] / row["one_process"])
    assert result["num_processes"] == 2 and "efficiency" in table


def test_streaming_runs():
    """The digits train in memory by scan and stepwise, and streamed; the cost is their ratio."""
    result, table = run_script("streaming", "--tiny")
    row, = result["rows"]
    assert all(row[mode] > 0 for mode in ("scan", "stepwise", "streaming"))
    assert math.isclose(row["streaming_cost"], 1 - row["streaming"] / row["scan"])
    assert "streaming cost" in table


def test_time_to_quality_runs(tmp_path):
    """The digits train on the clock; the NLL at each checkpoint is off it, above the ELBO."""
    figure = tmp_path / "ttq.png"
    result, table = run_script("time_to_quality", "--tiny", "--figure", str(figure))
    assert [row["epoch"] for row in result["rows"]] == [2, 4]
    for row in result["rows"]:
        assert row["num_test"] == 300 and -row["test_nll"] >= row["test_elbo"] - 0.5
    minutes = [row["train_minutes"] for row in result["rows"]]
    assert 0 < minutes[0] < minutes[1] and len(result["test_elbo_curve"]) == 4
    assert figure.stat().st_size > 0 and "test NLL" in table


def test_profile_step_runs():
    """The traced epoch's operations are found in the program text and their shares sum to 1."""
    result, table = run_script("profile_step", "--tiny")
    assert result["ops"] and math.isclose(sum(r["share"] for r in result["ops"]), 1.0)
    kinds = set(result["by_kind"])
    assert "matmul" in kinds and kinds <= {"matmul", "transcendental", "gather", "copy",
                                           "element-wise"}
    assert any(source.startswith("vaejax/core/likelihoods.py") for source in result["by_source"])
    assert any(source.startswith("optax/") for source in result["by_source"])
    assert "top operations" in table
