"""A dozen short, distinct documents for the generative-retrieval tests (no file scanning, instant)."""
from __future__ import annotations

DOCUMENTS = {
    "zinc": "Zinc lozenges taken early shorten the common cold by about a day in adults.",
    "bees": "Honey bees dance in a figure of eight to tell the hive where flowers are.",
    "stars": "Neutron stars are the collapsed cores of massive stars after a supernova.",
    "tides": "Ocean tides rise and fall twice a day under the pull of the moon and sun.",
    "bread": "Sourdough bread rises because wild yeast and bacteria ferment the dough.",
    "chess": "In chess the king may castle only if neither piece has moved before.",
    "glacier": "Glaciers carve deep U-shaped valleys as they slide slowly downhill.",
    "violin": "A violin has four strings tuned in fifths and is played with a bow.",
    "python": "Python lists grow by over-allocating memory so appends are amortised constant time.",
    "rust": "Iron rusts when oxygen and water react with it to form hydrated iron oxide.",
    "coffee": "Coffee beans are roasted to develop aroma through the Maillard reaction.",
    "owls": "Owls hunt at night and find mice by sound with asymmetric ears.",
}


def corpus(n: int = 12) -> tuple[list[str], list[str]]:
    ids = list(DOCUMENTS)[:n]
    return ids, [DOCUMENTS[i] for i in ids]
