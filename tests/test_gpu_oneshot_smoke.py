"""The one-shot GPU benchmark runs on the CPU in smoke mode and writes its JSON schema."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_oneshot.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_oneshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_oneshot"] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_parts_write_the_schema(tmp_path):
    bench = load_script()
    assert bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--parts", "P0,P5,P6"]) == 0
    result = json.loads((tmp_path / "gpu_bench.json").read_text())  # strict JSON: no NaN
    for key in ("env", "ceilings", "attention", "dit_train", "generation", "vae", "kernels", "numerics", "errors"):
        assert key in result
    assert result["errors"] == []
    assert {"gemm_bf16_tflops", "copy_tbps"} <= set(result["ceilings"])
    assert {row["impl"] for row in result["kernels"]} == {"eager", "compiled"}
    assert result["numerics"]["timestep_bf16"][1] == [873.0999755859375, 872.0]
    assert "bf16_params_out" in result["numerics"]["block_rel_err"]
    assert "summary" in (tmp_path / "bench.log").read_text()


def test_unknown_part_is_refused(tmp_path, capsys):
    import pytest

    bench = load_script()
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--out", str(tmp_path), "--parts", "P9"])
    assert "unknown parts ['P9']" in capsys.readouterr().err


def test_smoke_vae_part_times_every_precision_through_the_vae_precision_context(tmp_path):
    bench = load_script()
    assert bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--parts", "P4"]) == 0
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["errors"] == []
    rows = {row["variant"]: row for row in result["vae"]}
    assert list(rows) == ["fp32_untiled", "bf16_untiled", "tf32_untiled", "bf16_tiled", "bf16_untiled_cudnn_benchmark"]
    assert {row["latent_dtype"] for row in rows.values()} == {row["pixel_dtype"] for row in rows.values()} == {"float32"}
    assert rows["tf32_untiled"]["latent_rel_err_vs_fp32"] == 0.0  # TF32 switches do nothing on the CPU
    assert rows["bf16_untiled"]["latent_rel_err_vs_fp32"] > 0.0  # autocast ran
    assert rows["bf16_tiled"]["tile"] > 0 and rows["fp32_untiled"]["enc_speedup_vs_fp32"] == 1.0
