"""Helpers shared by the widget sweep tests (imported by them; not a test module)."""

import matplotlib

matplotlib.use("Agg")


def ok(panel, *images) -> None:
    """The panel shows no error and every image is a PNG."""
    assert 'class="iovalab-err"' not in panel.text.value, panel.text.value
    for img in images or (panel.image,):
        assert bytes(img.value).startswith(b"\x89PNG")


def options(dropdown) -> list:
    """The values (not labels) a Dropdown offers."""
    return [o[1] if isinstance(o, tuple) else o for o in dropdown.options]
