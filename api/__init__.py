"""MAIP Ledger's HTTP facade (aiohttp) and the ``maip-ledger`` server CLI."""

from api.app import create_app
from api.config import Config
from api.errors import ApiError, ConfigError, KeyStoreError, ProblemError
from api.keys import KeyStore

__all__ = [
    "ApiError",
    "Config",
    "ConfigError",
    "KeyStore",
    "KeyStoreError",
    "ProblemError",
    "create_app",
]
