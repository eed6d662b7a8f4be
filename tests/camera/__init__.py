"""The GStreamer RTSP test camera, its stamp SEI helpers and its pytest harness."""
