"""GPU rows: ``python -m benchmarks --only gpu`` measures them where CUDA is available; on a machine
without it, each says so.

Each row trains an app's own net, with the AdamW settings of the app's config, in a plain PyTorch
loop (no Trainer), so that its ratio is the one thing it names:

- LeNet-5 images/s with the whole dataset kept on the GPU (shuffled, indexed and normalised there)
  against the same net fed by torchvision's path: PIL images through ``ToTensor`` and ``Normalize``
  in a ``DataLoader`` with one worker and pinned memory, which is how the PyTorch MNIST example runs
  on CUDA. The mnist app's own path (tensor batches moved to the GPU each step) is shown beside them.
- bf16-mixed (``torch.autocast``, what ``--trainer.precision bf16-mixed`` turns on) and
  ``torch.compile`` against fp32 eager, at the app's batch size and at a large one; and the FLOP
  utilisation those images/s imply: the FLOPs of a training step as torch's ``FlopCounterMode``
  counts them (convolutions and matrix products, forward and backward), times steps per second, over
  the GPU's dense bf16 peak. "fp32" is torch's default: cuDNN may run the convolutions in TF32.
- The sentiment LSTM with fused cuDNN kernels (``cell: fused``, packed sequences on CUDA) against the
  step-by-step layer-norm cell (``cell: layernorm``), on IMDB-like length-bucketed batches.

Real MNIST cannot be downloaded offline, so the LeNet rows use scikit-learn's digits at 28x28, tiled
to 60,000 images (the size of MNIST's training set). Every ratio is over whole epochs, so it
includes each path's own shuffling and loading. Three entries of ``benchmarks.__main__.MEASURES``, so
that one that fails on a GPU does not cost the others their rows.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from benchmarks.data_path import PILDigits
from benchmarks.harness import Row, fmt_ratio, interleaved, not_measured, ratio, timed
from benchmarks.overhead import LENET_BATCH, LENET_OPTIMIZER, LENET_OPTIONS, LSTM_BATCH, LSTM_OPTIMIZER, mnist_shaped_digits
from benchmarks.packed_vs_padded import VOCAB, Batch, batches, train_pass
from datamodules.mnist import MEAN, STD, TensorBatches, keep_batch
from models.lenet import LeNet5
from models.lstm import LSTMClassifier

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets. Each name must appear
# as a whole word in the device's name; the first that does wins, so "H100 PCIe" precedes "H100".
BF16_PEAK_TFLOPS = {
    "B200": 2250.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200 NVL": 835.0,
    "H200": 989.0,  # SXM
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
}

Step = Callable[[torch.Tensor, torch.Tensor], None]


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named like ``torch.cuda.get_device_name()``, if on file."""
    for name, tflops in BF16_PEAK_TFLOPS.items():
        if re.search(rf"\b{re.escape(name)}\b", device_name):
            return tflops
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a timer stops when the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised float (B, 1, 28, 28), as the MNIST DataModule does after transfer."""
    return (images.unsqueeze(1).float() / 255 - MEAN) / STD


def lenet_step(device: torch.device, bf16: bool = False, compiled: bool = False) -> Step:
    """A training step of the mnist app's LeNet-5 (its options and AdamW settings) on ``device``, on
    normalised images: fp32, or bf16-mixed under autocast; eager, or through ``torch.compile``."""
    torch.manual_seed(0)
    net = LeNet5(**LENET_OPTIONS).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), **LENET_OPTIMIZER)
    if compiled:
        torch.compiler.reset()  # a fresh compile for this net and batch size, not a recompile of an earlier one
    forward = torch.compile(net, dynamic=False) if compiled else net

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def resident_epoch(step: Step, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
    """An epoch over uint8 images kept on the device: shuffled, indexed and normalised there.
    Only full batches, so that a compiled net meets a single shape."""
    order = torch.randperm(len(images), device=images.device)
    for index in order[: len(order) // batch_size * batch_size].view(-1, batch_size):
        step(normalise(images[index]), labels[index])
    synchronize(images.device)


def loader_epoch(step: Step, loader: DataLoader, device: torch.device,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """An epoch over a DataLoader's batches, each moved to ``device`` and ``prepare``d there (if it
    needs to be: torchvision's transforms have normalised them already)."""
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        step(images if prepare is None else prepare(images), labels.to(device, non_blocking=True))
    synchronize(device)


def lenet_flops_per_image(batch_size: int = LENET_BATCH) -> float:
    """FLOPs of one image's share of a LeNet-5 training step (forward and backward), as torch's
    ``FlopCounterMode`` counts them: convolutions and matrix products, the bulk of the arithmetic."""
    net = LeNet5(**LENET_OPTIONS)
    images, labels = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(images), labels).backward()
    return counter.get_total_flops() / batch_size


