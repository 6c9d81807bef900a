"""The erasec version, from the installed distribution's metadata."""

from importlib import metadata


def erasec_version() -> str:
    try:
        return metadata.version("erasec")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
