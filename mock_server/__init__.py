"""kie-mock: an offline fake of kie.ai's Suno upload-and-cover API."""

__version__ = "0.1.0"
