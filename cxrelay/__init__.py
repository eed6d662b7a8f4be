"""cxrelay: relay H.264 from RTSP cameras to web browsers with as little delay as possible."""

__version__ = "0.1.0"
