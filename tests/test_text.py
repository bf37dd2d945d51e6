"""Text front end: number/date/money readings, abbreviations, sentence splitting, tokenizer ids."""
import pytest

from speechmtp import text as T
from speechmtp.utils import SpeechMTPError


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (21, "twenty-one"), (100, "one hundred"),
    (123, "one hundred twenty-three"), (1005, "one thousand five"), (2_500_000, "two million five hundred thousand"),
    (-4, "minus four"), (10**15, "one zero zero zero zero zero zero zero zero zero zero zero zero zero zero zero"),
])
def test_number_to_words(n, words):
    assert T.number_to_words(n) == words


@pytest.mark.parametrize("n, words", [(1, "first"), (2, "second"), (3, "third"), (12, "twelfth"), (20, "twentieth"),
                                      (21, "twenty-first"), (100, "one hundredth"), (103, "one hundred third")])
def test_ordinals(n, words):
    assert T.ordinal_to_words(n) == words


@pytest.mark.parametrize("y, words", [(1999, "nineteen ninety-nine"), (2000, "two thousand"), (2005, "two thousand five"),
                                      (2010, "twenty ten"), (1905, "nineteen oh five"), (1900, "nineteen hundred"),
                                      (2024, "twenty twenty-four")])
def test_years(y, words):
    assert T.year_to_words(y) == words


@pytest.mark.parametrize("src, out", [
    # numbers
    ("I have 3 cats.", "i have three cats."),
    ("It costs 1,234 coins.", "it costs one thousand two hundred thirty-four coins."),
    ("Pi is 3.14.", "pi is three point one four."),
    ("She came 21st.", "she came twenty-first."),
    ("It was -5 today.", "it was minus five today."),
    ("In 1999 we met.", "in nineteen ninety-nine we met."),
    ("The 1990s and the '80s.", "the nineteen nineties and the eighties."),
    ("Add 1/2 cup.", "add one half cup."),
    # dates and times
    ("On 3/14/2025 it rained.", "on march fourteenth, twenty twenty-five it rained."),
    ("On March 3, 2024 it rained.", "on march third, twenty twenty-four it rained."),
    ("Due 2024-03-14.", "due march fourteenth, twenty twenty-four."),
    ("Meet at 3:30 pm today.", "meet at three thirty pee em today."),
    ("Meet at 3:05.", "meet at three oh five."),
    ("Meet at 12:00.", "meet at twelve o'clock."),
    ("Leave at 6 p.m. Then rest.", "leave at six pee em. then rest."),
    # money and percent
    ("Pay $5.50 now.", "pay five dollars and fifty cents now."),
    ("Pay £3 now.", "pay three pounds now."),
    ("Pay €10 now.", "pay ten euros now."),
    ("Pay $1 now.", "pay one dollar now."),
    ("Pay $0.01 now.", "pay one cent now."),
    ("It made $1.2 million.", "it made one point two million dollars."),
    ("Up 12.5% today.", "up twelve point five percent today."),
    # abbreviations, units, symbols
    ("Dr. Lee met Mr. and Mrs. Ng.", "doctor lee met mister and missus ng."),
    ("Go to St. Louis via Oak St. today.", "go to saint louis via oak street today."),
    ("Bring fruit, e.g. apples, i.e. food.", "bring fruit, for example apples, that is food."),
    ("Cups, plates, etc.", "cups, plates, et cetera."),
    ("Red vs. Blue.", "red versus blue."),
    ("It is 10 km and 3 kg away.", "it is ten kilometers and three kilograms away."),
    ("Go 60 mph.", "go sixty miles per hour."),
    ("Tom & Jerry + Spike @ home", "tom and jerry plus spike at home"),
    ("No. 5 please.", "number five please."),
    # spelled out
    ("The FBI and NASA.", "the ef bee eye and nasa."),
    ("Call 555-867-5309.", "call five five five, eight six seven, five three zero nine."),
    ("Code 0042 and id 8462911.", "code zero zero four two and id eight four six two nine one one."),
    ("Mail bob@example.com now.", "mail bob at example dot com now."),
    ("See www.example.com/help now.", "see double-you double-you double-you dot example dot com slash help now."),
    ("Read pages 5-10.", "read pages five to ten."),
    ("Open 24/7.", "open twenty-four seven."),
    ("COVID-19 hit.", "covid nineteen hit."),
    ("Version 2.0.1 out.", "version two point zero point one out."),
    ("Back in the U.S.", "back in the you ess."),
    ("The U.S. team won.", "the you ess team won."),
    ("Meet at 7 AM.", "meet at seven eigh em."),
    # typography
    ("\u201cCaf\u00e9\u201d \u2014 it\u2019s  fine\u2026", '"cafe" - it\'s fine...'),
])
def test_normalize(src, out):
    assert T.normalize(src) == out


