"""`speechmtp bench all` (report, plots, README block) and `speechmtp recipe` (stage commands), on a tiny voice."""
import json

import pytest

from speechmtp.bench import all as bench_all
from speechmtp.engine import build_tiny_checkpoint
from speechmtp import recipe
from speechmtp.utils import SpeechMTPError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("voice") / "tiny"))


def test_bench_all_writes_json_plots_and_readme_block(tiny, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench_all.README_BEGIN}\nold\n{bench_all.README_END}\noutro\n")
    out = tmp_path / "bench"
    rc = bench_all.main(["--out", str(out), "--checkpoint", tiny, "--quick", "--skip", "codec,voice",
                         "--clients", "1,2", "--serve-seconds", "1", "--update-readme", str(readme)])
    assert rc == 0
    res = json.loads((out / "cpu" / "results.json").read_text())
    assert [r["depth"] for r in res["depth_sweep"]] == [0, 1, 2]  # tiny voice has 2 heads
    assert res["decode"]["greedy_identical"] is True
    assert [r["clients"] for r in res["serve"]] == [1, 2] and all(r["sessions"] >= 1 for r in res["serve"])
    for name in ("depth_speedup.png", "acceptance_per_depth.png", "ttfa_hist.png", "concurrency_rtf.png"):
        assert (out / "cpu" / name).read_bytes()[:4] == b"\x89PNG"
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| greedy mtp |" in text and "](bench/cpu/depth_speedup.png)" in text


def test_bench_all_refuses_a_readme_without_the_block(tiny, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SpeechMTPError, match="bench-all:begin"):
        bench_all.main(["--out", str(tmp_path / "b"), "--checkpoint", tiny, "--quick", "--skip", "codec,voice,serve,decode",
                        "--update-readme", str(readme)])


def test_recipe_dry_run_prints_every_stage(capsys):
    assert recipe.main(["--dry-run", "--scale", "cpu", "--name", "v9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2:4] for line in out] == [["data", "synth"], ["codec", "train"], ["train", "--data"],
                                                   ["train", "--data"], ["eval", "--checkpoint"], ["bench", "voice"]]
    assert any("--heads-only" in line and "--distill" in line for line in out)
    assert any("codecs/v9" in line for line in out) and any("--codec v9" in line for line in out)


def test_recipe_rejects_unknown_stage():
    with pytest.raises(SpeechMTPError, match="unknown stages"):
        recipe.main(["--dry-run", "--stages", "corpus,tts"])
