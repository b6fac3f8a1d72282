"""The GPU rows of ``python -m benchmarks`` (``benchmarks.gpu``), run on the CPU at tiny sizes: a
session that is lent a GPU should find them working, not debug them on its device time."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks import gpu
from datamodules.mnist import MEAN, STD, TensorBatches, keep_batch

CPU = torch.device("cpu")


def test_lenet_flops_are_its_convolutions_and_products_forward_and_backward() -> None:
    # Multiply-adds per image, forward: conv1 28*28*6 outputs of 5*5*1, conv2 10*10*16 of 5*5*6, then
    # the linear layers 400*120, 120*84, 84*10.
    conv1, conv2, dense = 28 * 28 * 6 * 25, 10 * 10 * 16 * 150, 400 * 120 + 120 * 84 + 84 * 10
    forward = 2 * (conv1 + conv2 + dense)
    # Backward: a gradient for the weights and one for the inputs of every layer, except conv1's
    # inputs (the images need none).
    assert gpu.lenet_flops_per_image() == 3 * forward - 2 * conv1


def test_utilisation_is_flops_per_second_over_the_peak() -> None:
    # 1e6 images/s of 2 MFLOP each: 2 TFLOP/s, a fifth of a percent of 1,000 TFLOP/s.
    assert gpu.utilisation(1e6, 2e6, 1000.0) == "2.000 TFLOP/s (0.200% of the bf16 peak)"
    assert gpu.utilisation(1e6, 2e6, None) == "2.000 TFLOP/s"


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10G", None),  # not an A10
        ("NVIDIA L40S", 362.0),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_bf16_peak_matches_whole_names_only(device_name: str, peak: float | None) -> None:
    assert gpu.bf16_peak(device_name) == peak


def test_resident_epoch_trains_on_every_full_batch_once_normalised() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 28, 28).contiguous()
    labels = torch.arange(10)
    seen = []
    gpu.resident_epoch(lambda x, y: seen.append((x, y)), images, labels, batch_size=4)

    assert [x.shape for x, _ in seen] == [(4, 1, 28, 28)] * 2  # the last 2 images make no full batch
    order = torch.cat([y for _, y in seen])
    assert len(set(order.tolist())) == 8  # shuffled, no image twice
    pixels = torch.cat([x[:, 0, 0, 0] for x, _ in seen])
    torch.testing.assert_close(pixels, (order.float() / 255 - MEAN) / STD)  # each image with its label


def test_a_timed_epoch_ends_once_its_kernels_are_done(monkeypatch) -> None:
    events = []
    monkeypatch.setattr(gpu, "synchronize", lambda device: events.append("synchronize"))
    images, labels = torch.zeros(8, 28, 28, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    step = lambda x, y: events.append("step")  # noqa: E731

    gpu.resident_epoch(step, images, labels, batch_size=4)
    gpu.loader_epoch(step, DataLoader(TensorBatches(images, labels), batch_size=4, collate_fn=keep_batch), CPU)
    assert events == ["step", "step", "synchronize"] * 2


def test_without_cuda_each_gpu_entry_is_a_row_that_says_why(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = [gpu.lenet_data_path(True), *gpu.lenet_precision_and_compile(True), gpu.lstm_cells(True)]
    assert [row.name.split(":")[0] for row in rows] == ["GPU, LeNet-5 training images/s", "GPU, LeNet-5 training",
                                                        "GPU, sentiment LSTM training"]
    assert all(row.measured == "not measured" and "no CUDA device" in row.data for row in rows)


def test_gpu_rows_measure_on_any_device() -> None:
    rows = [
        gpu.data_path_row(CPU, n=256, repeats=1),
        *gpu.variant_rows(CPU, n=256, repeats=1, large_batch=128, compile_net=False),
        gpu.lstm_row(CPU, examples=32, repeats=1, max_length=48),
    ]
    names = [row.name.split(":")[0] for row in rows]
    assert names == [
        "GPU, LeNet-5 training images/s",
        "GPU, LeNet-5 FLOP utilisation implied by its training images/s (2.26 MFLOP per image, forward and backward)",
        "GPU, LeNet-5 training",
        "GPU, sentiment LSTM training",
    ]
    assert "bf16-mixed" in rows[2].name and "batch 64: " in rows[2].measured and "batch 128: " in rows[2].measured
    assert "no bf16 peak on file" in rows[1].data  # a CPU has none
    assert all(row.met is None and "nan" not in row.measured for row in rows)


@pytest.mark.slow
def test_gpu_rows_compile_each_batch_size_once(monkeypatch) -> None:
    # torch.compile on the CPU (inductor, a C++ compiler): about a minute on 2 cores. A recompile would
    # time a graph with a dynamic batch size, and a recompile's seconds as the compile's.
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    rows = gpu.variant_rows(CPU, n=256, repeats=1, large_batch=128, compile_net=True)
    (compiled,) = [row for row in rows if "torch.compile" in row.name]
    assert "batch 64: " in compiled.measured and "the first epoch, compiling: batch 64: " in compiled.measured


def test_with_cuda_each_gpu_entry_measures_at_its_sizes(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = {}
    for name in ("data_path_row", "variant_rows", "lstm_row"):
        monkeypatch.setattr(gpu, name, lambda device, name=name, **sizes: calls.setdefault(name, (device, sizes)))
    gpu.lenet_data_path(False), gpu.lenet_precision_and_compile(False), gpu.lstm_cells(False)
    full = gpu.SIZES[False]
    assert calls == {
        "data_path_row": (gpu.CUDA, {"n": full.images, "repeats": full.repeats}),
        "variant_rows": (gpu.CUDA, {"n": full.images, "repeats": full.repeats, "large_batch": full.large_batch}),
        "lstm_row": (gpu.CUDA, {"examples": full.texts, "repeats": full.repeats}),
    }
