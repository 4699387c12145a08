"""News recommendation on the MIND format: a base model, GateFormer and SFI, with MIND's leaderboard metrics.

Modules (importing this package loads none of them; torch is needed only by ``model`` and ``recommender``):

- ``mind``: read and write ``news.tsv`` / ``behaviors.tsv`` exactly as MIND ships them, with one-line errors
  naming file and line;
- ``synthetic``: MIND-format data with planted interests, popularity and temporal drift (tests, benchmarks);
- ``metrics``: per impression AUC, MRR, nDCG@5, nDCG@10, averaged over impressions;
- ``baselines``: random, popularity, topic;
- ``model`` / ``recommender``: the news encoder (a small transformer over title words, optionally started from
  an embedding model's word vectors), the user encoder (attention over the clicked history), GateFormer's token
  gate and SFI's hard history selection, trained with MIND's objective (softmax over one click and K unclicked
  items of the same impression); ``NewsRecommender`` trains, scores, evaluates, saves and loads.

The real data (Microsoft News Dataset, https://msnews.github.io; read its licence terms first). Each zip holds
one folder of news.tsv, behaviors.tsv and entity/relation embeddings (the latter are not used here):

    MIND-small (50,000 users):  https://mind201910small.blob.core.windows.net/release/MINDsmall_train.zip
                                https://mind201910small.blob.core.windows.net/release/MINDsmall_dev.zip
    MIND-large (1 million users): https://mind201910small.blob.core.windows.net/release/MINDlarge_train.zip
                                https://mind201910small.blob.core.windows.net/release/MINDlarge_dev.zip
                                https://mind201910small.blob.core.windows.net/release/MINDlarge_test.zip
                                (test impressions carry no labels: score them on the leaderboard)

    unzip MINDsmall_train.zip -d MINDsmall_train && unzip MINDsmall_dev.zip -d MINDsmall_dev
    flagstone train newsrec MINDsmall_train -o nrms-gate --kind gateformer --word-vectors all-MiniLM-L6-v2
    flagstone eval newsrec MINDsmall_dev --model nrms-gate

(Not run here: this machine has no MIND data and no internet; the benchmark uses the synthetic generator.)
"""
