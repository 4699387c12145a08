"""INTERS-style instruction tuning for search tasks: build instruction data from public data sets with the
templates of :mod:`flagstone.models.prompts` (:mod:`.data`), tune a causal LM on it with LoRA
(:mod:`.tuning`) and score it per task (:mod:`.scoring`)."""
