"""Translate with an attention RNN encoder-decoder (English->French CLDR phrases offline, any TSV pairs).

    python -m apps.translate fit
    python -m apps.translate fit --data.dataset=tsv --data.path=fra.txt
    python -m apps.translate fit --model.attention=none
    python -m apps.translate test --ckpt_path runs/translate/version_0/checkpoints/last.ckpt
    python -m apps.translate predict --ckpt_path CKPT --data.predict_path sentences.txt --output translations.csv
    python -m apps.translate serve --ckpt_path CKPT --port 8000
"""

from pathlib import Path

from apps.cli import run_app
from datamodules.translation import TranslationDataModule
from models.translator import Translator


def main(args: list[str] | None = None) -> None:
    run_app(
        Translator,
        TranslationDataModule,
        name="translate",
        config=Path(__file__).with_name("config.yaml"),
        monitor="val/bleu",
        links=("source_vocab_size", "target_vocab_size", "pad_id", "bos_id", "eos_id"),
        args=args,
    )


if __name__ == "__main__":
    main()
