"""Scale-out on Ray: distributed encoding, sharded indexes with shared training, scatter-gather search.

Nothing here imports Ray at module level; a missing Ray raises :class:`~flagstone.errors.MissingDependencyError`
naming the ``ray`` extra. Modules: :mod:`.cluster` (connecting), :mod:`.encode` (corpus -> embedding shards on an
actor pool), :mod:`.shards` (building a sharded retriever folder and searching it across shard actors).
"""
