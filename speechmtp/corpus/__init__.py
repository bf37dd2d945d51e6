"""Sentence lists for the default voice (see SOURCES.md); `python -m speechmtp.corpus.build` re-creates them."""
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent
TRAIN_TXT = CORPUS_DIR / "train.txt"
HELDOUT_TXT = CORPUS_DIR / "heldout.txt"
