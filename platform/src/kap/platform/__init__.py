"""kap.platform: settings, domain types, PostgreSQL models, the `kap` CLI, local services."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kap-platform")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
