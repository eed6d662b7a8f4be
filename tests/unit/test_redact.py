from cxrelay.redact import redact_text, redact_url, url_secrets


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:s3cr%40t@10.0.0.5:554/live?x=1") == \
        "rtsp://***@10.0.0.5:554/live?x=1"
    assert redact_url("rtsp://cam.local/live") == "rtsp://cam.local/live"
    assert redact_url("rtsp://user@[fe80::1]/x") == "rtsp://***@[fe80::1]/x"
    assert redact_url("/var/video/demo.mp4") == "/var/video/demo.mp4"


def test_redact_text_scrubs_urls_and_known_secrets() -> None:
    url = "rtsp://admin:hunter2@10.0.0.5/live"
    msg = f"Server returned 401 for '{url}' (password hunter2)"
    out = redact_text(msg, url_secrets(url))
    assert "hunter2" not in out and "admin" not in out
    assert "rtsp://***@10.0.0.5/live" in out


def test_url_secrets_includes_decoded_forms() -> None:
    assert set(url_secrets("rtsp://bob:p%40ss@h/x")) == {"bob", "p%40ss", "p@ss"}
    assert url_secrets("rtsp://ab:longpassword@h/") == ("longpassword",)  # short user kept
