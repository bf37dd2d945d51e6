"""Build the default voice's sentence lists (train.txt, heldout.txt) from templates.

Every sentence is generated here from hand-written templates and word lists with a fixed seed,
so the lists are ours to ship (MIT, like the code) and `python -m speechmtp.corpus.build`
re-creates them byte for byte. Plain sentences come first in train.txt and the ones that need
text normalisation (numbers, dates, money, abbreviations, symbols) after them: the corpus is
synthesised in file order, so a partial corpus is still mostly clean prose.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

NAMES = ("Anna Ben Carla David Emma Frank Grace Henry Iris Jack Kate Leo Maria Noah Olivia Peter Quinn Rosa Sam Tara "
         "Umar Vera Walter Yusuf Zoe Alice Brian Chloe Daniel Ella Felix Hannah Isaac Julia Kevin Laura Martin Nina Oscar "
         "Paula Ryan Sofia Thomas Ursula Victor Wendy Xavier Yara Arthur Bella Caleb Diana Ethan Fiona George Helen Ivan "
         "Jasmine Lucas Megan Nathan Priya Rachel Simon Tessa Vincent Eleanor Marcus Naomi Gabriel Lydia Samuel").split()
SURNAMES = ("Smith Johnson Brown Taylor Miller Wilson Moore Clark Lewis Walker Hall Young King Wright Green Baker Adams "
            "Nelson Carter Mitchell Roberts Turner Phillips Campbell Parker Evans Edwards Collins Stewart Morris Murphy "
            "Cook Rogers Morgan Cooper Peterson Reed Bailey Bell Howard Ward Cox Richardson Wood Watson Brooks Bennett "
            "Gray James Hughes Price Sanders Myers Long Ross Foster Powell Jenkins Perry Russell Sullivan Fisher Henderson").split()
CITIES = ("Boston Chicago Denver Seattle Portland Austin Atlanta Dallas Phoenix Miami Detroit Memphis Nashville Omaha "
          "Toronto Vancouver London Dublin Paris Berlin Madrid Lisbon Rome Vienna Prague Oslo Stockholm Helsinki Cairo "
          "Nairobi Sydney Melbourne Auckland Tokyo Seoul Lima Santiago Montreal Edinburgh Glasgow Manchester Liverpool").split()
NOUNS = ("book lamp chair table window garden kitchen river bridge mountain forest village station ticket letter "
         "bicycle umbrella jacket basket bottle blanket candle carpet ladder mirror pencil pocket saddle shovel "
         "bucket kettle hammer needle ribbon whistle wagon barrel cabinet curtain engine harbor island meadow orchard "
         "package parcel pillow puzzle rocket sandwich satchel signal statue ferry lantern compass violin trumpet "
         "piano guitar drum camera radio printer keyboard notebook calendar envelope stamp coin wallet sweater "
         "scarf boot glove helmet tent map painting sculpture fountain tower castle cottage cabin barn fence gate "
         "road tunnel valley canyon desert glacier volcano beach cliff lake pond stream waterfall storm cloud "
         "rainbow breeze thunder shadow puddle pebble feather acorn pumpkin carrot onion tomato lemon peach cherry "
         "melon biscuit muffin pancake omelette noodle soup salad pie cake cookie recipe spoon fork plate bowl cup "
         "teapot saucepan oven fridge sink faucet drawer shelf closet attic cellar hallway staircase balcony roof "
         "chimney doorbell mailbox clock watch calculator telescope microscope magnet battery wire switch bulb").split()
ADJS = ("old new small large bright dark quiet noisy warm cold heavy light narrow wide tall short smooth rough "
        "shiny dusty clean muddy empty crowded gentle fierce ancient modern simple clever careful curious friendly "
        "lonely hungry sleepy busy lazy brave nervous proud silly strange famous hidden broken golden silver wooden "
        "woolen painted frozen soft sharp sweet bitter sour fresh stale rusty polished striped spotted tiny huge "
        "pale vivid cheerful gloomy steady fragile sturdy elegant humble peculiar remarkable delightful").split()
COLORS = "red blue green yellow orange purple brown black white gray pink crimson amber violet turquoise".split()
PLACES = ("the market|the library|the park|the museum|the harbor|the station|the bakery|the office|the school|"
          "the hospital|the theater|the stadium|the airport|the garden|the beach|the farm|the village square|"
          "the old mill|the bookshop|the post office|the river bank|the top of the hill|the end of the street|"
          "the corner shop|the town hall|the cathedral|the zoo|the gym|the laboratory|the workshop").split("|")
TIMES = ("this morning|last night|yesterday|on Monday|on Tuesday|on Wednesday|on Thursday|on Friday|on Saturday|"
         "on Sunday|in the spring|in the summer|in the autumn|in the winter|at dawn|at dusk|at noon|at midnight|"
         "after lunch|before dinner|last week|next month|every evening|once a year|the day before yesterday|"
         "later today|early tomorrow|in a few minutes|a long time ago|during the holidays").split("|")
# (past tense, base form, object noun pool) so that "Did you X" and "She Xed" both read naturally.
VERBS = [("found", "find"), ("lost", "lose"), ("bought", "buy"), ("sold", "sell"), ("painted", "paint"),
         ("carried", "carry"), ("fixed", "fix"), ("cleaned", "clean"), ("opened", "open"), ("closed", "close"),
         ("borrowed", "borrow"), ("returned", "return"), ("dropped", "drop"), ("moved", "move"), ("hid", "hide"),
         ("noticed", "notice"), ("wrapped", "wrap"), ("measured", "measure"), ("photographed", "photograph"),
         ("repaired", "repair"), ("polished", "polish"), ("described", "describe"), ("ordered", "order"),
         ("delivered", "deliver"), ("replaced", "replace"), ("checked", "check"), ("weighed", "weigh"),
         ("shared", "share"), ("brought", "bring"), ("left", "leave"), ("built", "build"), ("drew", "draw")]
INTRANS = ("laughed|smiled|waited|sighed|shouted|whispered|hurried home|fell asleep|stayed inside|walked slowly|"
           "ran ahead|sat down|stood still|looked around|turned back|kept quiet|worked late|sang softly|"
           "cried a little|danced all night|listened carefully|gave up|got lost|woke up early").split("|")
REASONS = ("because it was raining|because the shop was closed|since nobody else would|because the bus was late|"
           "although it was getting dark|even though it was expensive|while everyone else was asleep|"
           "as soon as the bell rang|before the storm arrived|after the guests had gone|"
           "so that nobody would worry|without saying a word|as if nothing had happened|"
           "until the lights went out|once the snow had melted").split("|")
FEELINGS = "happy|worried|surprised|tired|excited|confused|relieved|annoyed|grateful|amazed|disappointed|calm".split("|")
PROVERBS = """The early bird catches the worm.
A stitch in time saves nine.
Actions speak louder than words.
Every cloud has a silver lining.
Practice makes perfect.
Honesty is the best policy.
Look before you leap.
Better late than never.
Two heads are better than one.
Where there is smoke, there is fire.
Rome was not built in a day.
Still waters run deep.
The pen is mightier than the sword.
Fortune favors the bold.
All that glitters is not gold.""".splitlines()


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plain(r: random.Random) -> str:
    n, n2 = r.choice(NAMES), r.choice(NAMES)
    noun, noun2 = r.choice(NOUNS), r.choice(NOUNS)
    adj, adj2 = r.choice(ADJS), r.choice(ADJS)
    past, base = r.choice(VERBS)
    place, when, reason = r.choice(PLACES), r.choice(TIMES), r.choice(REASONS)
    city, color, feel = r.choice(CITIES), r.choice(COLORS), r.choice(FEELINGS)
    templates = [
        f"{n} {past} the {adj} {noun} at {place} {when}.",
        f"{n} {past} {_a(adj)} {noun} {reason}.",
        f"{when[0].upper() + when[1:]}, {n} and {n2} {r.choice(INTRANS)} near {place}.",
        f"Did you {base} the {noun} that {n} left at {place}?",
        f"Why did {n} {base} the {adj} {noun} {when}?",
        f"Where did you put the {color} {noun}?",
        f"Have you ever seen {_a(adj)} {noun} like this one?",
        f"Could you please {base} the {noun} before {n} gets back?",
        f"What {_a(adj)} {noun} that was!",
        f"Watch out, the {noun} is {adj}!",
        f"I can't believe {n} {past} the {noun} {when}!",
        f"The {noun} in the {noun2} looked {adj} and a little {adj2}.",
        f"{n} felt {feel} when the {noun} arrived from {city}.",
        f"We {past} the {noun}, but the {noun2} was still {adj}.",
        f"If the {noun} is {adj}, {n} will {base} it {when}.",
        f"{n} said that the {noun} from {city} was {adj}.",
        f"\"Is the {noun} ready yet?\" asked {n}.",
        f"\"Not yet,\" {n} replied, \"but the {noun} is almost {adj}.\"",
        f"The {adj} {noun}, which {n} {past} {when}, is now at {place}.",
        f"{n} {r.choice(INTRANS)}; {n2} {r.choice(INTRANS)} {reason}.",
        f"After visiting {city}, {n} {past} {_a(color)} {noun} for {n2}.",
        f"There is {_a(adj)} {noun} behind the {noun2}, next to the {color} door.",
        f"Nobody knew why the {noun} was so {adj} {when}.",
        f"{n} {r.choice(SURNAMES)} moved to {city} {when} and never looked back.",
        f"Please {base} the {noun}, the {noun2} and the {r.choice(NOUNS)}.",
        f"Is it true that {n} {past} {_a(adj)} {noun} in {city}?",
        f"The train to {city} left {when}, so {n} {r.choice(INTRANS)}.",
        f"Honestly, I think the {noun} looks better in {color}.",
        f"{n} kept the {noun} (the {adj} one) in a drawer at {place}.",
        f"One {noun}, two {noun2}s, and a very {adj} {r.choice(NOUNS)}.",
        f"How long will it take to {base} the {noun}?",
        f"It's {adj}, it's {adj2}, and it's exactly what {n} wanted.",
        f"Don't {base} the {noun} until {n} says so.",
        f"The {adj} wind blew across {place} {when}.",
        f"{n}'s {noun} was {adj}, but {n2}'s was even more {adj2}.",
        r.choice(PROVERBS),
    ]
    return r.choice(templates)


MONTHS = "January February March April May June July August September October November December".split()
UNITS = ["km", "kg", "cm", "mm", "m", "g", "lb", "mph", "km/h", "ml", "GB", "MB"]
ACRONYMS = ["FBI", "NASA", "BBC", "CEO", "USA", "UK", "EU", "UN", "GPS", "DVD", "ATM", "TV", "PC", "NHS", "IBM", "USB"]
ABBR_TITLES = ["Dr.", "Mr.", "Mrs.", "Ms.", "Prof."]
DOMAINS = ["example.com", "mail.org", "shop.net", "travel.io", "news.co.uk"]


def _money(r: random.Random) -> str:
    sym = r.choice(["$", "$", "$", "£", "€"])
    kind = r.random()
    if kind < 0.4:
        return f"{sym}{r.randint(1, 99)}.{r.randint(0, 99):02d}"
    if kind < 0.7:
        return f"{sym}{r.choice([r.randint(1, 999), r.randint(1000, 99999)]):,}"
    if kind < 0.85:
        return f"{sym}{r.randint(1, 9)}.{r.randint(1, 9)} {r.choice(['million', 'billion'])}"
    return f"{sym}{r.randint(1, 20)}"


def _number_sentence(r: random.Random) -> str:
    n, n2 = r.choice(NAMES), r.choice(NAMES)
    noun = r.choice(NOUNS)
    city = r.choice(CITIES)
    month, day, year = r.choice(MONTHS), r.randint(1, 28), r.choice([r.randint(1900, 2030), r.randint(1700, 2099)])
    h, mm = r.randint(1, 12), r.choice([0, 5, 10, 15, 20, 30, 45, r.randint(0, 59)])
    ampm = r.choice(["am", "pm", "a.m.", "p.m.", "AM", "PM"])
    stop = "" if ampm.endswith(".") else "."  # "at 6 p.m." not "at 6 p.m.."
    o = r.randint(1, 120)
    suffix = "th" if 10 <= o % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(o % 10, "th")
    title = r.choice(ABBR_TITLES)
    sur = r.choice(SURNAMES)
    templates = [
        f"The {noun} costs {_money(r)} at the shop in {city}.",
        f"{n} paid {_money(r)} for two tickets and {_money(r)} for dinner.",
        f"The company earned {_money(r)} last year.",
        f"{n} was born on {month} {day}, {year}.",
        f"The meeting is on {r.randint(1, 12)}/{day}/{r.randint(2000, 2030)} at {h}:{mm:02d} {ampm}{stop}",
        f"The deadline is {r.randint(2000, 2030)}-{r.randint(1, 12):02d}-{day:02d}.",
        f"The train leaves at {h}:{mm:02d} {ampm} from platform {r.randint(1, 20)}.",
        f"Please arrive by {h} {ampm} on {month} {day}.",
        f"{n} finished {o}{suffix} out of {r.randint(o + 1, 900)} runners.",
        f"It's the {o}{suffix} time I've asked you to {r.choice(VERBS)[1]} the {noun}!",
        f"There are {r.randint(2, 9999):,} {noun}s in the warehouse.",
        f"The population of {city} is about {r.randint(100, 9999) * 1000:,}.",
        f"The temperature fell to -{r.randint(1, 40)} degrees overnight.",
        f"Sales rose by {r.randint(1, 99)}.{r.randint(1, 9)}% in {year}.",
        f"About {r.randint(2, 99)}% of people in {city} own {_a(noun)}.",
        f"The recipe needs {r.randint(2, 500)} {r.choice(['g', 'ml', 'kg'])} of flour and {r.randint(2, 5)} eggs.",
        f"The {noun} weighs {r.randint(1, 99)}.{r.randint(1, 9)} {r.choice(['kg', 'lb', 'g'])}.",
        f"{city} is {r.randint(2, 999)} {r.choice(['km', 'miles'])} from here.",
        f"The speed limit is {r.choice([20, 25, 30, 40, 50, 60, 70])} {r.choice(['mph', 'km/h'])}.",
        f"Call {n} at {r.randint(200, 999)}-{r.randint(200, 999)}-{r.randint(0, 9999):04d}.",
        f"My new phone number is {r.randint(200, 999)}-{r.randint(0, 9999):04d}.",
        f"Your order number is {r.randint(10000, 9999999)}.",
        f"{title} {sur} will see you at {h}:{mm:02d} {ampm}{stop}",
        f"{title} {sur} lives on {r.choice(NAMES)} St. near the {noun} shop.",
        f"{n} and {n2} met {title} {sur} in {city} in {year}.",
        f"Bring something to read, e.g. a {noun} or a magazine.",
        f"We need cups, plates, spoons, etc. for the party.",
        f"Tonight it's {city} vs. {r.choice(CITIES)} at {h} {ampm}{stop}",
        f"{n} & {n2} opened a {noun} shop in {city}.",
        f"Two + two is four, and {r.randint(2, 9)} + {r.randint(2, 9)} is more.",
        f"Send it to {n.lower()}@{r.choice(DOMAINS)} before {month} {day}.",
        f"Visit www.{r.choice(NOUNS)}{r.choice(['.com', '.org'])} for more details.",
        f"The {r.choice(ACRONYMS)} said the {noun} was found in {city}.",
        f"{n} works for the {r.choice(ACRONYMS)} and has a {r.randint(2, 64)} {r.choice(['GB', 'MB'])} {noun}.",
        f"Chapter {r.randint(2, 40)} starts on page {r.randint(10, 500)}.",
        f"The score was {r.randint(0, 9)} to {r.randint(0, 9)} after {r.randint(10, 90)} minutes.",
        f"In {year}, {n} {r.choice(VERBS)[0]} {r.randint(2, 99)} {noun}s.",
        f"Flight {r.choice(['BA', 'UA', 'AF', 'LH'])}{r.randint(10, 999)} to {city} departs at {h}:{mm:02d}.",
        f"Only {r.randint(2, 9)}.{r.randint(1, 99)} percent of the {noun}s were {r.choice(ADJS)}.",
        f"Roughly {r.randint(1, 9)}/{r.choice([2, 3, 4, 8, 10])} of the {noun} was {r.choice(ADJS)}.",
        f"{month} {day}{'st' if day in (1, 21) else 'nd' if day in (2, 22) else 'rd' if day in (3, 23) else 'th'} "
        f"is {n}'s birthday.",
        f"The {noun} was built in the {r.choice(['1800s', '1920s', '1960s', '1990s', '2010s'])}.",
        f"It took {r.randint(2, 59)} minutes and {r.randint(2, 59)} seconds to {r.choice(VERBS)[1]} the {noun}.",
        f"Room {r.randint(100, 999)} is on the {r.randint(4, 19)}th floor.",
    ]
    return r.choice(templates)


def build(seed: int = 1234, n_plain: int = 4600, n_numeric: int = 2600, n_heldout: int = 200) -> tuple[list[str], list[str]]:
    r = random.Random(seed)
    seen: set[str] = set()

    def draw(fn, count):
        out = []
        while len(out) < count:
            s = fn(r)
            if s not in seen:
                seen.add(s)
                out.append(s)
        return out

    plain = draw(_plain, n_plain)
    numeric = draw(_number_sentence, n_numeric)
    # Held-out: drawn after training sentences (distinct by construction), same mix as training.
    held_numeric = n_heldout * n_numeric // (n_plain + n_numeric)
    heldout = draw(_plain, n_heldout - held_numeric) + draw(_number_sentence, held_numeric)
    r.shuffle(heldout)
    return plain + numeric, heldout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args()
    train, heldout = build(a.seed)
    Path(a.out, "train.txt").write_text("\n".join(train) + "\n")
    Path(a.out, "heldout.txt").write_text("\n".join(heldout) + "\n")
    print(f"train: {len(train)} sentences, heldout: {len(heldout)} sentences -> {a.out}")


if __name__ == "__main__":
    main()