def test_normalize_output_is_all_in_the_table():
    messy = "Q3 \u00bd [x] {y} <z> ~*^|\\ 5\u00b0C \u00a5300 #1 \u03b1\u03b2 \u4e2d 100%"
    norm = T.normalize(messy)
    assert all(c in T._CHAR_TO_ID for c in norm), norm
    assert not any(c.isdigit() for c in norm)


def test_foreign_script_is_a_clear_error():
    with pytest.raises(SpeechMTPError, match="script"):
        T.normalize("\u4eca\u5929\u5929\u6c14\u5f88\u597d")
    with pytest.raises(SpeechMTPError, match="script"):
        T.encode("\u041f\u0440\u0438\u0432\u0435\u0442")
    assert T.normalize("Hello \u4e16\u754c") == "hello"  # stray foreign words inside English are dropped


def test_too_long_is_refused():
    with pytest.raises(SpeechMTPError, match="limit"):
        T.normalize("a" * (T.MAX_TEXT_CHARS + 1))
    with pytest.raises(SpeechMTPError, match="limit"):
        T.encode("a" * (T.MAX_TEXT_CHARS + 1))


def test_nothing_speakable():
    with pytest.raises(SpeechMTPError, match="nothing speakable"):
        T.encode("   ")


@pytest.mark.parametrize("src, parts", [
    ("Dr. Smith came. He left.", ["Dr. Smith came.", "He left."]),
    ("It is 3.5 metres. Next!", ["It is 3.5 metres.", "Next!"]),
    ("Use e.g. salt. Or not?", ["Use e.g. salt.", "Or not?"]),
    ("Red vs. Blue. Go", ["Red vs. Blue.", "Go"]),
    ("Cups, etc. and more. Okay", ["Cups, etc. and more.", "Okay"]),
    ("We need cups, etc. Then go.", ["We need cups, etc.", "Then go."]),
    ('He said "Hi." Then J. R. R. Tolkien wrote.', ['He said "Hi."', "Then J. R. R. Tolkien wrote."]),
    ("One; two", ["One;", "two"]),
    ("Para one\n\npara two", ["Para one", "para two"]),
    ("", []),
])
def test_split_sentences(src, parts):
    assert T.split_sentences(src) == parts


def test_ids_are_stable():
    # Other modules and trained checkpoints depend on these exact ids: only appending to _CHARS is allowed.
    assert (T.PAD, T.BOS, T.EOS, T.UNK) == (0, 1, 2, 3)
    assert T._CHARS.startswith(" abcdefghijklmnopqrstuvwxyz0123456789'.,!?;:-\"()")
    assert T.TEXT_VOCAB_SIZE == 4 + len(T._CHARS)
    ids = T.encode("Hi, 2!")
    assert ids[0] == T.BOS and ids[-1] == T.EOS
    assert T.decode(ids) == "hi, two!"


def test_shipped_corpus_normalizes_cleanly():
    from pathlib import Path

    import speechmtp

    corpus = Path(speechmtp.__file__).parent / "corpus"
    train = (corpus / "train.txt").read_text().splitlines()
    held = (corpus / "heldout.txt").read_text().splitlines()
    assert len(set(train)) == len(train) >= 5000
    assert not set(train) & set(held)
    for s in train[::7] + held:
        ids = T.encode(s)
        assert T.UNK not in ids, s
        assert not any(c.isdigit() for c in T.decode(ids)), s


def test_sentence_ends_streaming():
    # Boundaries found in a prefix stay boundaries of the whole text (what a streaming buffer needs).
    full = "Dr. Lee came at 3.5 p.m. Then e.g. tea! Is it? Yes. And"
    whole = list(T.sentence_ends(full))
    for cut in range(len(full)):
        part = list(T.sentence_ends(full[:cut]))
        assert part == whole[:len(part)], full[:cut]
    assert [full[:e] for e, _ in whole][0] == "Dr. Lee came at 3.5 p.m."
