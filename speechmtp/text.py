"""Text front end: normalisation, sentence splitting and a character tokenizer.

The tokenizer is a fixed character table (no learned merges): tiny vocab, stable ids across
versions, and every id is meaningful to a small model trained on a few hours of speech.

Normalisation turns what people type into the words a reader says, so the character model only
ever sees letters and a little punctuation: "Dr. Lee paid $5.50 on 3/14/2025 at 3:30 pm" ->
"doctor lee paid five dollars and fifty cents on march fourteenth, twenty twenty-five at three
thirty pee em". The training corpus was spoken by the teacher from this same normalised text
(see speechmtp/synth.py), so changing a reading here means re-synthesising the affected data.
"""
from __future__ import annotations

import re
import unicodedata

from .utils import SpeechMTPError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
_CHARS = " abcdefghijklmnopqrstuvwxyz0123456789'.,!?;:-\"()"
_CHAR_TO_ID = {c: i + 4 for i, c in enumerate(_CHARS)}
TEXT_VOCAB_SIZE = 4 + len(_CHARS)

MAX_TEXT_CHARS = 100_000  # per request; longer text is refused rather than silently truncated

# ---------------------------------------------------------------- numbers -> words
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                      "nine": "ninth", "twelve": "twelfth"}
_DIGIT_WORDS = {str(i): w for i, w in enumerate(_ONES[:10])}


