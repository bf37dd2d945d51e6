# The README's two commands: `make say` (set up, then speak with the shipped voice) and `make test`.
TEXT ?= Hello! This is speechmtp, speaking offline on your computer with the default voice.
OUT ?= hello.wav

.PHONY: setup say test bench voice
setup:
	scripts/setup.sh

say: setup
	.venv/bin/speechmtp say "$(TEXT)" -o $(OUT)

test:
	scripts/setup.sh test
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} .venv/bin/python -m pytest -ra --durations=15 tests

bench: setup
	.venv/bin/speechmtp bench all --out benchmarks/

voice: setup
	.venv/bin/speechmtp recipe default-voice
