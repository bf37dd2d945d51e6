"""The `speechmtp` command: a thin dispatcher to each subcommand's own `main(argv)`.

Each subcommand module owns its argparse; importing lazily keeps `speechmtp --help` fast and
lets the engine run without the demo or evaluation extras installed.
"""
from __future__ import annotations

import importlib
import sys

from .utils import SpeechMTPError

# command words -> (module, help). Two-word commands are looked up first.
COMMANDS: dict[str, tuple[str, str]] = {
    "say": ("speechmtp.say", "synthesise text with the shipped (or a given) voice"),
    "serve": ("speechmtp.server", "run the WebSocket + HTTP server"),
    "client": ("speechmtp.client", "stream text to a server and save or play the audio"),
    "train": ("speechmtp.train", "train a speech LM (or new MTP heads) on paired text-audio data"),
    "eval": ("speechmtp.eval", "word error rate of a voice against the teacher"),
    "codec train": ("speechmtp.codec.train", "train the built-in codec"),
    "codec roundtrip": ("speechmtp.codec.roundtrip", "encode and decode an audio file with a codec"),
    "data synth": ("speechmtp.synth", "build a paired text-audio corpus with the offline Piper voice"),
    "data encode": ("speechmtp.data", "encode a corpus into the token cache"),
    "bench codec": ("speechmtp.bench.codec", "codec speed and streaming exactness"),
    "bench decode": ("speechmtp.bench.decode", "ntp vs mtp vs mtp-relaxed decoding speed"),
    "bench serve": ("speechmtp.bench.serve", "concurrent WebSocket load"),
    "bench voice": ("speechmtp.bench.voice", "real-time factor and first-audio latency vs the teacher"),
    "bench all": ("speechmtp.bench.all", "every benchmark, plots and a Markdown table"),
    "recipe default-voice": ("speechmtp.recipe", "the whole default-voice recipe: data, codec, LM, eval"),
}


def _usage() -> str:
    lines = ["usage: speechmtp COMMAND [options]   (speechmtp COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<22} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    key = " ".join(argv[:2])
    if key in COMMANDS:
        rest = argv[2:]
    elif argv[0] in COMMANDS:
        key, rest = argv[0], argv[1:]
    else:
        print(f"speechmtp: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[key][0])
    try:
        rc = module.main(rest)
    except SpeechMTPError as e:
        print(f"speechmtp {key}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
