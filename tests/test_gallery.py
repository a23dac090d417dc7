"""The README's gallery shows files that are in the repository (made by benchmarks/gallery.py)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Markdown images ![alt](path) and HTML <img src="path">.
_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)[^)]*\)|<img\s[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']")


def _image_links(text: str) -> list[str]:
    return [md or html for md, html in _IMAGE.findall(text)]


def test_gallery_images_exist():
    links = [link for link in _image_links(README.read_text()) if not re.match(r"[a-z]+://", link)]
    gallery = [link for link in links if link.startswith("benchmarks/results/gallery/")]
    assert len(gallery) >= 3, f"the README's gallery shows {len(gallery)} figures: {gallery}"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README image links to files not in the repository: {missing}"


def test_link_pattern():
    text = '![a](benchmarks/x.png "t") <img width="3" src="b/y.png"> ![c](https://e/z.png)'
    assert _image_links(text) == ["benchmarks/x.png", "b/y.png", "https://e/z.png"]
