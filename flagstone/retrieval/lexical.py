"""Word-level tokenisation for lexical retrieval: lower-casing, a word pattern, stop words, stemming."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Common English function words; content words are never listed, so scientific terms survive.
ENGLISH_STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves
""".split())


class LexicalTokenizer:
    """Turns text into terms: ``lowercase`` -> words matching ``pattern`` -> drop ``stopwords`` -> ``stemmer``.

    ``stemmer`` is a Snowball language name ("english") served by PyStemmer, or None.
    """

    def __init__(
        self,
        *,
        lowercase: bool = True,
        pattern: str = r"(?u)\b\w\w+\b",
        stopwords: Iterable[str] | None = ENGLISH_STOPWORDS,
        stemmer: str | None = "english",
    ) -> None:
        self.lowercase = lowercase
        self.pattern = pattern
        self._regex = re.compile(pattern)
        self.stopwords = frozenset(stopwords or ())
        self.stemmer_name = stemmer
        self._stem = None
        if stemmer is not None:
            import Stemmer  # PyStemmer

            self._stem = Stemmer.Stemmer(stemmer).stemWords

    def __call__(self, text: str) -> list[str]:
        return self.tokenize([text])[0]

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        out = []
        for text in texts:
            if self.lowercase:
                text = text.lower()
            words = [w for w in self._regex.findall(text) if w not in self.stopwords]
            out.append(self._stem(words) if self._stem is not None else words)
        return out

    def config(self) -> dict[str, object]:
        return {"lowercase": self.lowercase, "pattern": self.pattern, "stopwords": sorted(self.stopwords),
                "stemmer": self.stemmer_name}
