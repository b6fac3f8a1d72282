"""The benchmark harness: interleaving order, the ratio and difference arithmetic, the markdown rows,
and a whole ``python -m benchmarks`` run over stand-in measures (the real ones take minutes; CI runs
``python -m benchmarks --quick`` for those)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import benchmarks.__main__ as benchmarks_main
from benchmarks.harness import Row, cpu_model, difference, fmt_ratio, interleaved, machine, mean_std, not_measured, ratio
from benchmarks.tokenization import python_tokenize
from datamodules.text import new_tokenizer


def test_interleaved_warms_up_then_alternates_the_order() -> None:
    calls = []
    seconds = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    # One untimed warm-up each, then A B, B A, A B: drift hits both alike.
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(s) for s in seconds.values()] == [3, 3]
    assert all(s >= 0 for times in seconds.values() for s in times)


def test_ratio_is_the_median_of_per_round_ratios() -> None:
    # Per round: 2, 4, 3 -> median 3; the ratio of the medians (6 / 2) would be the same here,
    # but a slow round that hits both candidates (round 3) must not widen the spread.
    assert ratio([2.0, 4.0, 30.0], [1.0, 1.0, 10.0]) == (3.0, 2.0, 4.0)
    assert ratio([1.0], [4.0]) == (0.25, 0.25, 0.25)


def test_difference_is_the_median_of_per_round_differences() -> None:
    assert difference([3.0, 5.0, 14.0], [1.0, 2.0, 10.0]) == (3.0, 2.0, 4.0)


def test_fmt_ratio() -> None:
    assert fmt_ratio(1.034, 0.981, 1.2) == "1.03x (0.98-1.20)"
    assert fmt_ratio(1.0521, 0.981, 1.2, digits=3) == "1.052x (0.98-1.20)"  # not the 1.05x that would pass <= 1.05


@pytest.mark.parametrize(("met", "verdict"), [(True, "met"), (False, "**not met**"), (None, "-")])
def test_row_markdown(met: bool | None, verdict: str) -> None:
    row = Row(name="A / B", measured="1.03x (0.98-1.07)", goal="<= 1.05x", met=met, data="some data")
    assert row.markdown() == f"| A / B | 1.03x (0.98-1.07) | <= 1.05x | {verdict} | some data |"


def test_row_markdown_keeps_a_cell_in_its_column() -> None:
    row = Row(name="a | b", measured="1x", goal="-", met=None, data="line one\nline two")
    assert row.markdown() == "| a \\| b | 1x | - | - | line one line two |"


def test_cpu_model_reads_the_model_name_else_the_architecture(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"
    assert cpu_model(str(tmp_path / "missing")) not in ("", "AMD EPYC 7B13")  # platform's name for the processor


def test_machine_names_the_vector_instructions_of_torchs_kernels(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "torch kernels AVX2" in machine()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert "torch kernels AVX512" in machine()


def test_mean_std_is_the_mean_and_sample_standard_deviation() -> None:
    assert mean_std([0.9, 1.0, 0.95]) == "0.950 ± 0.050"
    assert mean_std([0.9, 1.0, 0.95], 4) == "0.9500 ± 0.0500"


@pytest.mark.parametrize(
    "text",
    [
        "Café déjà vu, naïve RÉSUMÉ!",
        "Great<br />film<br/>really<br>good",
        "don't!!! stop... @user #tag :-) 42x",
        "Ｆｕｌｌｗｉｄｔｈ ﬁne ½ ß",  # compatibility forms: NFKD, not NFD
        "   ",
        "",
    ],
)
def test_python_tokenizer_splits_as_the_apps_tokenizer(text: str) -> None:
    # The tokenization row's baseline must do the app tokenizer's work, or the ratio compares less work.
    tokenizer = new_tokenizer("word")
    words = [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))]
    assert python_tokenize(text) == words


def test_not_measured_says_why() -> None:
    row = not_measured("GPU", "<= 1x", "no GPU")
    assert (row.measured, row.met, row.data) == ("not measured", None, "no GPU")


def test_main_writes_every_row_and_fails_on_a_broken_one(tmp_path, monkeypatch, capsys) -> None:
    def broken(quick: bool) -> Row:
        raise RuntimeError("boom")

    measures = [
        ("one", lambda quick: Row("one", f"quick={quick}", "-", True, "d")),
        ("broken", broken),
        ("two rows", lambda quick: [Row("two", "2x", "-", False, "d"), Row("three", "3x", "-", None, "d")]),
        ("missing", benchmarks_main.provided("harness", "no_such_row", "not there yet")),
    ]
    monkeypatch.setattr(benchmarks_main, "MEASURES", measures)
    output = tmp_path / "BENCHMARKS.md"

    assert benchmarks_main.main(["--quick", "--output", str(output)]) == 1
    text = output.read_text()
    assert not (tmp_path / "BENCHMARKS.md.partial").exists()
    table = [line for line in text.splitlines() if line.startswith("| ") and "comparison" not in line]
    assert [line.split(" | ")[0] for line in table] == ["| one", "| broken", "| two", "| three", "| not there yet"]
    assert "quick=True" in table[0]
    assert "**failed**" in table[1] and "RuntimeError: boom" in table[1]
    assert "`benchmarks.harness.no_such_row(quick)` does not exist yet" in table[4]
    assert "--quick` (quick run)" in text
    assert "| one |" in capsys.readouterr().err  # each row reported as it completes


def test_only_measures_the_rows_whose_label_matches(tmp_path, monkeypatch, capsys) -> None:
    measured = []

    def measure(label: str):
        return lambda quick: measured.append(label) or Row(label, "1x", "-", None, "d")

    labels = ("LeNet overhead", "LSTM overhead", "data path")
    monkeypatch.setattr(benchmarks_main, "MEASURES", [(label, measure(label)) for label in labels])
    output = tmp_path / "rows.md"

    assert benchmarks_main.main(["--only", "OVERHEAD", "--output", str(output)]) == 0
    assert measured == ["LeNet overhead", "LSTM overhead"]
    table = [line for line in output.read_text().splitlines() if line.startswith("| ") and "comparison" not in line]
    assert [line.split(" | ")[0] for line in table] == ["| LeNet overhead", "| LSTM overhead"]

    with pytest.raises(SystemExit) as error:
        benchmarks_main.main(["--only", "nothing like it", "--output", str(output)])
    assert error.value.code == 2
    assert "--only 'nothing like it': no row label contains it" in capsys.readouterr().err


def test_a_full_runs_image_rows_take_fashion_mnist_when_it_is_here(tmp_path, monkeypatch) -> None:
    from benchmarks import fashion
    from benchmarks.overhead import epoch_images
    from conftest import write_mnist

    from datamodules.mnist import IDX_DATASETS

    monkeypatch.setattr(fashion, "DATA_DIR", str(tmp_path))
    monkeypatch.setitem(IDX_DATASETS, "fashion_mnist", replace(IDX_DATASETS["fashion_mnist"], system_dir=""))  # not Debian's
    assert epoch_images(False, 10, 50)[2] == "50 MNIST-shaped digits (scikit-learn's, tiled)"
    assert "Fashion-MNIST is not in" in fashion.lenet_row(False).data
    write_mnist(tmp_path, n_train=70, n_test=20, folder="FashionMNIST")
    images, labels, what = epoch_images(False, 10, 50)
    assert images.shape == (70, 28, 28) and len(labels) == 70 and what == "70 Fashion-MNIST training images"
    assert epoch_images(True, 10, 50)[2] == "10 MNIST-shaped digits (scikit-learn's, tiled)"  # quick: never


@pytest.mark.slow
def test_the_fashion_mnist_rows_run_end_to_end_on_a_small_copy(tmp_path, monkeypatch) -> None:
    """The full run's three Fashion-MNIST rows, on 300 written images instead of 70,000 (a few minutes)."""
    from benchmarks import fashion
    from conftest import write_mnist
    from datamodules.mnist import IDX_DATASETS

    write_mnist(tmp_path, n_train=300, n_test=100, folder="FashionMNIST", compress=True)
    monkeypatch.setattr(fashion, "DATA_DIR", str(tmp_path))
    monkeypatch.setattr(fashion, "DATA_ARGS", ["--data.dataset=fashion_mnist", f"--data.data_dir={tmp_path}", "--trainer.max_epochs=2"])
    monkeypatch.setitem(IDX_DATASETS, "fashion_mnist", replace(IDX_DATASETS["fashion_mnist"], system_dir=""))
    rows = [fashion.lenet_row(False), fashion.autoencoder_row(False), fashion.finetune_row(False, seeds=(0, 1))]
    assert all(row.met is not None for row in rows), [row.markdown() for row in rows]  # measured, with a verdict
    assert rows[0].measured.startswith("LeNet ") and "vs forest" in rows[0].measured
    assert "PCA" in rows[1].measured and "paired standard error" in rows[2].measured