def utilisation(images_per_second: float, flops_per_image: float, peak: float | None) -> str:
    """``1.23 TFLOP/s (0.12% of the bf16 peak)``, or the TFLOP/s alone where no peak is on file."""
    tflops = images_per_second * flops_per_image / 1e12
    return f"{tflops:.3f} TFLOP/s" + (f" ({tflops / peak:.3%} of the bf16 peak)" if peak else "")


def digits(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` MNIST-shaped uint8 images (N, 28, 28) and labels, and the table's words for them."""
    images, labels = mnist_shaped_digits(n)
    about = (f"{n:,} MNIST-shaped digits (scikit-learn's, tiled; real MNIST is not available offline), "
             f"the mnist app's LeNet-5 and AdamW settings")
    return images, labels, about


def data_path_row(device: torch.device, *, n: int, repeats: int) -> Row:
    """LeNet-5 epochs over data kept on the device, over the app's tensor batches moved each step, and
    over torchvision's per-sample PIL path, all with the same net at the app's batch size."""
    images, labels, about = digits(n)
    pinned = device.type == "cuda"
    pil = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    torchvision_loader = DataLoader(PILDigits(images, labels, pil), batch_size=LENET_BATCH, shuffle=True,
                                    drop_last=True, num_workers=1, pin_memory=pinned)
    app_loader = DataLoader(TensorBatches(images, labels), batch_size=LENET_BATCH, shuffle=True, drop_last=True,
                            collate_fn=keep_batch)
    resident = images.to(device), labels.to(device)
    step = lenet_step(device)
    seconds = interleaved(
        {
            "resident": partial(resident_epoch, step, *resident, LENET_BATCH),
            "app": partial(loader_epoch, step, app_loader, device, normalise),
            "torchvision": partial(loader_epoch, step, torchvision_loader, device),
        },
        repeats,
    )
    seen = n // LENET_BATCH * LENET_BATCH
    per_second = {name: seen / statistics.median(times) for name, times in seconds.items()}
    median, low, high = ratio(seconds["torchvision"], seconds["resident"])
    return Row(
        name=(f"GPU, LeNet-5 training images/s: data kept on the GPU / torchvision DataLoader path, "
              f"batch {LENET_BATCH} ({repeats} rounds)"),
        measured=(
            f"{fmt_ratio(median, low, high)}; {per_second['resident']:,.0f} against {per_second['torchvision']:,.0f} "
            f"images/s (PIL, ToTensor, Normalize, 1 worker{', pinned memory' if pinned else ''}); the app's tensor "
            f"batches moved each step: {per_second['app']:,.0f} images/s; at the first rate, an epoch of 60,000 "
            f"takes {60_000 / per_second['resident']:.2f} s"
        ),
        goal="(recorded)",
        met=None,
        data=about + ", fp32",
    )


def variant_rows(device: torch.device, *, n: int, repeats: int, large_batch: int, compile_net: bool = True) -> list[Row]:
    """bf16-mixed and compiled LeNet-5 training against fp32 eager, on data kept on the device, at the
    app's batch size and at ``large_batch``; and the FLOP utilisation of fp32 and of the fastest."""
    images, labels, about = digits(n)
    variants: dict[str, dict[str, bool]] = {"fp32": {}, "bf16-mixed": {"bf16": True}}
    if compile_net:
        variants["compiled"] = {"compiled": True}
    resident = images.to(device), labels.to(device)
    sizes = (LENET_BATCH, large_batch)
    rate: dict[tuple[int, str], float] = {}  # images/s by (batch size, variant)
    speedup: dict[tuple[int, str], float] = {}  # over fp32 eager, by (batch size, variant)
    compiling: dict[int, float] = {}  # seconds of the first compiled epoch, by batch size
    for batch_size in sizes:
        epochs = {name: partial(resident_epoch, lenet_step(device, **options), *resident, batch_size)
                  for name, options in variants.items()}
        if compile_net:  # the first call compiles: timed apart from the rounds
            compiling[batch_size] = timed(epochs["compiled"])
        seconds = interleaved(epochs, repeats)
        seen = n // batch_size * batch_size
        for name, times in seconds.items():
            rate[batch_size, name] = seen / statistics.median(times)
            speedup[batch_size, name] = ratio(seconds["fp32"], times)[0]

    def against_fp32(variant: str) -> str:
        return "; ".join(f"batch {b}: {speedup[b, variant]:.2f}x ({rate[b, variant]:,.0f} images/s)" for b in sizes)

    flops = lenet_flops_per_image()
    peak = bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    fastest = max(rate, key=rate.get)
    data = about + ", data kept on the GPU; fp32 at torch's defaults (cuDNN may run the convolutions in TF32)"
    rows = [
        Row(
            name=(f"GPU, LeNet-5 FLOP utilisation implied by its training images/s ({flops / 1e6:.2f} MFLOP per "
                  f"image, forward and backward)"),
            measured=(
                f"batch {LENET_BATCH}, fp32: {utilisation(rate[LENET_BATCH, 'fp32'], flops, peak)}; fastest, batch "
                f"{fastest[0]} {fastest[1]}: {utilisation(rate[fastest], flops, peak)}"
            ),
            goal="(recorded)",
            met=None,
            data=data + (f"; peak {peak:,.0f} TFLOP/s dense bf16 (NVIDIA's datasheet)" if peak
                         else "; no bf16 peak on file for this device"),
        ),
        Row(
            name=f"GPU, LeNet-5 training: bf16-mixed (autocast) / fp32, images/s ({repeats} rounds)",
            measured=against_fp32("bf16-mixed"),
            goal="(recorded)",
            met=None,
            data=data,
        ),
    ]
    if compile_net:
        first = ", ".join(f"batch {b}: {s:.0f} s" for b, s in compiling.items())
        rows.append(
            Row(
                name=f"GPU, LeNet-5 training: torch.compile / eager, fp32, images/s ({repeats} rounds)",
                measured=f"{against_fp32('compiled')}; the first epoch, compiling: {first}",
                goal="(recorded)",
                met=None,
                data=data,
            )
        )
    return rows


def lstm_row(device: torch.device, *, examples: int, repeats: int, max_length: int = 512) -> Row:
    """The sentiment app's default LSTM with the fused cell against the layer-norm cell."""
    lengths, _, bucketed = batches(examples, LSTM_BATCH, max_length, corpus=25_000)
    on_device: list[Batch] = [((tokens.to(device), n.to(device)), target.to(device)) for (tokens, n), target in bucketed]

    def epoch(cell: str) -> Callable[[], None]:
        torch.manual_seed(0)
        net = LSTMClassifier(VOCAB, 2, cell=cell).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), **LSTM_OPTIMIZER)

        def run() -> None:
            train_pass(net, optimizer, on_device)
            synchronize(device)

        return run

    seconds = interleaved({"fused": epoch("fused"), "layernorm": epoch("layernorm")}, repeats)
    median, low, high = ratio(seconds["layernorm"], seconds["fused"])
    texts_per_second = len(lengths) / statistics.median(seconds["fused"])
    return Row(
        name=f"GPU, sentiment LSTM training: layer-norm cell / fused cuDNN LSTM, time per pass ({repeats} rounds)",
        measured=f"{fmt_ratio(median, low, high)}; fused: {texts_per_second:,.0f} texts/s",
        goal="(recorded)",
        met=None,
        data=(
            f"{len(lengths)} synthetic texts in length buckets, IMDB-like lengths (median {statistics.median(lengths):.0f}, "
            f"max {max_length} tokens), batch {LSTM_BATCH}, the app's default 2-layer BiLSTM 64/64 (packed sequences "
            f"on CUDA), AdamW without the app's gradient clipping on either side"
        ),
    )


class Sizes(NamedTuple):
    images: int  # LeNet-5 images an epoch
    repeats: int  # interleaved rounds
    large_batch: int  # the LeNet-5 batch beside the app's
    texts: int  # LSTM texts a pass


SIZES = {True: Sizes(4_096, 2, 512, 64), False: Sizes(60_000, 5, 1_024, 256)}  # by quick
CUDA = torch.device("cuda")


def without_cuda(name: str) -> Row:
    return not_measured(name, "-", "no CUDA device on this machine; on one, `python -m benchmarks --only gpu` measures it")


# The entries of ``benchmarks.__main__.MEASURES``.


def lenet_data_path(quick: bool) -> Row:
    if not torch.cuda.is_available():
        return without_cuda("GPU, LeNet-5 training images/s: data kept on the GPU / torchvision DataLoader path")
    size = SIZES[quick]
    return data_path_row(CUDA, n=size.images, repeats=size.repeats)


def lenet_precision_and_compile(quick: bool) -> list[Row]:
    if not torch.cuda.is_available():
        return [without_cuda("GPU, LeNet-5 training: bf16-mixed and torch.compile / fp32 eager, and the FLOP utilisation")]
    size = SIZES[quick]
    return variant_rows(CUDA, n=size.images, repeats=size.repeats, large_batch=size.large_batch)


def lstm_cells(quick: bool) -> Row:
    if not torch.cuda.is_available():
        return without_cuda("GPU, sentiment LSTM training: layer-norm cell / fused cuDNN LSTM")
    size = SIZES[quick]
    return lstm_row(CUDA, examples=size.texts, repeats=size.repeats)
