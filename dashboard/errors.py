"""Raw-API errors as one sentence to the caller and one line in the server log.

Gradio validates a request before the app's handlers see it, and its own messages are
written for developers: a missing input lists the components' object reprs, a string where
a file is expected returns pydantic's multi-line error with a documentation URL, an
out-of-range slider or a refused file path prints a full traceback in the server log.
:func:`install` wraps ``Blocks.process_api`` (the one place every queued or ``/call``
request goes through) so that every refusal reaches the caller as a ``gr.Error`` with one
plain sentence and is logged as one line, without a traceback. Errors that are not the
caller's fault (a bug) still log their traceback, under "internal error".
"""
from __future__ import annotations

import functools
import inspect
import logging
import re
from typing import Any

import gradio as gr
from gradio.exceptions import ComponentProcessingError, InvalidPathError

__all__ = ["install", "one_sentence", "describe"]

log = logging.getLogger("dashboard")
MAX_CHARS = 300


def one_sentence(text: str) -> str:
    """Whitespace (newlines included) collapsed to single spaces, capped, ending with a full stop."""
    text = " ".join(str(text).split())
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 1].rstrip() + "…"
    if text and text[-1] not in ".!?…":
        text += "."
    return text or "The request was refused."


def _endpoint(block_fn: Any) -> str:
    name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "this endpoint"
    return f"/{name}" if not str(name).startswith("/") and name != "this endpoint" else str(name)


def _parameters(block_fn: Any) -> list[str]:
    """The endpoint's parameter names (what ``view_api`` shows), one per input component."""
    count = len(getattr(block_fn, "inputs", []) or [])
    try:
        names = [p for p in inspect.signature(block_fn.fn).parameters if p != "self"]
    except (TypeError, ValueError, AttributeError):
        names = []
    return (names + [f"input {i + 1}" for i in range(len(names), count)])[:count]


def _type_name(value: Any) -> str:
    return {"str": "text", "NoneType": "nothing (null)", "dict": "an object", "list": "a list",
            "int": "a number", "float": "a number", "bool": "true/false"}.get(type(value).__name__,
                                                                              type(value).__name__)


def _out_of_range(block_fn: Any, params: list[str], inputs: list[Any]) -> str | None:
    """A slider value outside its range, said with the parameter's name (Gradio's own
    message names neither the parameter nor the range)."""
    for index, component in enumerate(getattr(block_fn, "inputs", []) or []):
        low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
        value = inputs[index] if index < len(inputs) else None
        if low is None or high is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not low <= value <= high:
            return f"{_endpoint(block_fn)}: '{params[index]}' must be between {low:g} and {high:g}, got {value:g}"
    return None


def _not_a_choice(block_fn: Any, params: list[str], inputs: list[Any]) -> str | None:
    """A dropdown value that is not one of its choices (Gradio's message shows the value's
    Python type as ``<class 'int'>``)."""
    for index, component in enumerate(getattr(block_fn, "inputs", []) or []):
        choices = getattr(component, "choices", None)
        if not choices or getattr(component, "allow_custom_value", False) or index >= len(inputs):
            continue
        allowed = [c[1] if isinstance(c, (list, tuple)) else c for c in choices]
        values = inputs[index] if isinstance(inputs[index], list) else [inputs[index]]
        bad = [v for v in values if v is not None and v not in allowed]
        if bad:
            return (f"{_endpoint(block_fn)}: '{params[index]}' must be among {', '.join(map(str, allowed))}; "
                    f"got {bad[0]!r}")
    return None


def describe(error: BaseException, block_fn: Any, inputs: list[Any] | None) -> tuple[str, bool]:
    """``(one-sentence message, is the caller's fault)`` for an exception raised while
    Gradio checked, converted or ran a request."""
    endpoint, params = _endpoint(block_fn), _parameters(block_fn)
    inputs = list(inputs or [])
    text = str(error)
    if isinstance(error, gr.Error):
        better = _out_of_range(block_fn, params, inputs) or _not_a_choice(block_fn, params, inputs)
        return one_sentence(better or getattr(error, "message", text)), True
    if "didn't receive enough input values" in text:
        wanted = ", ".join(params) or "?"
        return one_sentence(f"{endpoint} takes {len(params)} input values ({wanted}) but the request sent "
                            f"{len(inputs)}; send them in this order in the request's data list"), True
    if isinstance(error, InvalidPathError) or "to the gradio cache dir" in text:
        return one_sentence(f"{endpoint} only reads files uploaded to this server (the upload route, or "
                            "gradio_client's handle_file), not paths on the server"), True
    if type(error).__name__ == "ValidationError":  # pydantic: a value that is not a file reference
        index = next((i for i, v in enumerate(inputs) if not isinstance(v, dict) and v is not None
                      and i < len(params) and params[i] in ("image",)), None)
        name = params[index] if index is not None else "a file input"
        got = f" not {_type_name(inputs[index])}" if index is not None else ""
        return one_sentence(f"{endpoint}: '{name}' must be a file reference (an object with a 'path' from the "
                            f"upload route, or gradio_client's handle_file),{got}"), True
    if isinstance(error, ComponentProcessingError):
        match = re.search(r"at index (\d+)", text)
        expected = re.search(r"Expected a `([^`]+)`", text)
        index = int(match.group(1)) if match else None
        name = params[index] if index is not None and index < len(params) else "an input"
        value = inputs[index] if index is not None and index < len(inputs) else None
        want = f"expected {expected.group(1)}" if expected else "it could not be read"
        return one_sentence(f"{endpoint}: '{name}' has the wrong type ({want}, got {_type_name(value)})"), True
    return one_sentence(f"{endpoint} failed with an internal error ({type(error).__name__}); "
                        "the server logged the details"), False


def install(demo: gr.Blocks) -> None:
    """Wrap ``demo.process_api`` so that refusals are one sentence and one log line."""
    original = demo.process_api

    @functools.wraps(original)
    async def process_api(block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await original(block_fn, inputs, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every refusal goes back as one sentence
            fn = demo.fns.get(block_fn, block_fn) if isinstance(block_fn, int) else block_fn
            message, user_fault = describe(error, fn, inputs)
            if user_fault:
                log.info("refused %s: %s", _endpoint(fn), message)
            else:
                log.error("internal error in %s", _endpoint(fn), exc_info=error)
            raise gr.Error(message, print_exception=False) from None

    demo.process_api = process_api  # type: ignore[method-assign]
