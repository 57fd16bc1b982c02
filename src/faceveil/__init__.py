"""faceveil: veil every face in a photo; lift the veil with the password.

PRO-Face S (keyed invertible hiding network) on whole photos, with the originals recoverable from
the saved 8-bit PNG.
"""

__version__ = "0.2.0"

# The public API, imported on first use so that `import faceveil` stays light (no torch).
_API = {"protect": "api", "recover": "api", "anonymize": "api", "inspect": "api", "Protected": "api",
        "Recovered": "api", "Anonymized": "api",
        "FaceInfo": "api", "load_model": "models.zoo", "available_models": "models.zoo",
        "VEILS": "obfuscate", "apply_veil": "obfuscate", "FaceveilError": "errors",
        "WrongPasswordError": "errors"}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module 'faceveil' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
