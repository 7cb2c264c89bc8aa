"""meter on NATS JetStream: the same engine, partitioned over a replicated log, for more than one machine.

One ``meter serve`` process on a data directory stays the default. A cluster splits that process in two kinds, over a
NATS JetStream cluster (R3 file streams, key-value buckets and an object store; never a replication protocol of
meter's own):

- **Edges** (``meter serve --cluster``, ``edge``) are stateless: they authenticate (keys in JetStream's key-value
  store, ``keys``), parse and validate in Rust as ``meter serve`` does, split a batch by partition (a hash of tenant
  and customer) and append each part to the log (``log``), answering once every part is stored by a quorum. Then
  they wait a bounded time for the owning workers' outcomes (``200``), or answer ``202`` with a batch to look up.
  Queries ask the owners of the partitions involved and merge their partial answers exactly (``Engine.usage_partial``).
- **Workers** (``meter worker --cluster``, ``worker``) each own some partitions through leases in the key-value store
  (``leases``, compare-and-set with a TTL, renewed while alive). A worker applies its partition's log to one engine
  per partition, writing the log position and each entry's outcome in the same atomic write as the state
  (``Engine.apply``): exactly once is the engine's dedup plus that position, never the broker's acknowledgement.
  It checkpoints each partition's RocksDB to the object store (``checkpoints``); the log keeps entries for a day.
- When a worker dies its leases expire and the others take its partitions: restore the latest checkpoint, replay the
  log from its position. Nothing else holds state.

``settings`` owns the names of everything in JetStream and the cluster's fixed facts (the number of partitions).
The seam a second log (a Kafka-protocol one) would implement is ``log``: append a part with an idempotency key and get
its position; read a partition in order from a position; drop a partition's entries before a position.
"""
