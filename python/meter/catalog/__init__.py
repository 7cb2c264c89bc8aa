"""The catalog: what meter knows besides usage, stored with rocksdict apart from the usage store.

Tenants and API keys (`keys`), and the billing catalog (`billing`): customers, products, versioned plans with their
prices, subscriptions. `prices` holds the price rules once, for catalog validation and rating alike; `types` the
checked value types every catalog number, id and time is made of; `files` reads catalog files; `kv` opens rocksdict.
"""

from meter.catalog.keys import ApiKey, KeyStore, Scope

__all__ = ["ApiKey", "KeyStore", "Scope"]
