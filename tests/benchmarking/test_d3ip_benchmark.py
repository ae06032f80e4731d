"""The d3ip benchmark's figures: the summary statistics by hand, the table, the memory proof, the slice choice."""
import pytest
from tiny_plans import RECON_TASK, tiny_recon_plans

from diffens_auto.benchmarking.d3ip import FULL, GROUP_NAMES, METHODS, QUICK, D3IPBenchmarkError, benchmark_d3ip, \
    ddip_slice_indices, runs_of
from diffens_auto.benchmarking.d3ip_sr import SR_GROUP, SR_ROWS, sr_models_folder
from diffens_auto.benchmarking.d3ip_report import format_d3ip_table, memory_proof, summarise
from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.networks import build_expert
from diffens_auto.planning import network_for_task


def _row(method, group, case, seed, psnr, ssim=0.9, seconds=2.0, slices=30.0):
    return {"method": method, "group": group, "case": case, "seed": seed, "psnr": psnr, "ssim": ssim,
            "seconds": seconds, "psnr_ddip_slices": slices}


def test_seeds_are_averaged_over_cases_first_and_their_spread_is_the_standard_error():
    dds = METHODS[1].name
    rows = [_row(dds, "phantoms", "a", 0, 30.0), _row(dds, "phantoms", "b", 0, 32.0),
            _row(dds, "phantoms", "a", 1, 31.0), _row(dds, "phantoms", "b", 1, 35.0),
            _row(METHODS[0].name, "phantoms", "a", 0, 27.0), _row(METHODS[0].name, "phantoms", "b", 0, 29.0)]
    summary = {(r["method"], r["group"]): r for r in summarise(rows, METHODS, GROUP_NAMES)}
    two = summary[(dds, "phantoms")]
    assert (two["seeds"], two["cases"]) == (2, 2)
    assert two["psnr"] == pytest.approx(32.0)                 # seed means 31 and 33
    assert two["psnr_se"] == pytest.approx(1.0)               # std (ddof 1) sqrt(2) / sqrt(2)
    one = summary[(METHODS[0].name, "phantoms")]
    assert one["psnr"] == pytest.approx(28.0) and one["psnr_se"] == pytest.approx(1.0)   # over the cases
    table = format_d3ip_table({"summary": list(summary.values()), "peak_bytes": {dds: 3 * 2 ** 20},
                               "memory_proof": {"K": 6, "L": 2, "rest_spread": 0.01,
                                                "slices": {12: {"rest_bytes": 2 ** 20}}},
                               "ddip_seconds": {1: 1.0, 2: 2.1}}, GROUP_NAMES)
    assert "| DDS, ellipsoid prior | 2 | 32.00 ± 1.00 | 0.9000 |" in table and "| 3.0 |" in table
    assert "N = 12: 1.00 MiB" in table and "DDIP seconds for 1, 2, 4 slices: 1: 1.0, 2: 2.1" in table


def test_the_adaptation_memory_proof_is_flat_for_a_real_expert():
    plans = tiny_recon_plans()
    network = network_for_task(plans, "2d_axial", RECON_TASK)
    runner = ExpertRunner.from_network(build_expert(network).eval(), network, 2, 4, name="2d_axial")
    proof = memory_proof(runner, (16, 16), slices=4, steps=1)
    assert sorted(proof["slices"]) == [12, 24, 48] and proof["rest_spread"] < 0.10
    assert all(entry["peak_bytes"] > entry["volume_buffer_bytes"] for entry in proof["slices"].values())


def test_three_seeds_run_on_the_brain_phantoms_only_and_the_other_variants_there_alone():
    groups = {"phantoms": ["p0", "p1"], "real": ["r"], "ellipses": ["e"]}
    d3ip = runs_of(METHODS[2], groups, FULL)
    assert sorted(d3ip) == sorted([("phantoms", p, s) for p in ("p0", "p1") for s in (0, 1, 2)]
                                  + [("real", "r", 0), ("ellipses", "e", 0)])
    assert runs_of(METHODS[3], groups, FULL) == [("phantoms", "p0", 0), ("phantoms", "p1", 0)]     # mbir


def test_ddip_slices_are_spread_inside_the_volume():
    assert ddip_slice_indices(48, 2) == [16, 31]
    assert ddip_slice_indices(24, 1) == [12]


def test_models_folders_without_the_demos_are_refused_with_the_fix(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(D3IPBenchmarkError, match="diffens_demo --recon -o FOLDER"):
        benchmark_d3ip(tmp_path / "work", tmp_path / "models", sr_models=tmp_path / "models", quick=True)
    with pytest.raises(D3IPBenchmarkError, match="--sr_models .*no trained sr task there.*diffens_demo -o FOLDER"):
        sr_models_folder(tmp_path / "work", tmp_path / "models", "smoke", "cpu")
    with pytest.raises(D3IPBenchmarkError, match="--phantoms 0"):
        benchmark_d3ip(tmp_path / "work", tmp_path / "models", phantoms=0)


def test_the_quick_run_fills_every_row_of_every_group(tmp_path, monkeypatch):
    for variable in ("diffens_raw", "diffens_preprocessed", "diffens_results"):
        monkeypatch.setenv(variable, str(tmp_path))     # so the benchmark's own folders are undone afterwards
    monkeypatch.setenv("diffens_n_proc_DA", "0")
    results = benchmark_d3ip(tmp_path, quick=True)
    rows = {(r["method"], r["group"]) for r in results["summary"]}
    assert rows == {(m.name, g) for m in METHODS for g in m.groups} | {(name, SR_GROUP) for name in SR_ROWS}
    seeds = {(r["method"], r["group"]): r["seeds"] for r in results["summary"]}
    assert seeds[(METHODS[2].name, "phantoms")] == len(QUICK.seeds) and seeds[(METHODS[2].name, "real")] == 1
    sr = {r["method"]: r for r in results["summary"] if r["group"] == SR_GROUP}
    assert sr[SR_ROWS[2]]["cases"] == 1 + QUICK.sr_ellipses and sr[SR_ROWS[2]]["psnr"] is not None
    assert results["memory_proof"]["rest_spread"] < 0.10
    assert (tmp_path / "d3ip_table.md").is_file() and (tmp_path / "d3ip.json").is_file()
    ddip = next(r for r in results["summary"] if r["method"].startswith("DDIP") and r["group"] == "phantoms")
    assert ddip["psnr"] is None and ddip["psnr_ddip_slices"] is not None