def _below_thousand(n: int) -> str:
    words = []
    if n >= 100:
        words.append(f"{_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(_ONES[n])
    return " ".join(words)


def number_to_words(n: int) -> str:
    """Cardinal in US style without "and": 123 -> "one hundred twenty-three". Huge numbers go digit by digit."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= 10**15:
        return digits_to_words(str(n))
    if n < 1000:
        return _below_thousand(n)
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words.append(f"{_below_thousand(n // scale)} {name}")
            n %= scale
    if n:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """21 -> "twenty-first"."""
    words = number_to_words(n)
    head, sep, last = words.rpartition(" ")
    pre, hyph, unit = last.rpartition("-")
    if unit in _ORDINAL_IRREGULAR:
        unit = _ORDINAL_IRREGULAR[unit]
    elif unit.endswith("y"):
        unit = unit[:-1] + "ieth"
    else:
        unit += "th"
    return head + sep + pre + hyph + unit


def digits_to_words(s: str) -> str:
    """ "5309" -> "five three zero nine" (phone numbers, codes, long digit strings)."""
    return " ".join(_DIGIT_WORDS[c] for c in s if c.isdigit())


def year_to_words(y: int) -> str:
    """1999 -> "nineteen ninety-nine", 2005 -> "two thousand five", 1905 -> "nineteen oh five"."""
    if y < 1000 or y >= 10000 or (2000 <= y <= 2009) or y % 1000 == 0:
        return number_to_words(y)
    hi, lo = divmod(y, 100)
    if lo == 0:
        return f"{number_to_words(hi)} hundred"
    return f"{number_to_words(hi)} {'oh ' + _ONES[lo] if lo < 10 else number_to_words(lo)}"


def _decimal_to_words(s: str) -> str:
    """ "3.14" -> "three point one four"; "1,234.5" handled (commas dropped)."""
    whole, _, frac = s.replace(",", "").partition(".")
    out = number_to_words(int(whole)) if whole else "zero"
    return out + (" point " + digits_to_words(frac) if frac else "")


def _plural(word: str, value: str) -> str:
    return word if value in ("1", "1.0", "one") else (word[:-1] + "ies" if word.endswith("y") and word != "day" else word + "s")


# ---------------------------------------------------------------- letters and abbreviations
_LETTER_NAMES = dict(zip("abcdefghijklmnopqrstuvwxyz",
                         "eigh bee see dee ee ef gee aitch eye jay kay el em en oh pee cue ar ess tee you vee "
                         "double-you ex why zee".split()))
# Acronyms people say as words; every other short all-capital word is spelled out letter by letter.
_SAID_AS_WORDS = {"NASA", "NATO", "UNESCO", "UNICEF", "LASER", "RADAR", "SCUBA", "AIDS", "COVID", "OPEC", "FIFA",
                  "ASAP", "PIN", "GIF", "JPEG", "SIM", "OK", "IKEA", "LEGO", "ZIP"}
# Read the same whatever follows; "St." is settled by context (saint before a name, street otherwise).
_ABBREVIATIONS = {"dr": "doctor", "mr": "mister", "mrs": "missus", "ms": "miz", "prof": "professor", "jr": "junior",
                  "sr": "senior", "mt": "mount", "ave": "avenue", "approx": "approximately", "dept": "department",
                  "etc": "et cetera", "vs": "versus", "inc": "incorporated", "ltd": "limited", "no": "number",
                  "fig": "figure", "gov": "governor", "sgt": "sergeant", "capt": "captain", "gen": "general"}
_MAY_END = {"etc", "inc", "ltd", "jr", "sr", "approx", "dept", "ave"}  # can close a sentence; titles never do
_UNITS = {"km": "kilometer", "kg": "kilogram", "cm": "centimeter", "mm": "millimeter", "m": "meter", "g": "gram",
          "mg": "milligram", "lb": "pound", "lbs": "pound", "oz": "ounce", "ft": "foot", "mi": "mile", "ml": "milliliter",
          "l": "liter", "mph": "miles per hour", "km/h": "kilometers per hour", "kph": "kilometers per hour",
          "kb": "kilobyte", "mb": "megabyte", "gb": "gigabyte", "tb": "terabyte", "kw": "kilowatt", "w": "watt",
          "hz": "hertz", "khz": "kilohertz", "ghz": "gigahertz", "sec": "second", "min": "minute",
          "h": "hour", "hr": "hour", "hrs": "hour", "°c": "degrees celsius", "°f": "degrees fahrenheit"}
_MONTHS = "january february march april may june july august september october november december".split()
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"sept": "september"}
_IDIOMS = {"24/7": "twenty-four seven", "50/50": "fifty-fifty"}
_CURRENCY = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent"), "¥": ("yen", None)}
_SYMBOLS = {"&": " and ", "+": " plus ", "@": " at ", "=": " equals ", "#": " number ", "%": " percent ",
            "/": " slash ", "*": " ", "_": " ", "~": " ", "^": " ", "|": " ", "\\": " ", "<": " ", ">": " ",
            "[": "(", "]": ")", "{": "(", "}": ")", "°": " degrees "}


def spell(word: str) -> str:
    """ "FBI" -> "ef bee eye": letter names as words, which a reader and a character model both say one way."""
    return " ".join(_LETTER_NAMES.get(c, _DIGIT_WORDS.get(c, "")) for c in word.lower()).strip()


def _money(m: re.Match) -> str:
    sym, amount, scale = m.group("sym"), m.group("amt").replace(",", ""), m.group("scale")
    unit, sub = _CURRENCY[sym]
    if scale:  # "$1.2 million" -> "one point two million dollars"
        return f"{_decimal_to_words(amount)} {scale.lower()} {unit}s"
    whole, _, cents = amount.partition(".")
    whole_n = int(whole or 0)
    cents_n = int((cents + "0")[:2]) if cents and sub else 0
    parts = []
    if whole_n or not cents_n:
        parts.append(f"{number_to_words(whole_n)} {_plural(unit, str(whole_n)) if unit != 'yen' else unit}")
    if cents_n:
        subword = sub if cents_n == 1 else ("pence" if sub == "penny" else sub + "s")
        parts.append(f"{number_to_words(cents_n)} {subword}")
    return " and ".join(parts)


def _time(m: re.Match) -> str:
    h, mins, ampm = int(m.group("h")), int(m.group("m") or 0), m.group("ampm")
    if mins == 0:
        words = number_to_words(h) + ("" if ampm else " o'clock")
    elif mins < 10:
        words = f"{number_to_words(h)} oh {_ONES[mins]}"
    else:
        words = f"{number_to_words(h)} {number_to_words(mins)}"
    if ampm:
        words += " " + spell(ampm.replace(".", "").replace(" ", ""))
        if ampm.endswith(".") and _ends_sentence(m.string[m.end():]):
            words += "."  # "at 5 p.m." at the end of a sentence: that dot was also the full stop
    return words


def _ends_sentence(after: str) -> bool:
    return after.strip() == "" or bool(re.match(r"\s+[\"']?[A-Z]", after))


def _date(month: int, day: int, year: str | None) -> str:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ValueError
    out = f"{_MONTHS[month - 1]} {ordinal_to_words(day)}"
    return out + (f", {year_to_words(int(year))}" if year else "")


def _slash_date(m: re.Match) -> str:
    a, b, y = int(m.group(1)), int(m.group(2)), m.group(3)
    if len(y) == 2:
        y = ("20" if int(y) < 50 else "19") + y
    try:  # US order month/day; a first number over 12 can only be a day (day/month)
        return _date(a, b, y) if a <= 12 else _date(b, a, y)
    except ValueError:
        return " slash ".join(_expand_plain_number(x) for x in m.group(0).split("/"))


def _iso_date(m: re.Match) -> str:
    try:
        return _date(int(m.group(2)), int(m.group(3)), m.group(1))
    except ValueError:
        return " ".join(digits_to_words(x) for x in m.group(0).split("-"))


def _month_date(m: re.Match) -> str:
    month = _MONTH_ABBR.get(m.group("mon").lower()[:4].rstrip("."), None) or _MONTH_ABBR[m.group("mon").lower()[:3]]
    day, year = int(m.group("day")), m.group("year")
    if not 1 <= day <= 31:
        return m.group(0)
    return f"{month} {ordinal_to_words(day)}" + (f", {year_to_words(int(year))}" if year else "")


def _fraction(m: re.Match) -> str:
    num, den = int(m.group(1)), int(m.group(2))
    if den == 0:
        return f"{number_to_words(num)} over zero"
    name = {2: "half", 4: "quarter"}.get(den) or ordinal_to_words(den)
    if num != 1:
        name = "halves" if name == "half" else name + "s"
    return f"{number_to_words(num)} {name}"


def _decade(m: re.Match) -> str:
    n = int(m.group(1))
    words = year_to_words(n) if n >= 1000 else number_to_words(n)
    if n % 100 == 0 and n >= 1000:  # "1800s" -> "eighteen hundreds"
        return words + "s"
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _expand_plain_number(s: str) -> str:
    """A bare number token: years, codes with a leading zero, long digit strings, decimals, cardinals."""
    if "." in s:
        return _decimal_to_words(s)
    if "," in s:
        return number_to_words(int(s.replace(",", "")))
    if len(s) > 1 and s.startswith("0") or len(s) >= 6:
        return digits_to_words(s)  # codes and ids are read digit by digit
    n = int(s)
    if len(s) == 4 and 1100 <= n <= 2099:
        return year_to_words(n)
    return number_to_words(n)


def _acronym(m: re.Match) -> str:
    word, plural = m.group(1), m.group(2)
    if word in _SAID_AS_WORDS:
        return word.lower() + (plural or "")
    if len(word) > 5:  # SHOUTING, not an acronym
        return word.lower() + (plural or "")
    spelled = spell(word)
    return spelled + ("'s" if plural else "")


def _abbrev(m: re.Match) -> str:
    key, after = m.group(1).lower(), m.string[m.end():]
    if key == "st":  # "St. Paul" is a saint, "Oak St." a street
        return "saint" if re.match(r"\s*[A-Z]", after) else "street" + ("." if _ends_sentence(after) and
                                                                           not re.match(r"\s+[A-Z]", after) else "")
    if key == "no" and not re.match(r"\s*\d", after):
        return m.group(0)  # "No." abbreviates "number" only before a number
    out = _ABBREVIATIONS[key]
    # "etc." at the end of a sentence: its dot was also the full stop, keep one.
    if key in _MAY_END and _ends_sentence(after):
        out += "."
    return out


_URL_RE = re.compile(r"\b(?:https?://|www\.)[^\s]+[^\s.,!?;:)\"']", re.I)
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_MONEY_RE = re.compile(r"(?P<sym>[$£€¥])\s?(?P<amt>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
                       r"(?:\s(?P<scale>thousand|million|billion|trillion)\b)?", re.I)
_PHONE_RE = re.compile(r"(?<![\d-])(?:\+?1[ -])?(?:\(\d{3}\)\s?|\d{3}[-.])?\d{3}[-.]\d{4}(?![\d-])"
                       r"|\+\d{1,3}(?:[ .-]\d{2,4}){2,5}\b")
_ISO_DATE_RE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_SLASH_DATE_RE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})\b")
_MONTH_DATE_RE = re.compile(r"\b(?P<mon>" + "|".join(m.capitalize() for m in _MONTHS) +
                            r"|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?)"
                            r"\s(?P<day>\d{1,2})(?:st|nd|rd|th)?(?:,?\s(?P<year>\d{4}))?\b")
_TIME_RE = re.compile(r"\b(?P<h>[01]?\d|2[0-3])(?::(?P<m>[0-5]\d))?\s?(?P<ampm>[ap]\.?\s?m\.?(?=[\s,;!?)]|$)|[AP]\.?M\.?\b)", re.I)
_CLOCK_RE = re.compile(r"\b(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?![\d:])(?P<ampm>)")
_UNIT_RE = re.compile(r"(?<![\w.])(?P<num>-?\d+(?:\.\d+)?)\s?(?P<unit>" +
                      "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True)) + r")(?![\w/])", re.I)


def _unit(m: re.Match) -> str:
    num, unit = m.group("num"), _UNITS[m.group("unit").lower()]
    words = _expand_plain_number(num.lstrip("-")) if "." in num or len(num.lstrip("-")) < 6 else digits_to_words(num)
    if num.startswith("-"):
        words = "minus " + words
    one = num.lstrip("-") in ("1", "1.0")
    if " per " in unit or unit.startswith("degrees"):
        return f"{words} {unit if not one else unit}"
    unit = "feet" if unit == "foot" and not one else unit if one else unit + "s"
    return f"{words} {unit}"


def _spoken_url(s: str) -> str:
    s = re.sub(r"^https?://", "", s, flags=re.I)
    out = []
    for part in re.split(r"([./:\-_?=&@])", s):
        if part in (".", "/", ":", "-", "_", "?", "=", "&", "@"):
            out.append({".": "dot", "/": "slash", ":": "colon", "-": "dash", "_": "underscore", "?": "question mark",
                        "=": "equals", "&": "and", "@": "at"}[part])
        elif part.lower() == "www":
            out.append("double-you double-you double-you")
        elif part.isdigit():
            out.append(digits_to_words(part))
        elif part:
            out.append(part.lower())
    return " ".join(out)


def _check_length(text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise SpeechMTPError(f"text is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,} per request: "
                             "send it in parts (e.g. a paragraph at a time)")


def _fold_to_ascii(text: str) -> str:
    """Drop accents from Latin letters ("café" -> "cafe"); letters of other scripts stay for the script check."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(ch):
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def _check_script(text: str) -> None:
    letters = [c for c in text if c.isalpha()]
    latin = sum(1 for c in letters if c.isascii())
    if letters and latin == 0 and not any(c.isdigit() for c in text):
        sample = next(c for c in letters)
        name = unicodedata.name(sample, "unknown").split()[0].lower()
        raise SpeechMTPError(f"the text is written in a script this voice cannot read ({name}, e.g. {sample!r}); "
                             "the default voice reads English: give it English text")


def normalize(text: str) -> str:
    """What people type -> the lower-case words a reader says, with . , ! ? ; : - ' " ( ) kept for prosody.

    Raises SpeechMTPError for text over MAX_TEXT_CHARS and for text written only in a script the voice
    cannot read. Characters of another script inside English text are dropped.
    """
    _check_length(text)
    text = unicodedata.normalize("NFKC", text)
    text = (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u2014", " - ").replace("\u2013", " - ").replace("\u2212", "-").replace("\u2026", "..."))
    text = _fold_to_ascii(text)
    _check_script(text)
    # Order matters: the most specific patterns (URLs, money, dates, times) run before bare numbers.
    text = _URL_RE.sub(lambda m: _spoken_url(m.group(0)), text)
    text = _EMAIL_RE.sub(lambda m: _spoken_url(m.group(0)), text)
    text = _MONEY_RE.sub(_money, text)
    text = _PHONE_RE.sub(lambda m: ", ".join(digits_to_words(g) for g in re.findall(r"\d+", m.group(0))), text)
    text = _ISO_DATE_RE.sub(_iso_date, text)
    text = _SLASH_DATE_RE.sub(_slash_date, text)
    text = _MONTH_DATE_RE.sub(_month_date, text)
    text = _TIME_RE.sub(_time, text)
    text = _CLOCK_RE.sub(_time, text)
    text = re.sub(r"\b(\d{4})\s?-\s?(\d{4})\b", lambda m: f"{year_to_words(int(m.group(1)))} to "
                  f"{year_to_words(int(m.group(2)))}", text)
    text = re.sub(r"(-?\d+(?:\.\d+)?)\s?%", lambda m: f"{m.group(1)} percent", text)
    text = re.sub(r"(?:'(?=\d)|\b)(\d0|\d{3}0)s\b", _decade, text)
    text = _UNIT_RE.sub(_unit, text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), text, flags=re.I)
    text = re.sub(r"\b(24/7|50/50)\b", lambda m: _IDIOMS[m.group(1)], text)
    text = re.sub(r"(?<![\d/])(\d{1,2})/(\d{1,2})(?![\d/])", _fraction, text)
    text = re.sub(r"\b\d+(?:\.\d+){2,}\b", lambda m: " point ".join(_expand_plain_number(x) for x in m.group(0).split(".")),
                  text)  # versions and IP-like strings: "2.0.1" -> "two point zero point one"
    text = re.sub(r"(?<=\d)\s?-\s?(?=\d)", " to ", text)  # ranges and scores: "5-10" -> "five to ten"
    text = re.sub(r"(?<=[A-Za-z])-(?=\d)", " ", text)  # "COVID-19" -> "covid 19"
    # Abbreviations: before sentence splitting would see their full stops, and before lower-casing.
    text = re.sub(r"\b(?:e\.g\.|i\.e\.)", lambda m: "for example" if m.group(0)[0] in "eE" else "that is", text,
                  flags=re.I)
    text = re.sub(r"\b(" + "|".join(_ABBREVIATIONS) + r"|st)\.", _abbrev, text, flags=re.I)
    # Dotted initialisms ("U.S.", "U.K."): letter names; the last dot doubles as a full stop at a sentence end.
    text = re.sub(r"\b(?:[A-Za-z]\.){2,}", lambda m: spell(m.group(0).replace(".", "")) +
                  ("." if _ends_sentence(m.string[m.end():]) else ""), text)
    text = re.sub(r"\b([A-Z]{2,})(s)?\b", _acronym, text)
    # A letter glued to digits ("BA123", "A4"): spell the letters, read the number.
    text = re.sub(r"\b([A-Za-z]{1,3})(\d+)\b", lambda m: f"{spell(m.group(1))} {_expand_plain_number(m.group(2))}", text)
    text = re.sub(r"(?:(?<=^)|(?<=[\s(]))-(?=\d)", "minus ", text)
    text = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+", lambda m: " " + _expand_plain_number(m.group(0)) + " ",
                  text)
    text = "".join(_SYMBOLS.get(c, c) for c in text)
    text = text.lower()
    text = "".join(c if c in _CHAR_TO_ID else " " for c in text)  # anything else would reach the model as UNK
    text = re.sub(r"\s+([.,!?;:)])", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text


# ---------------------------------------------------------------- sentences
_NO_SPLIT_AFTER = {"dr", "mr", "mrs", "ms", "prof", "jr", "sr", "mt", "ave", "approx", "dept", "vs", "no", "fig",
                   "gov", "sgt", "capt", "gen", "e.g", "i.e", "cf"}
_SPLIT_IF_CAPITAL = {"etc", "st", "inc", "ltd", "a.m", "p.m"}  # may end a sentence; say so when a capital follows


def sentence_ends(text: str):
    """Yield (end, next_start) for each sentence boundary in `text`: the sentence is text[:end] (punctuation
    and closing quotes included), the next one starts at next_start. A boundary needs whitespace after it,
    so a streaming caller can feed partial text and only ever get boundaries that later text cannot undo,
    except "etc." / "St." / "p.m." at the very end of the buffer, which wait for the next word's case.
    """
    for m in re.finditer(r"[.!?;]+[\"')\]]*(\s+)|\n[ \t]*\n\s*", text):
        if m.group(1) is None:  # blank line
            yield m.start(), m.end()
            continue
        if m.group(0)[0] == ".":
            word = re.search(r"([\w.]*)\.$", text[:m.start() + 1])
            w = (word.group(1) if word else "").lower()
            if w in _NO_SPLIT_AFTER or (len(w) == 1 and w.isalpha() and text[m.start() - 1].isupper()):
                continue  # "Dr. Lee", "e.g. this", "J. R. Tolkien"
            if w in _SPLIT_IF_CAPITAL and not text[m.end():m.end() + 1].isupper():
                continue  # "etc. and more" goes on; "etc. Then" ends
        yield m.start(1), m.end()


def split_sentences(text: str) -> list[str]:
    """Split after . ! ? ; (and closing quotes/brackets) followed by space, or at blank lines.

    Does not split after titles and abbreviations ("Dr. Lee", "e.g. this", "vs. them"), single initials
    ("J. R. R. Tolkien"), or inside numbers ("3.5"); "etc." / "St." / "p.m." end a sentence only before a capital.
    """
    out, start = [], 0
    for end, nxt in sentence_ends(text):
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        start = nxt
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


# ---------------------------------------------------------------- tokenizer
def encode(text: str, normalized: bool = False) -> list[int]:
    """Text -> ids with BOS/EOS. Raises SpeechMTPError when nothing speakable remains."""
    _check_length(text)
    norm = text if normalized else normalize(text)
    ids = [_CHAR_TO_ID.get(c, UNK) for c in norm]
    if not any(c.isalnum() for c in norm):  # punctuation alone is nothing to say
        raise SpeechMTPError(f"nothing speakable in the text {text[:60]!r}: the voice reads English letters, digits and punctuation")
    return [BOS] + ids + [EOS]


_ID_TO_CHAR = {v: k for k, v in _CHAR_TO_ID.items()}


def decode(ids: list[int]) -> str:
    return "".join(_ID_TO_CHAR.get(i, "") for i in ids)
