"""Gradio components specific to the dashboard."""
from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

import gradio as gr
from gradio.data_classes import ImageData

from .service import DATA_URL_FOLDER, MAX_UPLOAD_BYTES, too_large_message

__all__ = ["RawImage"]


class RawImage(gr.Image):
    """``gr.Image`` that hands the uploaded file to the app *unopened*.

    The stock ``gr.Image.preprocess`` opens (and for ``type="pil"`` converts) every upload
    with Pillow before the app sees it, so a corrupted or non-image file fails inside Gradio
    with a generic "Error" and a server traceback. This subclass returns the upload's file
    path as is (``type="filepath"`` semantics), so the dashboard's own validation
    (:func:`serving.images.load_image`) decides and explains. The browser side is the stock
    Image component (``is_template`` makes Gradio reuse its front end).
    """

    is_template = True

    def __init__(self, *args, **kwargs) -> None:
        kwargs["type"] = "filepath"
        kwargs.setdefault("image_mode", None)
        super().__init__(*args, **kwargs)

    def get_config(self, cls=None):
        # The front end is gr.Image's: serialise the props of gr.Image's signature (ours
        # is ``*args, **kwargs``, which would send none of them).
        return super().get_config(cls or gr.Image)

    def preprocess(self, payload: ImageData | None) -> str | None:  # type: ignore[override]
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return self._save_data_url(payload.url)
        if payload.path is None:
            if payload.url and payload.url.split(":", 1)[0].lower() in ("http", "https"):
                raise gr.Error("Images are not fetched from web addresses; download the image and upload the file.",
                               print_exception=False)
            raise gr.Error("The upload arrived without a file; please upload the image again.", print_exception=False)
        return str(payload.path)

    def _save_data_url(self, url: str) -> str:
        """Webcam/clipboard images may arrive as base64 data URLs: store the raw bytes. One
        over the upload limit is refused by its length, before it is decoded or written."""
        text = url.partition(",")[2]
        size = len(text) * 3 // 4 - text[-2:].count("=")  # the decoded size (base64 without line breaks)
        if size > MAX_UPLOAD_BYTES:
            raise gr.Error(too_large_message(size), print_exception=False)
        try:
            data = base64.b64decode(url.split(",", 1)[1], validate=False)
        except (IndexError, binascii.Error, ValueError):
            raise gr.Error("The pasted image could not be decoded (malformed data URL).", print_exception=False) from None
        folder = Path(self.GRADIO_CACHE) / DATA_URL_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.img"
        if not path.exists():
            path.write_bytes(data)
        return str(path)
