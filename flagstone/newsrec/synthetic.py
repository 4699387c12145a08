"""Synthetic MIND-format data with planted user interests, for tests and benchmarks (no MIND data ships here).

What is planted, and so what a model can learn:
- **topics**: every news item has a category and subcategory (MIND's own category names); its title and
  abstract are sentences built from that subcategory's and category's vocabulary, mixed with general news
  words and a few words of other topics, so a text encoder has signal and a gate has tokens worth dropping;
- **user interests**: each user likes a few subcategories (a sparse Dirichlet draw over them); the click
  history is drawn from those interests;
- **popularity**: each item has a log-normal appeal that raises its chance to be shown and clicked;
- **temporal drift**: a user's interests move linearly, over the days, toward a second interest draw
  (``drift`` is the share moved by the last day), so the latest clicks say more than the oldest.

The click probability of a shown item is ``sigmoid(interest_weight * (interest(t)[subcategory] * S - 1) +
popularity_weight * appeal + bias)`` (S = number of subcategories, so an average interest gives 0). Each
impression gets at least one click and one non-click, like MIND's. Training impressions come from days
0..train_days-1 and the dev impressions from the next day, as MIND-small's train (6 days) / dev (1 day);
each split's news.tsv holds every item its behaviors.tsv mentions.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from flagstone.errors import DataError
from flagstone.newsrec.mind import Impression, MindSplit, News, write_mind

# category -> subcategory -> its own words; the category's words are the union plus CATEGORY_WORDS
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "sports": {
        "football_nfl": ("quarterback", "touchdown", "nfl", "playoff", "linebacker", "receiver", "bears", "packers",
                         "cowboys", "patriots", "interception", "sack"),
        "basketball_nba": ("nba", "lakers", "celtics", "rebound", "dunk", "guard", "forward", "warriors", "buzzer",
                           "assists", "courtside", "rookie"),
        "soccer": ("striker", "goalkeeper", "premier", "league", "penalty", "midfielder", "cup", "derby",
                   "transfer", "header", "offside", "stadium"),
    },
    "finance": {
        "markets": ("stocks", "dow", "nasdaq", "shares", "investors", "rally", "selloff", "earnings", "index",
                    "bond", "yields", "traders"),
        "personalfinance": ("retirement", "savings", "mortgage", "credit", "budget", "debt", "taxes", "pension",
                            "loan", "paycheck", "401k", "frugal"),
        "companies": ("ceo", "merger", "startup", "layoffs", "revenue", "acquisition", "boardroom", "profit",
                      "quarterly", "shareholders", "ipo", "executive"),
    },
    "health": {
        "medical": ("hospital", "surgery", "doctors", "patients", "cancer", "diagnosis", "treatment", "clinic",
                    "vaccine", "disease", "symptoms", "trial"),
        "fitness": ("workout", "running", "muscle", "cardio", "yoga", "stretching", "gym", "squats", "marathon",
                    "endurance", "trainer", "reps"),
        "nutrition": ("diet", "protein", "vitamins", "sugar", "calories", "fiber", "keto", "vegan", "hydration",
                      "snacks", "metabolism", "portion"),
    },
    "foodanddrink": {
        "recipes": ("recipe", "bake", "oven", "casserole", "soup", "skillet", "dough", "roast", "sauce",
                    "marinade", "dessert", "pie"),
        "restaurants": ("chef", "restaurant", "menu", "diner", "bistro", "reservation", "tasting", "brunch",
                        "waiter", "cuisine", "michelin", "patio"),
        "drinks": ("wine", "cocktail", "beer", "coffee", "brewery", "whiskey", "espresso", "vineyard", "bartender",
                   "tea", "cider", "sommelier"),
    },
    "travel": {
        "destinations": ("island", "beach", "resort", "cruise", "mountains", "village", "coastline", "castle",
                         "safari", "lagoon", "canyon", "volcano"),
        "flights": ("airline", "flight", "airport", "passengers", "runway", "boarding", "luggage", "pilot",
                    "layover", "cabin", "delays", "jet"),
        "hotels": ("hotel", "suite", "lobby", "booking", "concierge", "motel", "checkin", "amenities", "hostel",
                   "poolside", "rooftop", "innkeeper"),
    },
    "weather": {
        "storms": ("hurricane", "tornado", "thunderstorm", "flooding", "winds", "landfall", "evacuation", "hail",
                   "lightning", "surge", "cyclone", "rainfall"),
        "winter": ("snow", "blizzard", "frost", "icy", "snowfall", "freezing", "sleet", "chill", "plow",
                   "avalanche", "subzero", "snowstorm"),
        "climate": ("heatwave", "drought", "wildfire", "temperatures", "emissions", "warming", "glacier",
                    "carbon", "record", "humidity", "smoke", "climate"),
    },
    "autos": {
        "cars": ("sedan", "suv", "horsepower", "engine", "dealership", "pickup", "coupe", "mileage", "hybrid",
                 "convertible", "torque", "hatchback"),
        "electric": ("tesla", "battery", "charging", "ev", "range", "charger", "autopilot", "lithium",
                     "plugin", "kilowatt", "electrified", "rivian"),
        "racing": ("nascar", "formula", "racetrack", "lap", "pitstop", "podium", "speedway", "grandprix",
                   "driver", "qualifying", "checkered", "indycar"),
    },
    "entertainment": {
        "celebrity": ("celebrity", "actress", "singer", "paparazzi", "gossip", "couple", "divorce", "wedding",
                      "instagram", "fans", "redcarpet", "star"),
        "movies": ("movie", "film", "boxoffice", "director", "sequel", "trailer", "premiere", "oscar", "cinema",
                   "blockbuster", "screenplay", "hollywood"),
        "tv": ("series", "episode", "season", "finale", "sitcom", "netflix", "showrunner", "cast", "reboot",
               "streaming", "drama", "binge"),
    },
    "news": {
        "politics": ("senate", "congress", "election", "governor", "campaign", "ballot", "impeachment", "voters",
                     "democrats", "republicans", "lawmakers", "bill"),
        "crime": ("police", "arrest", "suspect", "shooting", "robbery", "court", "jury", "sentenced", "detective",
                  "investigation", "murder", "trial"),
        "world": ("embassy", "diplomats", "protest", "border", "refugees", "summit", "minister", "treaty",
                  "sanctions", "parliament", "ceasefire", "envoy"),
    },
    "lifestyle": {
        "home": ("kitchen", "garden", "remodel", "furniture", "decor", "backyard", "closet", "renovation",
                 "houseplants", "bedroom", "declutter", "paint"),
        "parenting": ("toddler", "baby", "parents", "school", "kids", "teenager", "bedtime", "nursery",
                      "homework", "daycare", "siblings", "newborn"),
        "pets": ("dog", "puppy", "cat", "kitten", "shelter", "adoption", "vet", "leash", "rescue", "breed",
                 "paws", "groomer"),
    },
    "music": {
        "concerts": ("concert", "tour", "tickets", "festival", "stage", "encore", "setlist", "arena", "headliner",
                     "crowd", "gig", "venue"),
        "albums": ("album", "single", "chart", "billboard", "lyrics", "vinyl", "producer", "remix", "debut",
                   "ballad", "studio", "track"),
        "awards": ("grammy", "nominations", "winners", "ceremony", "trophy", "nominee", "acceptance", "gala",
                   "honor", "category", "lifetime", "tribute"),
    },
    "video": {
        "viral": ("viral", "video", "clip", "footage", "caught", "camera", "hilarious", "watch", "moment",
                  "dashcam", "prank", "millions"),
        "animals": ("bear", "whale", "elephant", "zoo", "wildlife", "dolphins", "owl", "lion", "deer", "shark",
                    "baby", "herd"),
        "science": ("nasa", "rocket", "telescope", "planet", "asteroid", "astronauts", "mars", "orbit", "moon",
                    "discovery", "fossils", "researchers"),
    },
}
# words every title may use, whatever its topic (what a token gate should learn to drop)
GENERAL_WORDS = ("new", "the", "a", "after", "this", "week", "says", "report", "first", "big", "why", "how",
                 "what", "could", "will", "more", "than", "over", "year", "top", "best", "people", "time", "day",
                 "just", "here", "back", "most", "every", "one", "may", "now", "still", "latest", "major", "local",
                 "you", "your", "need", "know")
# title shapes (g: a general word, s: a subcategory word, c: a category word): 9 to 14 words, about half of
# them general, as MIND titles average about 11 words
_TEMPLATES = (
    "{g} {s} {g} {c} {s} {g} {g} {s} {g}",
    "{s} {g} {s} {c} {g} {g} {s} {g} {c} {g}",
    "{g} {g} {s} {c} {g} {s} {g} {g} {c} {s} {g}",
    "{c} {s} {g} {s} {g} {c} {g} {g} {s} {g} {g} {s}",
    "{g} {s} {g} {s} {g} {c} {g} {s} {g} {g} {c} {g} {s}",
    "{s} {g} {c} {g} {g} {s} {g} {c} {g} {s} {g} {g} {s} {g}",
)
START_DAY = datetime(2019, 11, 9)  # MIND-small covers 9 to 15 November 2019


@dataclass(frozen=True)
class SyntheticMindConfig:
    """Sizes and strengths of the planted signals. Defaults make a data set that trains in minutes on a CPU."""

    n_users: int = 400
    news_per_day: int = 150
    train_days: int = 6
    history_news: int = 600  # items published before day 0: the pool clicked histories are drawn from
    train_impressions: int = 4000
    dev_impressions: int = 1000
    history_length: tuple[int, int] = (5, 40)  # a user's clicked history, uniform in [low, high]
    candidates: tuple[int, int] = (8, 30)  # shown per impression, uniform in [low, high]
    interests_per_user: float = 0.15  # Dirichlet concentration over subcategories: small = few interests
    interest_weight: float = 1.2
    popularity_weight: float = 0.8
    bias: float = -3.0
    drift: float = 0.5  # share of a user's interests moved to a new draw by the dev day
    off_topic_words: float = 0.15  # chance a topical word slot takes a word of another topic
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_users", "news_per_day", "train_days", "history_news", "train_impressions",
                     "dev_impressions"):
            if getattr(self, name) < 1:
                raise DataError(f"synthetic MIND: {name} must be at least 1")
        for name in ("history_length", "candidates"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise DataError(f"synthetic MIND: {name} must be (low, high) with 1 <= low <= high")
        if self.candidates[0] < 2:
            raise DataError("synthetic MIND: an impression needs at least 2 candidates (a click and a non-click)")
        if not 0.0 <= self.drift <= 1.0 or not 0.0 <= self.off_topic_words <= 1.0:
            raise DataError("synthetic MIND: drift and off_topic_words must be between 0 and 1")


@dataclass
class SyntheticMind:
    """The two splits, plus the planted truth (for tests and baselines that want to check the signal)."""

    train: MindSplit
    dev: MindSplit
    subcategory_of: dict[str, str]  # news id -> subcategory
    appeal: dict[str, float]  # news id -> planted popularity (log scale)
    config: SyntheticMindConfig


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_mind(config: SyntheticMindConfig = SyntheticMindConfig()) -> SyntheticMind:
    """Draw a synthetic MIND data set (deterministic for ``config.seed``)."""
    rng = np.random.default_rng(config.seed)
    subcats = [(cat, sub) for cat, subs in TOPICS.items() for sub in subs]
    n_sub = len(subcats)
    vocab_of_cat = {cat: tuple(w for words in subs.values() for w in words) for cat, subs in TOPICS.items()}
    all_topic_words = tuple(w for words in vocab_of_cat.values() for w in words)

    def sentence(cat: str, sub: str) -> str:
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        words = []
        for slot in template.split():
            if slot == "{g}":
                words.append(GENERAL_WORDS[rng.integers(len(GENERAL_WORDS))])
                continue
            if rng.random() < config.off_topic_words:
                words.append(all_topic_words[rng.integers(len(all_topic_words))])
            elif slot == "{s}":
                words.append(TOPICS[cat][sub][rng.integers(len(TOPICS[cat][sub]))])
            else:
                words.append(vocab_of_cat[cat][rng.integers(len(vocab_of_cat[cat]))])
        text = " ".join(words)
        return text[0].upper() + text[1:]

    # news: a pre-period pool (histories) and news_per_day items published each day
    n_news = config.history_news + config.news_per_day * (config.train_days + 1)
    topic_of = rng.integers(n_sub, size=n_news)
    appeal = rng.normal(0.0, 1.0, size=n_news)
    day_of = np.concatenate([np.full(config.history_news, -1),
                             np.repeat(np.arange(config.train_days + 1), config.news_per_day)])
    news_ids = [f"N{10000 + i}" for i in range(n_news)]
    items = []
    for i, news_id in enumerate(news_ids):
        cat, sub = subcats[topic_of[i]]
        title, abstract = sentence(cat, sub), sentence(cat, sub) + " " + sentence(cat, sub) + "."
        items.append(News(news_id, cat, sub, title, abstract, f"https://example.org/news/{news_id}.html"))

    # users: interests at day 0 and the draw they drift toward
    start = rng.dirichlet(np.full(n_sub, config.interests_per_user), size=config.n_users)
    target = rng.dirichlet(np.full(n_sub, config.interests_per_user), size=config.n_users)
    last_day = config.train_days  # the dev day

    def interest(user: int, day: float) -> np.ndarray:
        share = config.drift * day / last_day
        return (1.0 - share) * start[user] + share * target[user]

    def click_prob(user: int, day: float, idx: np.ndarray) -> np.ndarray:
        logit = (config.interest_weight * (interest(user, day)[topic_of[idx]] * n_sub - 1.0)
                 + config.popularity_weight * appeal[idx] + config.bias)
        return _sigmoid(logit)

    pool = np.flatnonzero(day_of == -1)
    histories = []
    for user in range(config.n_users):
        length = int(rng.integers(config.history_length[0], config.history_length[1] + 1))
        weights = click_prob(user, 0.0, pool)
        chosen = rng.choice(pool, size=min(length, len(pool)), replace=False, p=weights / weights.sum())
        histories.append([news_ids[i] for i in chosen])

    def impressions(days: range, count: int, first_id: int) -> list[Impression]:
        out = []
        for n in range(count):
            day = float(days[0] + (days[-1] + 1 - days[0]) * (n + rng.random()) / count)
            user = int(rng.integers(config.n_users))
            # shown: items of the last two days, the appealing ones more often
            live = np.flatnonzero((day_of >= max(0, math.floor(day) - 1)) & (day_of <= math.floor(day)))
            show = np.exp(0.5 * appeal[live])
            size = min(len(live), int(rng.integers(config.candidates[0], config.candidates[1] + 1)))
            shown = rng.choice(live, size=size, replace=False, p=show / show.sum())
            p = click_prob(user, day, shown)
            labels = (rng.random(len(shown)) < p).astype(int)
            if labels.sum() == 0:  # MIND impressions have a click: the likeliest one by the planted model
                labels[int(np.argmax(p + 1e-9 * rng.random(len(p))))] = 1
            if labels.sum() == len(labels):
                labels[int(np.argmin(p))] = 0
            when = START_DAY + timedelta(days=day)
            out.append(Impression(str(first_id + n), f"U{1000 + user}", when.replace(microsecond=0),
                                  tuple(histories[user]), tuple(news_ids[i] for i in shown),
                                  tuple(int(y) for y in labels)))
        out.sort(key=lambda imp: imp.time)
        return out

    train = impressions(range(0, config.train_days), config.train_impressions, 1)
    dev = impressions(range(config.train_days, config.train_days + 1), config.dev_impressions,
                      config.train_impressions + 1)

    def split(imps: list[Impression]) -> MindSplit:
        used = {nid for imp in imps for nid in imp.history + imp.candidates}
        return MindSplit({it.news_id: it for it in items if it.news_id in used}, imps)

    return SyntheticMind(split(train), split(dev), {news_ids[i]: subcats[topic_of[i]][1] for i in range(n_news)},
                         {news_ids[i]: float(appeal[i]) for i in range(n_news)}, config)


def write_synthetic_mind(folder: str | os.PathLike[str], config: SyntheticMindConfig = SyntheticMindConfig()
                         ) -> SyntheticMind:
    """Generate and write ``folder/train`` and ``folder/dev`` (each news.tsv + behaviors.tsv) plus
    ``folder/config.json`` with the settings that made them."""
    import json

    from flagstone._io import atomic_write

    data = generate_mind(config)
    root = Path(folder)
    write_mind(data.train, root / "train")
    write_mind(data.dev, root / "dev")
    with atomic_write(root / "config.json") as handle:
        json.dump({"generator": "flagstone.newsrec.synthetic", **asdict(config)}, handle, indent=2)
    return data
