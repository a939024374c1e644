"""sdbatch: asyncio batch generation for Stable Diffusion WebUI backends."""

# Kept equal to pyproject.toml's version by tests/test_commands.py (no importlib.metadata at
# start-up: it costs a tenth of a second on every command).
__version__ = "0.1.0"

__all__ = ["__version__"]
