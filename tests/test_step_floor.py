"""step_floor.py: FLOPs counted as a step runs, the instruction sets reported, the floor's
arithmetic, and emulating a CPU without bf16 (precision auto then picks fp32)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_main
from torch import nn

import benchmark
import step_floor

# oneDNN and MKL verbose lines as they print them (oneDNN 3.12, MKL 2024.0).
VERBOSE = [
    "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support",
    "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:bf16::blocked:acdb::f0,,128x64x4x4,27.1",
    "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward_training,src,,mb1,1",
    "onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16,,64x64:64x64,0.1",
    "MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) "
    "Architecture processors, Lnx 2.60GHz lp64 gnu_thread",
    "MKL_VERBOSE SGEMM(N,N,64,64,64,0x1,0x2,64,0x3,64,0x4,0x5,64) 48.02ms CNR:OFF Dyn:1 FastMM:1 NThr:2",
]


def test_count_step_counts_forward_and_both_gradients():
    conv = nn.Conv2d(4, 6, 4, 2, 1, bias=False)
    x = torch.randn(1, 4, 10, 10, requires_grad=True)
    flops, largest = step_floor.count_step(lambda: conv(x).sum().backward())
    forward = 2 * 6 * 4 * 4 * 4 * 5 * 5  # 2 x C_out x C_in x kh x kw x output pixels
    assert flops == 3 * forward  # forward, input gradient, weight gradient
    assert largest["flops"] == forward
    assert (largest["input"], largest["weight"], largest["stride"]) == ((1, 4, 10, 10), (6, 4, 4, 4), (2, 2))
    assert step_floor.describe(largest) == "conv2d 1x4x10x10 * 6x4x4x4 stride 2 padding 1 float32 NCHW"


def test_count_step_runs_compiled_code_eagerly():
    """The bf16 path's Adam update is compiled; the counter must see through it, not fail."""
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    product = torch.compile(lambda a, b: a @ b, backend="eager", fullgraph=True)
    conv = nn.Conv2d(2, 3, 3)
    flops, _ = step_floor.count_step(lambda: (product(a, b), conv(torch.randn(1, 2, 5, 5))))
    assert flops == 2 * 8 * 16 * 4 + 2 * 3 * 2 * 9 * 9


def test_instruction_sets_from_verbose_lines(monkeypatch):
    for name in step_floor.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    isa = step_floor.instruction_sets(VERBOSE)
    assert isa["onednn_isa"] == "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    assert isa["onednn_kernels"] == [
        "convolution brg_conv_fwd:avx512_core_bf16",
        "matmul brg_matmul:avx512_core_bf16",
    ]
    assert isa["mkl"] == "Intel(R) Architecture processors"
    assert isa["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isa["emulated"] is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert step_floor.instruction_sets(VERBOSE)["emulated"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_verbose_lines_capture_onednn_reports():
    x, weight = torch.randn(1, 64, 32, 32), torch.randn(64, 64, 3, 3)  # large enough for oneDNN
    isa = step_floor.instruction_sets(step_floor.verbose_lines(lambda: torch.conv2d(x, weight)))
    assert isa["onednn_isa"]
    assert any(kernel.startswith("convolution ") for kernel in isa["onednn_kernels"])


def test_floor_summary_arithmetic():
    # One measurement per round of blocks: the best product and the best convolution of all
    # rounds, the higher of them the peak; the rounds' own bests give the peak's spread.
    peaks = [
        {"matmul_gflops": 150.0, "conv_gflops": 120.0},
        {"matmul_gflops": 140.0, "conv_gflops": 200.0},
        {"matmul_gflops": 90.0, "conv_gflops": 100.0},
    ]
    floor = step_floor.floor_summary(100e9, peaks, 0.8, [0.6, 0.8, 1.0])
    assert floor["peak_gflops"] == 200.0
    assert (floor["matmul_gflops"], floor["conv_gflops"]) == (150.0, 200.0)
    assert floor["peak_gflops_rounds"] == {"min": 100.0, "median": 150.0, "max": 200.0}
    assert floor["floor_s_per_iter"] == 0.5
    assert floor["efficiency"] == pytest.approx(0.625, abs=1e-3)
    assert floor["efficiency_blocks"] == {"min": 0.5, "median": 0.625, "max": 0.833}


def test_peak_gflops_measures_both():
    conv = {
        "input": (1, 8, 16, 16),
        "weight": (8, 8, 4, 4),
        "stride": (2, 2),
        "padding": (1, 1),
        "dilation": (1, 1),
        "transposed": False,
        "output_padding": (0, 0),
        "groups": 1,
        "dtype": torch.float32,
        "channels_last": True,
        "flops": 2 * 8 * 8 * 16 * 64,
    }
    peak = step_floor.peak_gflops(torch.float32, conv, torch.device("cpu"))
    assert peak["matmul_gflops"] > 0 and peak["conv_gflops"] > 0


def emulated(kind: str, code: str) -> dict:
    """Run `code` (which prints one JSON line) in a fresh interpreter with `kind`'s limits."""
    env = {**os.environ, **step_floor.EMULATIONS[kind]}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("kind", sorted(step_floor.EMULATIONS))
def test_emulated_cpu_without_bf16_trains_in_fp32(kind):
    code = (
        "import json, torch, utils, step_floor\n"
        "x, w = torch.randn(1, 64, 32, 32), torch.randn(64, 64, 3, 3)\n"
        "isa = step_floor.instruction_sets(step_floor.verbose_lines(lambda: torch.conv2d(x, w)))\n"
        "print(json.dumps({'fast_bf16': utils.cpu_has_fast_bf16(),\n"
        "    'precision': str(utils.resolve_precision('auto', torch.device('cpu'))), **isa}))"
    )
    report = emulated(kind, code)
    assert report["fast_bf16"] is False
    assert report["precision"] == "torch.float32"
    assert report["emulated"] == step_floor.EMULATIONS[kind]
    assert "bfloat16" not in report["onednn_isa"]
    assert not any("bf16" in kernel for kernel in report["onednn_kernels"])
    if kind == "avx2":
        assert report["aten_cpu_capability"] in ("AVX2", "DEFAULT")
        assert "AVX-512" not in report["onednn_isa"]


def test_benchmark_unknown_emulation_is_one_line(tmp_path, monkeypatch, capsys, facades):
    argv = ["--data_root", facades, "--emulate", "sse2"]
    code, _, errors = run_main(benchmark.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert errors == ["error: --emulate sse2: choose from avx2, avx512"]
