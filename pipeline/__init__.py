"""sdbatch: asyncio batch generation for Stable Diffusion WebUI backends."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("sdbatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
