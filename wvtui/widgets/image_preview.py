"""One training image in the terminal (textual-image): Kitty or Sixel graphics where the terminal
has them, coloured half-blocks everywhere else (plain SSH, tmux, a test's headless driver).

textual-image asks the terminal what it supports when it is first imported, by writing escape
sequences and reading the answer from stdin. That only works before Textual owns stdin, so this
module imports it at the top and the app imports this module before it starts.

Its cell-size probe divides by the terminal's column count, which a fresh pty (some SSH and CI
sessions) reports as 0; the import would then fail with ZeroDivisionError, so the probe runs
here first and falls back to textual-image's own default cell size (VT340's 10x20 px).
"""

from __future__ import annotations

import os

from PIL import Image as PILImage
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static
from textual_image import _terminal

try:
    _terminal.get_cell_size()
except (ArithmeticError, OSError, ValueError, _terminal.TerminalError):
    _terminal.get_cell_size._result = _terminal.CellSize(10, 20)  # the cache the probe fills

from textual_image.renderable import Image as DetectedRenderable
from textual_image.renderable.sixel import Image as SixelRenderable
from textual_image.renderable.tgp import Image as TGPRenderable
from textual_image.widget import HalfcellImage, SixelImage, TGPImage


def image_widget_class(detected: type = DetectedRenderable, headless: bool = False) -> type[Widget]:
    """The widget for what the terminal supports. textual-image falls back to grey shade
    characters when stdout is no terminal; half-blocks keep the colours, which is what a
    person checking a label needs, so anything without graphics gets those."""
    if not headless and detected is SixelRenderable:
        return SixelImage
    if not headless and detected is TGPRenderable:
        return TGPImage
    return HalfcellImage


class ImagePreview(Vertical):
    """A caption line and the image; a file that cannot be read is said in the caption."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path: str | None = None
        self.error: str | None = None
        self.image: Widget | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("select a sample to see its image", style="dim"), id="preview-caption")

    def show(self, path: str | None, caption: str = "", unavailable: str = "") -> None:
        """Show the image at `path`, or say `unavailable` (why there is no file to read)."""
        self.path, self.error = path, None
        picture: PILImage.Image | None = None
        if path is None:
            self.error = unavailable or "no image"
        else:
            try:
                with PILImage.open(path) as opened:
                    picture = opened.convert("RGB")  # decodes it all now: a truncated file fails here
            except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
                self.error = f"cannot read {os.path.basename(path)}: {exc}"
        text = Text(caption, style="bold") if caption else Text()
        if self.error:
            text.append(("\n" if caption else "") + self.error, style="yellow")
        self.query_one("#preview-caption", Static).update(text)
        if picture is None:
            if self.image is not None:
                self.image.remove()
                self.image = None
            return
        if self.image is None:
            cls = image_widget_class(headless=self.app.is_headless)
            self.image = cls(picture, id="preview-image")
            self.mount(self.image)
        else:
            self.image.image = picture
