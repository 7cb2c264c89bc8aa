"""The catalog: what meter knows besides usage (tenants and API keys so far), stored with rocksdict."""

from meter.catalog.keys import ApiKey, KeyStore, Scope

__all__ = ["ApiKey", "KeyStore", "Scope"]
