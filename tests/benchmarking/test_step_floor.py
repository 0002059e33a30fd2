"""step_floor.py: FLOPs counted as a step runs, the instruction sets reported, the floor's
arithmetic, and emulating a CPU without bf16 (precision auto then picks fp32)."""

import json
import os
import types

import pytest
import torch
from conftest import ROOT, run_main, run_script
from torch import nn

import benchmark
from benchmarking import step_floor

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
    # rounds, the higher of them the peak; the rounds' own bests give the peak's spread. The
    # same for the bandwidth, the better of the copy and the add.
    peaks = [
        {"matmul_gflops": 150.0, "conv_gflops": 120.0, "copy_gbs": 8.0, "add_gbs": 9.0, "update_s": 0.3},
        {"matmul_gflops": 140.0, "conv_gflops": 200.0, "copy_gbs": 10.0, "add_gbs": 6.0, "update_s": 0.2},
        {"matmul_gflops": 90.0, "conv_gflops": 100.0, "copy_gbs": 4.0, "add_gbs": 5.0, "update_s": 0.4},
    ]
    floor = step_floor.floor_summary(100e9, 2e9, peaks, 0.8, [0.6, 0.8, 1.0])
    assert floor["peak_gflops"] == 200.0
    assert (floor["matmul_gflops"], floor["conv_gflops"]) == (150.0, 200.0)
    assert floor["peak_gflops_rounds"] == {"min": 100.0, "median": 150.0, "max": 200.0}
    assert floor["floor_s_per_iter"] == 0.5
    assert floor["efficiency"] == pytest.approx(0.625, abs=1e-3)
    assert floor["efficiency_blocks"] == {"min": 0.5, "median": 0.625, "max": 0.833}
    # 2 GB in the best 0.2 s: 10 GB/s; 0.5 s of arithmetic + 0.2 s of update is 0.7 s of the 0.8 s step.
    assert floor["update"] == {
        "gb_per_iter": 2.0,
        "s_per_iter": 0.2,
        "gbs": 10.0,
        "bandwidth_gbs": 10.0,
        "bandwidth_gbs_rounds": {"min": 5.0, "median": 9.0, "max": 10.0},
        "floor_with_update_s_per_iter": 0.7,
        "efficiency_with_update": 0.875,
    }


def test_update_bytes_count_adams_reads_and_writes():
    # Adam reads each weight, its gradient and both moments and writes the weight and both
    # moments: 7 accesses of 4 bytes per fp32 weight, whatever the groups or the optimizers.
    conv, norm = torch.nn.Conv2d(3, 8, 4), torch.nn.BatchNorm2d(8)
    opt_G = torch.optim.Adam([{"params": conv.parameters()}, {"params": [norm.weight], "lr": 0.1}])
    opt_D = torch.optim.Adam([norm.bias])
    assert step_floor.update_bytes([opt_G, opt_D]) == 7 * 4 * (8 * 3 * 4 * 4 + 8 + 8 + 8)


def test_update_seconds_times_every_optimizer_step(monkeypatch):
    # On a clock that only the test moves: the rest of the step takes 5, one optimizer's own
    # pre-hook 2 (where adam_copies updates the bf16 weights) and another optimizer's step 1.
    # The global hooks bracket each optimizer's step, own hooks included, and are gone afterwards.
    clock = types.SimpleNamespace(now=0.0, reads=0)

    def perf_counter() -> float:
        clock.reads += 1
        return clock.now

    def advance(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr(step_floor, "time", types.SimpleNamespace(perf_counter=perf_counter))

    weight, other = nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4))
    adam, sgd = torch.optim.Adam([weight]), torch.optim.SGD([other])
    adam.register_step_pre_hook(lambda *_: advance(2.0))
    sgd.register_step_post_hook(lambda *_: advance(1.0))

    def step() -> None:
        advance(5.0)  # forward and backward: not the update
        weight.grad, other.grad = torch.ones(4), torch.ones(4)
        adam.step()
        sgd.step()

    assert step_floor.update_seconds(step, torch.device("cpu"), repeats=2) == 3.0
    assert step_floor.update_seconds(lambda: advance(5.0), torch.device("cpu"), repeats=1) == 0.0
    reads = clock.reads
    step()
    assert clock.reads == reads  # no hook left behind


def test_machine_peaks_measure_arithmetic_and_bandwidth():
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
    peak = step_floor.machine_peaks(torch.float32, conv, torch.device("cpu"))
    assert set(peak) == {"matmul_gflops", "conv_gflops", "copy_gbs", "add_gbs"}
    assert all(value > 0 for value in peak.values())


def emulated(kind: str, code: str) -> dict:
    """Run `code` (which prints one JSON line) in a fresh interpreter with `kind`'s limits."""
    env = {**os.environ, **step_floor.EMULATIONS[kind]}
    done = run_script("-c", code, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("kind", sorted(step_floor.EMULATIONS))
def test_emulated_cpu_without_bf16_trains_in_fp32(kind):
    code = (
        "import json, torch, utils\nfrom benchmarking import step_floor\n"
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
